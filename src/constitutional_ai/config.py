"""Stage configs: typed dataclasses whose field help is the ``--help`` text.

Every stage has one config dataclass. The same class is filled from the command line
(``cai revise --rounds 2``), from a YAML file (``cai revise --config my.yaml --rounds 2``;
the command line wins), or from a recipe section in ``cai run``. Flags accept dashes or
underscores (``--max-new-tokens`` = ``--max_new_tokens``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def opt(default: Any, help: str, *, output: bool = True, min: float | None = None, **kw) -> Any:
    """A dataclass field with help text (shown by ``--help``).

    ``output=False`` marks a setting that does not change what the stage writes (the output
    folder, a batch size, ``--limit``): it is left out of the folder's pinned settings, so it
    may differ between runs. ``min`` is the smallest accepted value, checked by
    :func:`validate` when the config is parsed (``None`` values are always accepted).
    """
    meta = {"help": help, "output": output, "min": min, **kw}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def validate(cfg: Any) -> Any:
    """Check every field's declared bounds; the error names the flag."""
    for f in dataclasses.fields(cfg):
        lo, v = f.metadata.get("min"), getattr(cfg, f.name)
        if lo is not None and v is not None and not isinstance(v, bool) and v < lo:
            raise ValueError(f"--{f.name.replace('_', '-')} must be at least {lo:g}, got {v}")
    return cfg


#: Inherited transformers/TRL training arguments that only shape logging, saving, evaluation
#: or the dataloader, never the trained weights: left out of a training stage's settings.
_NOT_OUTPUT_FIELDS = {
    "output_dir",
    "overwrite_output_dir",
    "report_to",
    "run_name",
    "project",
    "disable_tqdm",
    "skip_memory_metrics",
    "do_train",
    "do_eval",
    "do_predict",
    "local_rank",
    "resume_from_checkpoint",
    "torch_empty_cache_steps",
    "dataset_num_proc",
    "use_cpu",
    "tf32",
    "activation_checkpointing",
    "activation_checkpointing_kwargs",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "activation_offloading",
    "prediction_loss_only",
}
_NOT_OUTPUT_PREFIXES = (
    "logging_",
    "log_",
    "trackio_",
    "eval",
    "save_",
    "hub_",
    "push_to_hub",
    "dataloader_",
    "ddp_",
    "include_for_metrics",
    "batch_eval",
    "load_best",
    "metric_for",
    "greater_is",
    "per_device_eval",
)


def output_settings(cfg: Any, **extra: Any) -> dict:
    """The settings that change a stage's output, from the config's own field metadata.

    Every field counts unless declared ``opt(..., output=False)``; for training configs, the
    inherited arguments that only shape logging/saving/evaluation are left out as well.
    ``extra`` adds what the config does not hold (input hashes, a constitution fingerprint).
    """
    inherited: set[str] = set()
    if hasattr(cfg, "to_dict"):  # a transformers/TRL training config: the fields of the class we extend
        values = training_config_dict(cfg)
        base = next(
            c
            for c in type(cfg).__mro__
            if dataclasses.is_dataclass(c) and not c.__module__.startswith("constitutional_ai")
        )
        inherited = {f.name for f in dataclasses.fields(base)}
    else:
        values = dataclasses.asdict(cfg)
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name not in values or not f.metadata.get("output", True):
            continue
        if f.name in inherited and (f.name in _NOT_OUTPUT_FIELDS or f.name.startswith(_NOT_OUTPUT_PREFIXES)):
            continue
        out[f.name] = values[f.name]
    return json.loads(json.dumps({**out, **extra}))


#: Field metadata of ours (see :func:`opt`); argparse must not see it.
_OURS = ("output", "min")


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """Parse ``argv`` (plus an optional ``--config FILE.yaml``) into ``cls``, then :func:`validate` it."""
    import argparse
    import copy
    import types

    from transformers import HfArgumentParser
    from trl import TrlParser

    class Parser(TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            # HfArgumentParser hands a field's whole metadata to argparse: leave ours out.
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k not in _OURS})
            HfArgumentParser._parse_dataclass_field(parser, field)

    parser = Parser(
        dataclass_types=[cls],
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with any of these settings (flags override it)")
    # TrlParser consumes --config itself; the declared argument only documents it in --help.
    return validate(parser.parse_args_and_config(list(argv) if argv is not None else None)[0])


def training_config_dict(cfg: Any) -> dict:
    """A TRL/transformers training config as JSON-ready values, for manifests.

    ``to_dict()`` masks every ``*_token`` value as if it were a secret; the tokenizer's
    ``eos_token``/``pad_token`` settings are not, so they are shown. Values that are not
    JSON (callables, objects) are left out.
    """
    d = cfg.to_dict()
    for k in ("eos_token", "pad_token"):
        if hasattr(cfg, k):
            d[k] = getattr(cfg, k)
    return {k: v for k, v in d.items() if _jsonable(v)}


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def from_mapping(cls: type[T], values: dict, where: str) -> T:
    """Build a config from a recipe mapping, naming unknown keys clearly."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return validate(cls(**values))
