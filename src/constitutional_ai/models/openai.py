"""Backend for any OpenAI-compatible HTTP server (vLLM, llama.cpp server, SGLang, hosted APIs).

Spec: ``openai:MODEL@http://host:port/v1`` (``OPENAI_API_KEY`` is sent as a Bearer token
when set). Start a server, then point any stage at it, e.g.::

    vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct --port 8000
    cai label --model openai:HuggingFaceTB/SmolLM2-1.7B-Instruct@http://127.0.0.1:8000/v1 ...

* ``generate`` sends one ``/chat/completions`` request per conversation, in parallel
  (``concurrency`` threads), with the conversation's own ``seed``.
* ``score_choices`` needs the legacy ``/completions`` endpoint with ``logprobs`` (vLLM and
  SGLang have it). Single-token options are read from one request's ``top_logprobs``; other
  options are scored by echoing ``prompt + option`` and summing the option tokens' logprobs.
  A server without logprobs raises :class:`LogprobsUnavailable`: a label is never faked.
* 429, 5xx, connection errors and timeouts are retried with exponential backoff (honouring
  ``Retry-After``); any other 4xx fails at once with the status and the server's message.

Only the standard library is used (``urllib``), so the backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

from .base import BackendError, Conversation, LogprobsUnavailable, Sampling

T = TypeVar("T")
_SPEC = re.compile(r"^openai:(?P<model>.+?)@(?P<url>https?://\S+)$")
_RETRY_STATUS = {408, 429} | set(range(500, 600))
_FAST_TOP_K = 20  # vLLM's default cap on logprobs per position


class OpenAIBackend:
    """A model served behind an OpenAI-compatible API."""

    #: The server rejects over-long prompts per request (HTTP 400); nothing to check before.
    context_length: int | None = None

    def __init__(
        self,
        model: str,
        url: str,
        *,
        concurrency: int = 8,
        timeout: float = 300.0,
        max_retries: int = 5,
        tokenizer: str | None = None,
        api_key: str | None = None,
        retry_base: float = 1.0,
        batch_size: int | None = None,  # accepted so callers can pass options uniformly
    ):
        self.model = model
        self.url = url.rstrip("/")
        self.name = f"openai:{model}@{self.url}"
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.retry_base = float(retry_base)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        # Servers name models by hub id or path, so that is the tokenizer to try first.
        self.tokenizer_path = tokenizer or os.environ.get("CAI_OPENAI_TOKENIZER") or model
        self._tokenizer: Any = None
        # Once the server has refused logprobs=20, stop trying the single-request fast path.
        self._fast_path = True

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> "OpenAIBackend":
        """Build from ``openai:MODEL@http://host:port/v1``."""
        m = _SPEC.match(spec.strip())
        if not m:
            raise ValueError(
                f"bad model spec {spec!r}: expected openai:MODEL@http://host:port/v1"
            )
        return cls(m["model"], m["url"], **options)

    # ------------------------------------------------------------------- HTTP
    def _post(self, path: str, body: dict) -> dict:
        """POST JSON with retries; return the decoded JSON reply or raise BackendError."""
        url = self.url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.retry_base * 2**attempt * (0.5 + random.random() / 2)
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError as e:
                    raise BackendError(f"{url} returned invalid JSON: {raw[:300]!r}") from e
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")[:500]
                last = f"HTTP {e.code}: {text}"
                if e.code not in _RETRY_STATUS:
                    if e.code < 500 and "logprob" in text.lower():
                        raise _LogprobsRefused(f"{url} refused logprobs ({last})") from None
                    raise BackendError(f"{url} failed with {last}") from None
                wait = max(wait, _retry_after(e.headers.get("Retry-After")))
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.max_retries:
                time.sleep(wait)
        raise BackendError(f"{url} failed after {self.max_retries + 1} attempts; last error: {last}")

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on ``concurrency`` threads; results in input order."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------- generation
    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """One ``/chat/completions`` request per conversation; replies in input order."""
        if seeds is None:
            seeds = [sampling.seed + i for i in range(len(conversations))]

        def one(item: tuple[Conversation, int]) -> str:
            conv, seed = item
            body: dict[str, Any] = {
                "model": self.model,
                "messages": list(conv),
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "seed": int(seed),
            }
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            if conv and conv[-1].get("role") == "assistant":
                # Prefill (e.g. "Let's think step by step:"): the reply continues that turn.
                # vLLM and SGLang take these chat-template switches; servers without them
                # would start a new turn, so they are sent explicitly.
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            reply = self._post("/chat/completions", body)
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as e:
                raise BackendError(f"{self.url}/chat/completions: unexpected reply {str(reply)[:300]}") from e
            return (content or "").strip()

        return self._map(one, list(zip(conversations, seeds)))

    # ---------------------------------------------------------------- scoring
    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Log-probability of each option after each raw prompt, via ``/completions``."""
        try:
            return self._map(lambda p: self._score_one(p, options), list(prompts))
        except _LogprobsRefused as e:
            raise LogprobsUnavailable(_no_logprobs_message(self.name, str(e))) from None

    def _score_one(self, prompt: str, options: Sequence[str]) -> list[float]:
        if self._fast_path:
            try:
                top = self._top_logprobs(prompt)
            except _LogprobsRefused:
                self._fast_path = False  # e.g. a server capping logprobs below 20
            else:
                if all(o in top for o in options):
                    return [float(top[o]) for o in options]
        return [self._echo_logprob(prompt, o) for o in options]

    def _completion_logprobs(self, body: dict) -> dict:
        body = {"model": self.model, "temperature": 1.0, "top_p": 1.0, **body}
        reply = self._post("/completions", body)
        try:
            lp = reply["choices"][0].get("logprobs")
        except (KeyError, IndexError, TypeError, AttributeError):
            lp = None
        if not lp or not lp.get("token_logprobs"):
            raise _LogprobsRefused(f"{self.url}/completions returned no logprobs")
        return lp

    def _top_logprobs(self, prompt: str) -> dict[str, float]:
        """The next token's top-k ``{token text: logprob}`` after ``prompt`` (one request)."""
        lp = self._completion_logprobs({"prompt": prompt, "max_tokens": 1, "logprobs": _FAST_TOP_K})
        top = (lp.get("top_logprobs") or [None])[0]
        return dict(top) if isinstance(top, dict) else {}

    def _echo(self, text: str) -> list[tuple[int, int, float | None]]:
        """``(start, end, logprob)`` of every token of ``text`` as the server tokenises it."""
        lp = self._completion_logprobs({"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1})
        toks, offs, lps = lp.get("tokens"), lp.get("text_offset"), lp.get("token_logprobs")
        if not (toks and offs and lps) or not len(toks) == len(offs) == len(lps):
            raise _LogprobsRefused(f"{self.url}/completions echo reply lacks tokens/text_offset")
        starts = [int(o) for o in offs]
        ends = starts[1:] + [len(text)]  # next offset, robust to odd token strings
        spans = list(zip(starts, ends, lps))
        return [s for s in spans if s[0] < len(text)]  # drop the one generated token

    def _echo_logprob(self, prompt: str, option: str) -> float:
        """log P(option | prompt) from echoed token logprobs.

        Usually a token starts exactly at ``len(prompt)`` and the answer is the sum over the
        option's tokens. When the server's tokeniser merges the prompt's end with the option
        (e.g. ``" ("``), we take log P(prompt+option) - log P(prompt) over the tail from the
        last token boundary both tokenisations share.
        """
        full = self._echo(prompt + option)
        cut = next((s for s, e, _ in full if e > len(prompt)), None)
        if cut is None:
            raise BackendError(f"{self.url}: no tokens of option {option!r} in the echo reply")
        if cut == len(prompt):
            return _sum_from(full, cut, f"{option!r} after the prompt")
        alone = self._echo(prompt)
        cut = max({s for s, _, _ in full} & {s for s, _, _ in alone} & set(range(cut + 1)))
        what = "the prompt's first token"
        return _sum_from(full, cut, what) - _sum_from(alone, cut, what)

    # ---------------------------------------------------------------- prompts
    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """Apply the served model's chat template, from a local copy of its tokenizer.

        The tokenizer is the ``tokenizer`` option, else ``$CAI_OPENAI_TOKENIZER``, else the
        model name (servers usually name models by hub id or path). A final assistant
        message is continued (prefill), as in :class:`LocalBackend`.
        """
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            except Exception as e:  # noqa: BLE001 - any load failure means the same thing here
                raise BackendError(
                    f"{self.name} cannot render chat prompts: no local tokenizer {self.tokenizer_path!r} ({e}). "
                    "Set CAI_OPENAI_TOKENIZER to the served model's tokenizer folder or hub id; score_choices "
                    "needs raw prompt strings built with that tokenizer's chat template."
                ) from None
        conversation = list(conversation)
        if conversation and conversation[-1].get("role") == "assistant":
            return self._tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
        return self._tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )


class _LogprobsRefused(BackendError):
    """Internal: the server answered without (or refused) logprobs."""


def _sum_from(spans: list[tuple[int, int, float | None]], start: int, what: str) -> float:
    vals = [v for s, _, v in spans if s >= start]
    if any(v is None for v in vals):  # the first token of an echo has no logprob
        raise BackendError(f"no logprob for {what}: the prompt must not be empty")
    return float(sum(vals))  # type: ignore[arg-type]


def _retry_after(value: str | None) -> float:
    """Seconds asked for by a ``Retry-After`` header (numeric form), capped at 2 minutes."""
    try:
        return min(max(float(value), 0.0), 120.0) if value else 0.0
    except ValueError:
        return 0.0


def _no_logprobs_message(name: str, detail: str) -> str:
    return (
        f"{name} does not return token log-probabilities on /completions ({detail}). Soft "
        "AI-feedback labels need them: use a server that supports them (vLLM, SGLang), or "
        "label with --hard-labels (parse the model's generated answer instead)."
    )
