"""Serve a GGUF file with llama.cpp's OpenAI-compatible server (PyPI ``xllamacpp``) on 127.0.0.1.

Used by the tests and the engine benchmark, and handy by hand::

    python -m constitutional_ai.models.llamacpp            # the embedded model, port 8080
    cai label --model openai:smollm2@http://127.0.0.1:8080/v1 ...

The server runs in a child process so that it can be stopped, killed (``kill()``, like a
crash) and started again on the same port. llama.cpp splits ``n_ctx`` evenly between its
``n_parallel`` slots, so :class:`LlamaCppServer` takes the context **per slot** and asks for
``slot_ctx * n_parallel`` in all.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

# host:port only: the server's log lines can run into each other ("...:42407srv  log_server_r: ...")
_LISTENING = re.compile(r"LISTENING (http://[^\s/:]+:\d+)")


class LlamaCppServer:
    """One llama.cpp server child process serving a GGUF file."""

    def __init__(
        self,
        gguf: str | os.PathLike | None = None,
        *,
        n_parallel: int = 4,
        slot_ctx: int = 2048,
        threads: int = 2,
        port: int = 0,
        start_timeout: float = 120.0,
    ):
        if gguf is None:
            from .local import embedded_gguf_path

            gguf = embedded_gguf_path()
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise FileNotFoundError(f"GGUF file {self.gguf} does not exist")
        self.n_parallel, self.slot_ctx, self.threads = n_parallel, slot_ctx, threads
        self.port, self.start_timeout = port, start_timeout
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.log: list[str] = []

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API (``.../v1``)."""
        return f"{self.address}/v1"

    def start(self) -> LlamaCppServer:
        """Start the child and wait (at most ``start_timeout`` s) until it listens."""
        cmd = [
            sys.executable,
            "-m",
            "constitutional_ai.models.llamacpp",
            "--gguf",
            str(self.gguf),
            "--parallel",
            str(self.n_parallel),
            "--slot-ctx",
            str(self.slot_ctx),
            "--threads",
            str(self.threads),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        found = threading.Event()

        def read() -> None:  # keep draining the pipe so the child never blocks on a full buffer
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log = (self.log + [line.rstrip()])[-200:]
                m = _LISTENING.search(line)
                if m:
                    self.address = m[1].rstrip("/")
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log[-15:])
                raise RuntimeError(f"llama.cpp server for {self.gguf.name} did not start:\n{tail}")
        self.port = int(self.address.rsplit(":", 1)[1])  # a restart reuses the port
        return self

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the child, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def metrics(self) -> dict[str, float]:
        """llama.cpp's ``/metrics`` counters (``prompt_tokens_total``, ``tokens_predicted_total``, ...)."""
        with urllib.request.urlopen(f"{self.address}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("llamacpp:"):
                name, value = line.split()[:2]
                out[name.removeprefix("llamacpp:")] = float(value)
        return out

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(args: argparse.Namespace) -> None:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = args.gguf
    p.n_parallel = args.parallel
    p.n_ctx = args.slot_ctx * args.parallel  # llama.cpp divides n_ctx between the slots
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.endpoint_metrics = True
    p.port = args.port
    # A restart after a kill can bind the same port at once. Not with port 0: Linux may then
    # hand out a port another SO_REUSEPORT socket of this user already holds.
    p.reuse_port = args.port != 0
    server = xllamacpp.Server(p)
    print(f"LISTENING {server.listening_address}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--parallel", type=int, default=4, help="Concurrent requests (llama.cpp slots)")
    ap.add_argument("--slot-ctx", type=int, default=2048, help="Context length of each slot, in tokens")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--port", type=int, default=8080, help="Port on 127.0.0.1 (0: any free port)")
    args = ap.parse_args(argv)
    if args.gguf is None:
        from .local import embedded_gguf_path

        args.gguf = str(embedded_gguf_path())
    _serve(args)


if __name__ == "__main__":
    main()

__all__ = ["LlamaCppServer", "main"]
