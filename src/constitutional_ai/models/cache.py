"""A persistent cache of HTTP model requests, so reruns re-send nothing already answered.

One SQLite file in WAL mode (readers never block the writer; several processes may share
it). Every answer is written the moment it arrives, so after a crash, a killed server or a
429 storm the rerun of the same command only sends what was never answered.

The key is a SHA-256 of everything that changes the output: the server's base URL (without
credentials), the endpoint path and the full JSON request body (model, messages or prompt,
sampling settings, seed, ...). Headers are not part of the key and are never stored, so API
keys never reach the file. Which requests may be cached is the caller's decision
(:class:`~constitutional_ai.models.openai.OpenAIBackend` caches only deterministic or seeded
requests). The key cannot see which weights a server has loaded: serving other weights at the
same URL under the same model name needs a new cache file (or none).

Location: the ``cache=`` option of the backend, else ``$CAI_REQUEST_CACHE``, else
``$CAI_CACHE_DIR/requests.sqlite`` (the user cache of the embedded model). ``cache=False``,
``"off"`` or ``CAI_REQUEST_CACHE=off`` turn it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

OFF = ("off", "false", "no", "0", "none", "")


def default_cache_path() -> Path | None:
    """``$CAI_REQUEST_CACHE`` (a path or ``off``), else ``$CAI_CACHE_DIR/requests.sqlite``."""
    env = os.environ.get("CAI_REQUEST_CACHE")
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env)
    from .local import cache_dir  # same root as the converted embedded model

    return cache_dir() / "requests.sqlite"


def resolve_cache(option: Any) -> Path | None:
    """The cache file named by a backend's ``cache`` option (``None`` = the default)."""
    if option is None or option is True:
        return default_cache_path()
    if option is False or (isinstance(option, str) and option.strip().lower() in OFF):
        return None
    if isinstance(option, (str, os.PathLike)):
        return Path(option)
    raise ValueError(f"option 'cache' must be a file path, True/None (default location) or False/'off', got {option!r}")


def request_key(base_url: str, path: str, body: dict) -> str:
    """Stable key of one request: base URL, endpoint path and the canonical JSON body."""
    blob = json.dumps({"url": base_url, "path": path, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """Thread-safe ``key -> JSON reply`` store in one SQLite file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the backend's threads, serialised by a lock: SQLite
        # writes are short, and the HTTP round trips they follow dominate anyway.
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, path TEXT NOT NULL, "
                "request TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL)"
            )

    def get(self, key: str) -> dict | None:
        """The stored reply for ``key``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, path: str, body: dict, reply: dict) -> None:
        """Store one reply (the first answer for a key wins)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO responses (key, path, request, response, created) VALUES (?, ?, ?, ?, ?)",
                (key, path, json.dumps(body, sort_keys=True), json.dumps(reply), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
