"""The one protocol every model backend implements.

Stages only ever talk to a :class:`Backend`; they never know whether the model runs in
process (transformers), behind an OpenAI-compatible HTTP server, or in vLLM.

Two operations:

* ``generate(conversations, sampling)`` — one text per chat conversation.
* ``score_choices(prompts, options)`` — for each raw prompt string, the log-probability of
  each option string as its continuation. This is what turns the multiple-choice feedback
  prompt into a soft label. A backend that cannot compute it raises
  :class:`LogprobsUnavailable`; it never returns a made-up value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = Sequence[Message]


class BackendError(RuntimeError):
    """A model backend failed in a way the user has to act on."""


class LogprobsUnavailable(BackendError):
    """Raised by backends that cannot return log-probabilities for fixed options."""


class RequestFailed(BackendError):
    """One request failed for good (e.g. a server error after every retry) while the backend as
    a whole works: stages record it as that record's failure and go on."""


class PromptTooLong(BackendError):
    """A prompt does not fit in the model's context window (with room for the answer)."""

    def __init__(self, index: int, n_tokens: int, limit: int, detail: str = ""):
        self.index, self.n_tokens, self.limit, self.detail = index, n_tokens, limit, detail
        msg = (
            f"prompt #{index} has {n_tokens} tokens but the model accepts at most {limit} "
            f"(context length minus max_new_tokens)"
        )
        super().__init__(msg + (f"; {detail}" if detail else ""))

    def __reduce__(self):  # picklable (e.g. raised in a Ray worker) despite its own __init__
        return (type(self), (self.index, self.n_tokens, self.limit, self.detail))


class Generation(str):
    """A generated reply: the text itself (a ``str``, so every caller keeps working) that also
    says why generation stopped. ``finish_reason`` is ``"stop"`` (end of turn or a stop string),
    ``"length"`` (cut at ``max_new_tokens``) or ``None`` (the backend does not say). String
    methods (``strip``, slicing) return plain ``str``: read the reason from the reply itself."""

    finish_reason: str | None

    def __new__(cls, text: str, finish_reason: str | None = None) -> Generation:
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason
        return obj

    @property
    def truncated(self) -> bool:
        """Cut at the token budget rather than finished by the model."""
        return self.finish_reason == "length"


def finish_reason(text: str) -> str | None:
    """Why a reply stopped, or ``None`` for a plain string (a backend that does not say)."""
    return getattr(text, "finish_reason", None)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings for :meth:`Backend.generate`.

    ``seed`` is combined with a per-conversation ``seeds`` entry (when given) so that each
    conversation's sample depends only on its own seed, not on what else is in the batch.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()


def check_prompt_format(v: object) -> str:
    """The backends' ``prompt_format`` option: ``auto``, ``chat`` or ``text`` (see :mod:`..models`)."""
    from ..prompts import GENERATION_FORMATS

    if v not in GENERATION_FORMATS:
        raise ValueError(f"option 'prompt_format' must be one of {', '.join(GENERATION_FORMATS)}, got {v!r}")
    return str(v)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (stable across processes and runs)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@runtime_checkable
class Backend(Protocol):
    """What a stage may ask of a model."""

    #: Human-readable identity recorded in every record's provenance.
    name: str
    #: Tokens the model accepts (prompt + answer), when the backend knows it before a request;
    #: ``None`` when only the server can tell (it then rejects an over-long prompt per request).
    context_length: int | None

    def count_tokens(self, text: str) -> int:
        """Tokens of a rendered prompt (only called when ``context_length`` is known)."""
        ...

    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """Return one assistant reply per conversation (a :class:`Generation` where the backend
        knows why it stopped).

        ``seeds[i]`` (if given) seeds conversation ``i`` on its own, so reruns and resumed
        runs reproduce the same sample regardless of batch composition.
        """
        ...

    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Log-probability of each option as the continuation of each raw prompt string.

        Returns ``len(prompts)`` lists of ``len(options)`` floats (natural log).
        """
        ...

    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """The raw prompt string the model sees for a chat conversation."""
        ...

    def info(self) -> dict:
        """Facts for manifests: at least ``name`` and ``kind`` (never credentials)."""
        ...
