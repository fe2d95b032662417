"""A scripted backend for unit tests of stage logic (no model)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from constitutional_ai.models.base import LogprobsUnavailable, Sampling


class FakeBackend:
    """Deterministic: each reply is a function of the conversation and its seed only.

    ``replies`` maps a substring of the last user message to a fixed reply (first match);
    otherwise the reply is ``"reply-<hash>"``. ``choice_logprobs`` maps a substring of a
    scoring prompt to the option log-probs to return. ``delay`` sleeps per generate and score call,
    so tests can kill a run mid-way.
    """

    name = "fake"
    context_length = 100_000

    def __init__(
        self, replies: dict[str, str] | None = None, choice_logprobs=None, delay: float = 0.0, logprobs: bool = True
    ):
        self.replies = replies or {}
        self.choice_logprobs = choice_logprobs or {}
        self.delay = delay
        self.logprobs = logprobs
        self.generate_calls: list[list] = []
        self.score_calls: list[list[str]] = []

    def render(self, conversation, add_generation_prompt: bool = True) -> str:
        conversation = list(conversation)
        if conversation and conversation[-1]["role"] == "assistant":  # prefill stays open
            return self.render(conversation[:-1], False) + f"<assistant>{conversation[-1]['content']}"
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in conversation)
        return text + ("<assistant>" if add_generation_prompt else "")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, conversations: Sequence, sampling: Sampling, seeds=None) -> list[str]:
        self.generate_calls.append([list(c) for c in conversations])
        if self.delay:
            time.sleep(self.delay)
        seeds = seeds or [sampling.seed] * len(conversations)
        out = []
        for conv, seed in zip(conversations, seeds):
            last = conv[-1]["content"]
            for needle, reply in self.replies.items():
                if needle in last:
                    out.append(reply)
                    break
            else:
                h = hashlib.sha256(f"{self.render(conv)}|{seed}".encode()).hexdigest()[:10]
                out.append(f"reply-{h}")
        return out

    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        if not self.logprobs:
            raise LogprobsUnavailable("fake backend configured without log-probabilities")
        self.score_calls.append(list(prompts))
        if self.delay:
            time.sleep(self.delay)
        out = []
        for p in prompts:
            for needle, lps in self.choice_logprobs.items():
                if needle in p:
                    out.append(list(lps))
                    break
            else:
                out.append([-1.0] * len(options))
        return out


def install(backend, monkeypatch=None, name: str = "fake") -> str:
    """Register ``backend`` as the model spec ``fake:NAME`` and return that spec.

    With pytest's ``monkeypatch`` the registration is undone after the test.
    """
    from constitutional_ai import models

    if monkeypatch is not None:
        monkeypatch.setitem(models._FAKES, name, backend)
        return f"fake:{name}"
    return models.register_fake(name, backend)
