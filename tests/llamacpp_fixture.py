"""A real llama.cpp server (xllamacpp) serving the embedded GGUF, shared by a test session,
and a counting proxy that sees every request a backend sends.

Sizes: 4 slots of 2048 tokens each (llama.cpp splits ``n_ctx`` between ``n_parallel``
slots, so the server is started with ``n_ctx = 8192``); label prompts with one feedback
exemplar are 400-900 tokens, and the few-shot revision prompts fit too.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SLOTS, SLOT_CTX = 4, 2048


@pytest.fixture(scope="session")
def llama_server():
    """The embedded model behind llama.cpp's OpenAI-compatible server on 127.0.0.1."""
    pytest.importorskip("xllamacpp", reason="xllamacpp is in the dev extra: pip install -e '.[dev]'")
    from constitutional_ai.models.llamacpp import LlamaCppServer

    server = LlamaCppServer(n_parallel=SLOTS, slot_ctx=SLOT_CTX, threads=2, start_timeout=180).start()
    yield server
    server.stop()


class CountingProxy:
    """Forwards every request to ``upstream`` (a server root URL) and counts them by path.

    ``on_request(n)`` (optional) runs before the n-th request is forwarded, e.g. to kill
    the server behind the proxy in the middle of a run.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.paths: list[str] = []
        self.on_request: Callable[[int], None] | None = None
        self.blocked: set[str] = set()  # paths answered 404, like a server without them
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self._httpd.proxy = self  # type: ignore[attr-defined]
        self.root = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.url = self.root + "/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(p.startswith(prefix) for p in self.paths)

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()
        self.on_request = None
        self.blocked = set()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Forward(BaseHTTPRequestHandler):
    def _forward(self) -> None:
        proxy: CountingProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy.paths.append(self.path)
            n = len(proxy.paths)
        if proxy.on_request is not None:
            proxy.on_request(n)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) or None
        if self.path in proxy.blocked:
            self._reply(404, b'{"error": {"message": "not found"}}')
            return
        req = urllib.request.Request(
            proxy.upstream + self.path, data=body, method=self.command, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        except OSError:  # the server behind is gone: answer like a dead upstream
            status, data = 502, b'{"error": {"message": "upstream unreachable"}}'
        self._reply(status, data)

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass
