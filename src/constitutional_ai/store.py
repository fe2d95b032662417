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
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

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


def dumps(obj: Any, **kw: Any) -> str:
    """JSON text as the project writes it: UTF-8, and never ``NaN``/``Infinity`` (not JSON;
    a missing value is ``null``). Raises ``ValueError`` on a non-finite float."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)


def write_atomic(path: str | os.PathLike, chunks: str | Iterable[str]) -> None:
    """The one atomic writer: readers (and a crash) see the old file or the new one, never half.

    The text goes to a temporary file in the same folder (so ``os.replace`` is a rename on one
    filesystem), which is fsynced, renamed over ``path``, and the rename itself persisted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); keep the mode a plain open() would give.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in [chunks] if isinstance(chunks, str) else chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave the temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # directories cannot be opened this way on Windows
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically (indented, valid JSON only)."""
    write_atomic(path, dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write JSON Lines atomically, one object per line (valid JSON only)."""
    write_atomic(path, (dumps(row) + "\n" for row in rows))


class RecordFile:
    """An append-only JSONL file of records with unique ``key`` fields.

    ``on_write`` is called before the first record is appended (the stage folder uses it to
    mark itself unfinished and write its settings).
    """

    def __init__(self, path: str | os.PathLike, key: str = "key", on_write: Callable[[], None] | None = None):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        self._on_write = on_write
        self._fh: IO[str] | None = None
        for lineno, rec in _load_lines(self.path):
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
        _append_line(self, rec)
        self.records[k] = rec

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


