"""Stage configs: typed dataclasses whose field help is the ``--help`` text.

Every stage has one config dataclass. The same class is filled from the command line
(``cai revise --rounds 2``), from a YAML file (``cai revise --config my.yaml --rounds 2``;
the command line wins), or from a recipe section in ``cai run``. Flags accept dashes or
underscores (``--max-new-tokens`` = ``--max_new_tokens``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def opt(default: Any, help: str, **kw) -> Any:
    """A dataclass field with help text (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """Parse ``argv`` (plus an optional ``--config FILE.yaml``) into ``cls``."""
    import argparse

    from trl import TrlParser

    parser = TrlParser(
        dataclass_types=[cls],
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with any of these settings (flags override it)")
    # TrlParser consumes --config itself; the declared argument only documents it in --help.
    return parser.parse_args_and_config(list(argv) if argv is not None else None)[0]


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
    return cls(**values)
