"""The seam between stages and backends for generation: batched calls whose per-record
failures come back as values, so one bad prompt never sinks its batch or its stage.

    texts = generate_each(backend, conversations, sampling, seeds)
    for t in texts:
        if isinstance(t, Failed): failures.append(key, t.error, step=t.kind)
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .data import DataError, PromptItem
from .models import Backend, PromptTooLong, Sampling
from .models.base import Conversation, RequestFailed


@dataclass(frozen=True)
class Failed:
    """A generation that could not be made: ``kind`` is ``"too-long"`` or ``"request"``."""

    kind: str
    error: str

    def __str__(self) -> str:
        return self.error


def generate_each(
    backend: Backend, conversations: Sequence[Conversation], sampling: Sampling, seeds: Sequence[int]
) -> list[str | Failed]:
    """One reply per conversation, in one batched call; when the batch fails because of one of
    its records (a prompt too long, a request that failed for good), the batch is retried one by
    one and each such record gets a :class:`Failed` in its place. Any other error (a server
    that is down, a bad option) propagates: it is not one record's fault."""
    convs, ss = list(conversations), list(seeds)
    try:
        return list(backend.generate(convs, sampling, seeds=ss))
    except (PromptTooLong, RequestFailed):
        pass
    out: list[str | Failed] = []
    for c, s in zip(convs, ss):
        try:
            out.append(backend.generate([c], sampling, seeds=[s])[0])
        except PromptTooLong as e:
            out.append(Failed("too-long", str(e)))
        except RequestFailed as e:
            out.append(Failed("request", str(e)))
    return out


def check_fits(backend: Backend, items: Sequence[PromptItem], budget: int) -> None:
    """Fail before any work if a prompt alone cannot fit in the model's context with ``budget``
    new tokens (only where the backend knows its context; a server reports it per request)."""
    ctx = backend.context_length
    if ctx is None:
        return
    for it in items:
        n = backend.count_tokens(backend.render(it.messages))
        if n + budget > ctx:
            raise DataError(
                f"{it.source}: field 'prompt': the prompt has {n} tokens; with max_new_tokens={budget} "
                f"the model ({ctx}-token context) cannot answer it. Shorten or drop it."
            )


def release() -> None:
    """Free the memory of models the caller has just dropped (``del backend``)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
