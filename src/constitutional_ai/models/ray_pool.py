"""Fan-out over a Ray cluster: one backend per Ray worker, sharded batches, results in order.

Spec: ``ray:SPEC[,SPEC...]`` where each ``SPEC`` is any other model spec, optionally with a
count — ``ray:2*default`` (two in-process copies of the embedded model), ``ray:4*runs/sft``,
``ray:openai:M@http://node1:8000/v1,openai:M@http://node2:8000/v1`` (one vLLM server per node,
the usual multi-node set-up). Every stage takes it like any spec; nothing else changes:

* ``generate`` / ``score_choices`` split each batch into one contiguous shard per worker, run
  the shards in parallel and return the results in input order. Each record's randomness comes
  from its own seed (see ``Backend.generate``), so a sharded run writes exactly the records a
  single-process run writes.
* Records are still written by the stage, once, into its crash-safe store: a killed run is
  resumed by rerunning the same command, as always.
* Errors raised in a worker (``PromptTooLong``, ``LogprobsUnavailable`` ...) reach the stage as
  themselves, so per-record failure handling works unchanged.

The cluster is ``ray.init(address=$RAY_ADDRESS)`` when ``RAY_ADDRESS`` is set (``ray start
--head`` on one node, ``ray start --address=HEAD:6379`` on the others), else a local one.
Options: ``num_cpus`` / ``num_gpus`` per worker (defaults 1 / 0); every other option goes to
the workers' backends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from .base import BackendError, Conversation, Sampling

_COUNT = re.compile(r"^(\d+)\*(.+)$")


def parse_specs(spec: str) -> list[str]:
    """The worker specs of a ``ray:`` spec, counts expanded."""
    body = spec[len("ray:") :].strip()
    if not body:
        raise BackendError(f"model spec {spec!r}: give the workers' specs, e.g. ray:2*default")
    out: list[str] = []
    for part in _split(body):
        m = _COUNT.match(part)
        n, inner = (int(m.group(1)), m.group(2)) if m else (1, part)
        if n < 1 or inner.startswith(("ray:", "fake:")):
            raise BackendError(
                f"model spec {spec!r}: {part!r} is not a worker spec (N*SPEC with N >= 1, SPEC not ray:/fake:)"
            )
        out += [inner] * n
    return out


def _split(body: str) -> list[str]:
    """Split on commas that start a new spec (a URL's query string may hold commas too)."""
    parts: list[str] = []
    for piece in body.split(","):
        if parts and not piece.strip():
            continue
        parts.append(piece.strip())
    return [p for p in parts if p]


class RayBackend:
    """A pool of backends on Ray workers, seen by stages as one backend."""

    def __init__(self, spec: str, num_cpus: float = 1, num_gpus: float = 0, **options: Any):
        try:
            import ray
        except ImportError:
            raise BackendError("ray: specs need Ray (pip install 'ray>=2.40')") from None
        self.specs = parse_specs(spec)
        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        worker = ray.remote(_Worker).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self._ray = ray
        self.workers: list[Any] = [worker.remote(s, options) for s in self.specs]
        first = self._call([self.workers[0].facts.remote()])[0]
        self.name = f"ray:{len(self.workers)}x{first['name']}" if len(set(self.specs)) == 1 else spec
        self.context_length: int | None = first["context_length"]

    def _call(self, refs: list) -> list:
        return self._ray.get(refs)

    def _shards(self, n: int) -> list[tuple[int, int]]:
        k = min(len(self.workers), n)
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i] < bounds[i + 1]]

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling, seeds: Sequence[int] | None = None
    ) -> list[str]:
        convs = [list(c) for c in conversations]
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(convs)
        refs = [
            w.generate.remote(convs[a:b], sampling, seeds[a:b])
            for w, (a, b) in zip(self.workers, self._shards(len(convs)))
        ]
        return [t for part in self._call(refs) for t in part]

    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        ps, opts = list(prompts), list(options)
        refs = [w.score_choices.remote(ps[a:b], opts) for w, (a, b) in zip(self.workers, self._shards(len(ps)))]
        return [row for part in self._call(refs) for row in part]

    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return self._call([self.workers[0].render.remote(list(conversation), add_generation_prompt)])[0]

    def count_tokens(self, text: str) -> int:
        return self._call([self.workers[0].count_tokens.remote(text)])[0]

    def info(self) -> dict:
        return {"name": self.name, "kind": "ray", "workers": self._call([w.info.remote() for w in self.workers])}


class _Worker:
    """Runs in a Ray worker process: one backend, built there from its spec."""

    def __init__(self, spec: str, options: dict):
        from . import load_backend

        self.backend = load_backend(spec, **options)

    def facts(self) -> dict:
        return {"name": self.backend.name, "context_length": self.backend.context_length}

    def generate(self, convs: list, sampling: Sampling, seeds: list[int]) -> list[str]:
        return list(self.backend.generate(convs, sampling, seeds=seeds))  # Generation: text + finish_reason

    def score_choices(self, prompts: list[str], options: list[str]) -> list[list[float]]:
        return self.backend.score_choices(prompts, options)

    def render(self, conv: list, add_generation_prompt: bool) -> str:
        return self.backend.render(conv, add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def info(self) -> dict:
        info = getattr(self.backend, "info", None)
        return info() if info else {"name": self.backend.name}
