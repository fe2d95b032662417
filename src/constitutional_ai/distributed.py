"""Training stages on several processes: ``accelerate launch`` and ``torchrun``.

    accelerate launch --num_processes 8 -m constitutional_ai train sft --data runs/revise --out runs/sft
    accelerate launch --config_file launch/fsdp.yaml -m constitutional_ai train pm ...
    torchrun --nproc_per_node 8 -m constitutional_ai train rl ...

Every process trains (TRL/transformers' Trainer does the data sharding, gradient
all-reduce, FSDP or DeepSpeed sharding, mixed precision and accumulation: those come from the
launch config and the usual Trainer flags, not from code here). **One process, the main one
(global rank 0), owns the output folder**: it takes the folder's lock, checks and pins the
settings, prepares the training data (reading inputs, sampling helpful replies), and writes the
logs, samples, metrics and the manifest. The other processes never open the folder's record
files; they receive the prepared data (helpful replies included, which only the main process
samples) from the main process, so every process trains on exactly the same rows.

What happens when something goes wrong:

* The main process fails before training (settings changed, folder locked, bad input): it
  sends the error to the others, which stop with it instead of waiting for a training that
  will not come (:class:`ReplicaError`).
* Any process dies during training: the launcher (torchrun's elastic agent, which
  ``accelerate launch`` uses) stops the others. If the *launcher* is killed (``kill -9``),
  each training process receives SIGKILL too (Linux ``PR_SET_PDEATHSIG``), so no orphan keeps
  the folder's lock or a GPU. Rerunning the same command resumes from the last checkpoint
  (``--save-strategy steps --save-steps N``) exactly as on one process.
* The other processes wait for the main one's preparation on the process group, so that wait
  is bounded by ``--ddp-timeout`` (TrainingArguments, 1800 s by default): give
  ``--helpful-data`` or raise the timeout when sampling many helpful replies on one device.

Multi-node runs need the inputs and the output folder on a filesystem every node sees (as the
Trainer does for checkpoints and resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .store import StageDir

#: what ``owned_folder`` yields instead of prepared data when the folder is already finished
FINISHED = "finished"


class ReplicaError(RuntimeError):
    """The main process stopped before training; the other processes stop with its error."""


def world_size() -> int:
    """Processes taking part in this run (1 unless started by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 is the main process)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def die_with_launcher() -> None:
    """Under a launcher, ask the kernel to SIGKILL this process when the launcher dies, so a
    killed launcher leaves no orphan trainers. No-op on one process and off Linux."""
    if world_size() == 1 or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


def _has_accelerator() -> bool:
    import torch

    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def owned_folder(
    cfg: Any, stage: str, settings: dict, prepare: Callable[[StageDir], Any]
) -> Iterator[tuple[StageDir | None, Any]]:
    """The stage folder, owned by the main process, and the data every process trains on.

    Yields ``(out, prepared)``: on the main process ``out`` is the open :class:`StageDir`
    (locked, settings checked) and ``prepared`` is ``prepare(out)``, or :data:`FINISHED` when
    the folder is already finished with these settings (``prepare`` is then not called, and
    the main process says so). On
    the other processes ``out`` is ``None`` and ``prepared`` is the main process's result,
    received over the process group (so it must pickle). ``cfg`` is the stage's
    TrainingArguments: touching its device initialises the process group with the Trainer's
    own backend and ``ddp_timeout``.
    """
    if world_size() == 1:
        with StageDir(cfg.out, stage, settings) as out:
            yield out, (_finished(out) if out.finished else prepare(out))
        return
    die_with_launcher()
    if not cfg.use_cpu and not _has_accelerator():
        # No GPU here: without use_cpu, accelerate would see one process per launch (distributed
        # type NO) and every process would train alone on all the data. On CPU it is DDP over gloo.
        cfg.use_cpu = True
        cfg.__dict__.pop("_setup_devices", None)  # in case the device was already resolved
    _ = cfg.device  # the Trainer's process group (backend from the device, --ddp-timeout)
    if not is_main():
        print(f"[{stage}] rank {rank()}: waiting for the main process to prepare the data", file=sys.stderr)
        status, payload = _broadcast(None)
        if status == "error":
            raise ReplicaError(f"the main process stopped before training: {payload}")
        yield None, payload
        return
    try:
        out = StageDir(cfg.out, stage, settings)
    except BaseException as e:
        _broadcast(("error", f"{type(e).__name__}: {e}"))
        raise
    with out:
        try:
            prepared = _finished(out) if out.finished else prepare(out)
        except BaseException as e:
            _broadcast(("error", f"{type(e).__name__}: {e}"))
            raise
        _broadcast(("ok", prepared))
        yield out, prepared