class FailureLog:
    """``failures.jsonl``: one line per failed attempt at a record, in the order they happened.

    A record that fails on two runs has two lines (``attempt`` 1 and 2), both with the record's
    own ``key``. The file is created by the first failure, so a clean run leaves none (an empty
    JSONL file is not a dataset).
    """

    def __init__(self, path: str | os.PathLike, on_write: Callable[[], None] | None = None):
        self.path = Path(path)
        self._on_write = on_write
        self._fh: IO[str] | None = None
        self.rows = [rec for _, rec in _load_lines(self.path)]

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, key: str, error: str | BaseException, **fields: Any) -> None:
        """Record one failed attempt at ``key`` (values that are not finite become ``null``)."""
        attempt = 1 + sum(r.get("key") == key for r in self.rows)
        row = {"key": key, "attempt": attempt, "error": str(error), **_finite(fields)}
        _append_line(self, row)
        self.rows.append(row)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN/infinite float replaced by ``None`` (JSON has no such values)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _load_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """The complete lines of a record file; a crash mid-write leaves a last line without its
    newline, which is cut off (that record was in flight and will be redone). Anything else
    unparsable is real corruption and is refused."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise StoreError(f"{path}:{lineno}: corrupt record ({e.msg}); move the file away to start over") from None


def _append_line(f: RecordFile | FailureLog, rec: dict) -> None:
    line = dumps(rec) + "\n"  # serialise first: a bad value must not leave half a line
    if f._fh is None:
        if f._on_write is not None:
            f._on_write()
        f._fh = open(f.path, "a", encoding="utf-8")
    f._fh.write(line)
    f._fh.flush()
    os.fsync(f._fh.fileno())


class StageDir:
    """One stage's output folder, held under an exclusive lock while in use.

    Use it as ``with StageDir(cfg.out, "revise", settings) as out:``. It owns what every stage
    repeats: the lock; the settings check (a rerun with other output-affecting settings is
    refused before any work, and ``settings.json`` is written only by the first write, so a
    run that fails before doing anything leaves nothing that pins the folder); the manifest,
    removed by the first write of a run (a folder being changed is no longer finished) and
    written last by :meth:`finish`; record files, the failure log and atomic derived files.
    """

    def __init__(self, path: str | os.PathLike, stage: str, settings: dict):
        self.path = Path(path)
        self.stage = stage
        self.settings = json.loads(dumps(settings))  # as settings.json holds it (tuples become lists)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / ".lock", "w")
        except FileExistsError:
            raise StoreError(f"{self.path}: the output folder is a file; choose another --out") from None
        except NotADirectoryError:
            raise StoreError(f"{self.path}: a parent of the output folder is a file; choose another --out") from None
        except PermissionError as e:
            raise StoreError(
                f"{self.path}: cannot write the output folder ({e.strerror}); choose another --out"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.path} is in use by another cai process") from None
        self._files: list[RecordFile | FailureLog] = []
        self._begun = False
        from .models import LOADED

        self._loaded_before = len(LOADED)  # backends loaded from here on are this stage's
        try:
            self._check_settings()
        except BaseException:
            self._lock.close()
            raise

    def _current(self) -> dict:
        return {"stage": self.stage, **self.settings}

    def _check_settings(self) -> None:
        f = self.path / SETTINGS
        if not f.exists():
            return
        try:
            previous = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{f}: unreadable settings file ({e}); delete the folder to start over") from None
        current = self._current()
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

    def begin(self) -> None:
        """The first write of this run: the folder stops being finished and its settings are
        pinned. Record files and derived-file writes call it; a training stage calls it before
        its trainer writes into the folder."""
        if self._begun:
            return
        self._begun = True
        (self.path / MANIFEST).unlink(missing_ok=True)
        if not (self.path / SETTINGS).exists():
            write_json_atomic(self.path / SETTINGS, self._current())

    @property
    def finished(self) -> bool:
        return (self.path / MANIFEST).exists()

    def records(self, name: str, key: str = "key") -> RecordFile:
        """An append-only record file of this folder (loaded; a rerun skips what it holds)."""
        rf = RecordFile(self.path / name, key=key, on_write=self.begin)
        self._files.append(rf)
        return rf

    def failures(self, name: str = "failures.jsonl") -> FailureLog:
        """This folder's failure log (see :class:`FailureLog`)."""
        fl = FailureLog(self.path / name, on_write=self.begin)
        self._files.append(fl)
        return fl

    def write_json(self, name: str, obj: Any) -> Path:
        """A derived JSON file of this folder, written atomically."""
        self.begin()
        write_json_atomic(self.path / name, obj)
        return self.path / name

    def write_jsonl(self, name: str, rows: Iterable[dict]) -> Path:
        """A derived JSONL file of this folder, written atomically."""
        self.begin()
        write_jsonl_atomic(self.path / name, rows)
        return self.path / name

    def finish(self, manifest: dict) -> Path:
        """Write ``manifest.json`` — the last file a stage writes."""
        self.begin()
        for rf in self._files:
            rf.close()
        from .models import LOADED, backend_info

        backends = [backend_info(ref()) if ref() is not None else info for ref, info in LOADED[self._loaded_before :]]
        full = {
            "stage": self.stage,
            "settings": self.settings,
            **manifest,
            **({"backends": backends} if backends else {}),
            "versions": versions(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.path / MANIFEST, full)
        return self.path / MANIFEST

    def close(self) -> None:
        for rf in self._files:
            rf.close()
        self._lock.close()

    def __enter__(self) -> StageDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def last_checkpoint(path: str | os.PathLike) -> str | None:
    """The newest complete Trainer ``checkpoint-N`` folder in ``path``, to resume training from.

    Training stages save such checkpoints only when asked (``--save-strategy steps
    --save-steps N``); rerunning an interrupted command then continues from the last one
    instead of starting over. The Trainer writes ``trainer_state.json`` last, so a folder
    without a readable one was cut short while being saved (a kill at that moment): it is
    passed over, said on the console, and the run resumes from the one before (the Trainer
    writes that step's checkpoint again when it gets there).
    """
    import re

    if not Path(path).is_dir():
        return None
    steps = sorted(
        (int(m.group(1)), p)
        for p in Path(path).iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    for _, ckpt in reversed(steps):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            print(f"[cai] skipping {ckpt}: incomplete (interrupted while it was being saved)", file=sys.stderr)
            continue
        print(f"[cai] resuming training from {ckpt}", file=sys.stderr)
        return str(ckpt)
    return None


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
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{m}: corrupt manifest ({e}); rerun the stage that wrote {path} to rewrite it") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{m}: corrupt manifest (not a JSON object); rerun the stage that wrote {path}")
    if stage is not None:
        wanted = {stage} if isinstance(stage, str) else set(stage)
        if manifest.get("stage") not in wanted:
            raise StoreError(
                f"{path} is output of stage {manifest.get('stage')!r}, expected {' or '.join(sorted(wanted))}"
            )
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
