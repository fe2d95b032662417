"""Crash-safe stage output folders: append-only record files, settings locks, manifests.

Every stage writes one folder:

* ``*.jsonl`` record files, appended one line per finished record and flushed + fsynced as
  it completes. A crash (even ``kill -9``) can leave at most one partial last line, which
  the next open cuts off; keys are unique, so a rerun skips finished work and never
  duplicates it.
* ``settings.json`` — the output-affecting settings, written when the folder is first used.
  Rerunning with different settings is refused with a list of what changed, rather than
  silently mixing records made two ways.
* ``manifest.json`` — written **last**, atomically, when the stage has finished. Its absence
  means "not finished"; downstream stages refuse such folders.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"
SETTINGS = "settings.json"


class StoreError(RuntimeError):
    """A stage output folder is unusable as asked (changed settings, corrupt file, lock)."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RecordFile:
    """An append-only JSONL file of records with unique ``key`` fields."""

    def __init__(self, path: str | os.PathLike, key: str = "key"):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            data = f.read()
        # A crash mid-write leaves a last line without its newline: cut it off (that record
        # was in flight and will be redone). Anything else unparsable is real corruption.
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise StoreError(f"{self.path}:{lineno}: corrupt record ({e.msg}); move the file away to start over") from None
            k = rec.get(self.key)
            if k in self.records:
                raise StoreError(f"{self.path}:{lineno}: duplicate record key {k!r}")
            self.records[k] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def append(self, rec: dict) -> None:
        """Append and durably flush one finished record."""
        k = rec[self.key]
        if k in self.records:
            raise StoreError(f"{self.path}: record {k!r} written twice")
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[k] = rec

    def close(self) -> None:
        self._fh.close()


class StageDir:
    """One stage's output folder, held under an exclusive lock while in use."""

    def __init__(self, path: str | os.PathLike, stage: str, settings: dict):
        self.path = Path(path)
        self.stage = stage
        self.settings = settings
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{self.path} is in use by another cai process") from None
        self._check_settings()
        self._files: list[RecordFile] = []

    def _check_settings(self) -> None:
        current = {"stage": self.stage, **self.settings}
        f = self.path / SETTINGS
        if f.exists():
            previous = json.loads(f.read_text())
            if previous != current:
                diffs = [
                    f"  {k}: {previous.get(k)!r} -> {current.get(k)!r}"
                    for k in sorted(set(previous) | set(current))
                    if previous.get(k) != current.get(k)
                ]
                raise StoreError(
                    f"{self.path} holds output made with different settings; refusing to mix them.\n"
                    + "\n".join(diffs)
                    + "\nUse a new --out folder, or delete this one to start over."
                )
        else:
            write_json_atomic(f, current)

    @property
    def finished(self) -> bool:
        return (self.path / MANIFEST).exists()

    def records(self, name: str, key: str = "key") -> RecordFile:
        rf = RecordFile(self.path / name, key=key)
        self._files.append(rf)
        return rf

    def reopen(self) -> None:
        """About to add work to a finished folder: it stops being finished first."""
        (self.path / MANIFEST).unlink(missing_ok=True)

    def finish(self, manifest: dict) -> Path:
        """Write ``manifest.json`` — the last file a stage writes."""
        for rf in self._files:
            rf.close()
        full = {
            "stage": self.stage,
            "settings": self.settings,
            **manifest,
            "versions": versions(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.path / MANIFEST, full)
        return self.path / MANIFEST

    def close(self) -> None:
        for rf in self._files:
            if not rf._fh.closed:
                rf.close()
        self._lock.close()

    def __enter__(self) -> "StageDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def last_checkpoint(path: str | os.PathLike) -> str | None:
    """The newest Trainer ``checkpoint-N`` folder in ``path``, to resume training from.

    Training stages save such checkpoints only when asked (``--save-strategy steps
    --save-steps N``); rerunning an interrupted command then continues from the last one
    instead of starting over.
    """
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(path)) if Path(path).is_dir() else None
    if found:
        print(f"[cai] resuming training from {found}", file=sys.stderr)
    return found


def read_manifest(path: str | os.PathLike, stage: str | Iterable[str] | None = None) -> dict:
    """Load a finished stage folder's manifest, refusing unfinished or foreign folders."""
    path = Path(path)
    m = path / MANIFEST
    if not path.is_dir():
        raise StoreError(f"{path}: no such stage output folder")
    if not m.exists():
        raise StoreError(
            f"{path} has no {MANIFEST}: the stage that writes it has not finished. "
            "Rerun that stage's command to complete it."
        )
    manifest = json.loads(m.read_text())
    if stage is not None:
        wanted = {stage} if isinstance(stage, str) else set(stage)
        if manifest.get("stage") not in wanted:
            raise StoreError(f"{path} is output of stage {manifest.get('stage')!r}, expected {' or '.join(sorted(wanted))}")
    return manifest


def manifest_identity(manifest: dict) -> str:
    """What identifies a finished output for downstream settings: its stage, settings and
    counts — not timestamps, so rerunning a finished stage does not invalidate consumers."""
    return json_sha256({k: manifest.get(k) for k in ("stage", "settings", "counts")})


def versions() -> dict:
    """Versions of the software that produced an output, for manifests."""
    out = {"python": platform.python_version(), "platform": sys.platform}
    for mod in ("constitutional_ai", "torch", "transformers", "trl", "peft", "datasets"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = m.__version__
    return out