def _finished(out: StageDir) -> str:
    """Say that a finished folder is left as it is (main process only); returns :data:`FINISHED`."""
    print(
        f"[{out.stage}] already done: {out.path} (same settings); nothing to do, delete the folder to retrain",
        file=sys.stderr,
    )
    return FINISHED


def _sharded(trainer: Any) -> bool:
    """Parameters split across processes (FSDP, DeepSpeed ZeRO-3): no process holds them all."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = trainer.accelerator.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3
    return False


def parameters_sha256(model: Any) -> str:
    """A digest of every parameter's name, dtype and bytes (identical models, identical digest)."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def replicas(trainer: Any) -> dict:
    """Every process calls this after training; the main process gets what the manifest records:
    ``world_size``, the accelerate ``distributed_type``, the number of processes and, when each
    holds the whole model (DDP, ZeRO-1/2), a digest of each process's parameters and whether they
    are identical (they must be: every replica applies the same averaged gradients)."""
    state = trainer.accelerator.state
    info: dict[str, Any] = {
        "world_size": world_size(),
        "distributed_type": str(state.distributed_type).rsplit(".", 1)[-1],
        "mixed_precision": str(state.mixed_precision),
    }
    if world_size() == 1:
        return info
    if _sharded(trainer):
        info["parameters_sha256"] = None  # sharded: no process holds a full copy to compare
        info["replicas_identical"] = None
        return info
    from accelerate.utils import gather_object

    digests = gather_object([parameters_sha256(trainer.accelerator.unwrap_model(trainer.model))])
    info["parameters_sha256"] = digests
    info["replicas_identical"] = len(set(digests)) == 1
    if not info["replicas_identical"] and is_main():
        print(f"[cai] WARNING: the {len(digests)} processes ended with different parameters", file=sys.stderr)
    return info


def save_trained(trainer: Any, path: str | os.PathLike, merge_lora: bool = False, base: str | None = None) -> None:
    """Every process calls this: the trained model + tokenizer as one plain ``save_pretrained``
    checkpoint in ``path``, written by the main process (FSDP/DeepSpeed shards are gathered by the
    Trainer). With ``merge_lora`` the LoRA adapters are merged into ``base``'s weights first, so
    later stages load the checkpoint without peft."""
    path = Path(path)
    if not merge_lora:
        trainer.save_model(str(path))
        _remove_training_args(path)
        return
    if not _sharded(trainer):
        if is_main():
            model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            model.save_pretrained(path)
            trainer.processing_class.save_pretrained(path)
        trainer.accelerator.wait_for_everyone()
        return
    # Sharded adapters: gather them to disk, then merge them on the main process from there.
    adapter = path / ".adapter"
    trainer.save_model(str(adapter))
    if is_main():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
        merged.save_pretrained(path)
        trainer.processing_class.save_pretrained(path)
        shutil.rmtree(adapter)
    trainer.accelerator.wait_for_everyone()


def _remove_training_args(path: Path) -> None:
    """``Trainer.save_model`` also pickles the arguments; the manifest records them as JSON."""
    if is_main():
        (path / "training_args.bin").unlink(missing_ok=True)
