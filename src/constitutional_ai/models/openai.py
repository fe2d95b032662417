"""Backend for any OpenAI-compatible HTTP server (vLLM, llama.cpp server, SGLang, hosted APIs).

Spec: ``openai:MODEL@http://host:port/v1`` (``OPENAI_API_KEY`` is sent as a Bearer token
when set). Start a server, then point any stage at it, e.g.::

    vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct --port 8000
    cai label --model openai:HuggingFaceTB/SmolLM2-1.7B-Instruct@http://127.0.0.1:8000/v1 ...

Options (``load_backend(spec, **options)``; unknown ones are a ``ValueError`` at load time):
``concurrency`` (requests in flight, default 8), ``cache`` (request cache file, ``False`` /
``"off"`` to disable; see :mod:`.cache`), ``timeout`` (seconds per request), ``max_retries``
and ``retry_budget`` (total seconds spent waiting between retries), ``tokenizer`` (where to
render chat prompts from), ``top_k`` (log-probabilities asked per position), ``truncation``
(``"error"`` or ``"left"``: when the server says a conversation is too long, drop its oldest
turns and ask again), ``prompt_format`` (``chat``/``auto``: the server renders its chat template;
``text``: the plain "Human: ... Assistant: ..." transcript, sent to ``/completions`` — for a served
base model without a chat template), ``batch_size`` (accepted for uniformity; requests are sent
one by one).

Generation: one ``/chat/completions`` request per conversation, ``concurrency`` in flight,
each with its conversation's own ``seed``. A final assistant message is continued (prefill):
vLLM/SGLang take ``continue_final_message``; llama.cpp continues it by itself and echoes the
prefill at the start of its reply, which is cut off so every server returns only the new text.
With ``prompt_format="text"`` each conversation is rendered here as the plain transcript
(:func:`~constitutional_ai.prompts.text_prompt`, no BOS: the server adds its own) and sent as a
``/completions`` prompt, stopping at the next turn.

Scoring (``score_choices``) reads log-probabilities in whichever shape the server returns,
detected from the first reply and reported by :meth:`OpenAIBackend.info`:

* ``"legacy"`` — ``/completions`` arrays ``tokens / token_logprobs / top_logprobs /
  text_offset`` (vLLM, SGLang, OpenAI's legacy endpoint). Options outside the top-k and
  multi-token options are scored exactly by echoing ``prompt + option``.
* ``"content"`` — ``/completions`` with ``logprobs.content[i].top_logprobs[j] = {token,
  logprob, id}`` (llama.cpp). Multi-token options are scored token by token: the server's
  ``/tokenize`` gives the option's token ids and each is looked up (by id) in the top-k after
  the prompt plus the option tokens before it (top 1000 there: llama.cpp has no cap).
* ``"chat"`` — ``/chat/completions`` with ``logprobs.content[].top_logprobs`` (hosted chat
  APIs, capped at 20), used when ``/completions`` is missing or gives no log-probabilities and
  the prompt was rendered by this backend (so its conversation is known); the prefilled
  assistant turn is continued where the server supports it. Single-token options only.

**Options absent from a capped top-k get no value.** ``score_choices`` returns ``None`` in
that option's place (never ``-inf`` or a guess); callers must treat a row containing ``None``
as "option absent from the server's top-k" and record it as such (the label stage reports
such a pair as a failure saying so). Raise ``top_k`` on servers that allow it (llama.cpp has
no cap). A server that returns no log-probabilities at all raises :class:`LogprobsUnavailable`.

Chat prompts for scoring (``render``) come from, in order: the ``tokenizer`` option or
``$CAI_OPENAI_TOKENIZER``; the model name when it is a local folder with a tokenizer; the
embedded model's tokenizer when the served model is the embedded SmolLM2 GGUF; the server's
own template (llama.cpp ``/apply-template``; vLLM ``/tokenize`` with ``messages`` then
``/detokenize``); else a clear error naming ``CAI_OPENAI_TOKENIZER``.

Failures: 429, 5xx, connection errors and timeouts are retried with exponential backoff
(honouring ``Retry-After``) within ``max_retries`` and ``retry_budget``; a context-length 400
raises :class:`PromptTooLong` for that prompt; any other 4xx fails at once with the status and
the server's message. The API key never appears in the cache, :meth:`info`, logs or errors.

Only the standard library is used for HTTP (``urllib``), so the backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..prompts import TEXT_STOPS, chat_turns, text_prompt
from .base import (
    BackendError,
    Conversation,
    Generation,
    LogprobsUnavailable,
    PromptTooLong,
    Sampling,
    check_prompt_format,
)
from .cache import RequestCache, request_key, resolve_cache

T = TypeVar("T")
_SPEC = re.compile(r"^openai:(?P<model>.+?)@(?P<url>https?://\S+)$")
_RETRY_STATUS = {408, 429} | set(range(500, 600))
_TOO_LONG = re.compile(r"context (length|size|window)|exceed_context|maximum context|too long|context_length", re.I)
# Endpoints whose answers depend only on the request body: always cacheable.
_PURE_PATHS = {"/apply-template", "/tokenize", "/detokenize"}
_EMBEDDED_HINT = "smollm2-135m-instruct"
# llama.cpp has no cap on top-k; 1000 entries answer in ~0.1 s where the full vocabulary takes
# seconds, and an option token ranked below 1000 has a negligible probability anyway.
_DEEP_K = 1000


def _positive_int(name: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"option {name!r} must be a positive integer, got {v!r}")
        return v

    return check


def _non_negative(name: str, kind: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"option {name!r} must be a number >= 0, got {v!r}")
        return kind(v)

    return check


def _truncation(v: Any) -> str:
    if v not in ("error", "left"):
        raise ValueError(f"option 'truncation' must be 'error' or 'left', got {v!r}")
    return v


def _optional_str(name: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise ValueError(f"option {name!r} must be a string, got {type(v).__name__}")
        return None if v is None else str(v)

    return check


#: Every option this backend takes, with its validator (``load_backend`` checks them all).
OPTIONS: dict[str, Callable[[Any], Any]] = {
    "batch_size": lambda v: None if v is None else _positive_int("batch_size")(v),
    "truncation": _truncation,
    "concurrency": _positive_int("concurrency"),
    "cache": lambda v: v,  # checked by resolve_cache
    "timeout": _non_negative("timeout", float),
    "max_retries": _non_negative("max_retries", int),
    "retry_budget": _non_negative("retry_budget", float),
    "retry_base": _non_negative("retry_base", float),
    "tokenizer": _optional_str("tokenizer"),
    "api_key": _optional_str("api_key"),
    "top_k": _positive_int("top_k"),
    "prompt_format": check_prompt_format,
}


class OpenAIBackend:
    """A model served behind an OpenAI-compatible API."""

    #: The server rejects over-long prompts per request (HTTP 400); nothing to check before.
    context_length: int | None = None

    def __init__(
        self,
        model: str,
        url: str,
        *,
        concurrency: int | None = None,
        timeout: float = 300.0,
        max_retries: int = 5,
        retry_budget: float = 600.0,
        retry_base: float = 1.0,
        tokenizer: str | None = None,
        api_key: str | None = None,
        top_k: int = 20,
        cache: Any = None,
        truncation: str = "error",
        batch_size: int | None = None,
        prompt_format: str = "auto",
    ):
        self.model = model
        self.url = _strip_credentials(url.rstrip("/"))
        # Server-level endpoints (/tokenize, /apply-template, /metrics) live above /v1.
        self.root = re.sub(r"/v\d+$", "", self.url)
        self.name = f"openai:{model}@{self.url}"
        # `cai --concurrency N` sets CAI_CONCURRENCY for every server a command talks to.
        self.concurrency = OPTIONS["concurrency"](concurrency or int(os.environ.get("CAI_CONCURRENCY") or 8))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_budget = float(retry_budget)
        self.retry_base = float(retry_base)
        self.top_k = int(top_k)
        self.truncation = _truncation(truncation)
        self.batch_size = batch_size
        # A server renders its own chat template: "auto" cannot look inside it, so it means chat.
        self.prompt_format = "text" if check_prompt_format(prompt_format) == "text" else "chat"
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._tokenizer_option = tokenizer or os.environ.get("CAI_OPENAI_TOKENIZER")
        self.cache_path = resolve_cache(cache)
        self._cache = RequestCache(self.cache_path) if self.cache_path else None
        self._render_with: Callable[[list, bool], str] | None = None
        self.tokenizer_source: str | None = None
        self.logprob_shape: str | None = None  # "legacy" | "content" | "chat", detected on first use
        self.prefill_echo: bool | None = None  # does the server repeat a prefilled turn in its reply?
        self._rendered: dict[str, list] = {}  # rendered prompt -> conversation (for the chat shape)
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> OpenAIBackend:
        """Build from ``openai:MODEL@http://host:port/v1``."""
        m = _SPEC.match(spec.strip())
        if not m:
            raise ValueError(f"bad model spec {spec!r}: expected openai:MODEL@http://host:port/v1")
        return cls(m["model"], m["url"], **options)

    def info(self) -> dict:
        """Facts for manifests (never the API key)."""
        return {
            "name": self.name,
            "kind": "openai",
            "model": self.model,
            "base_url": self.url,
            "logprob_shape": self.logprob_shape,
            "tokenizer_source": self.tokenizer_source,
            "cache": str(self.cache_path) if self.cache_path else None,
            "prefill_echo": self.prefill_echo,
            "concurrency": self.concurrency,
            "prompt_format": self.prompt_format,
        }

    # ------------------------------------------------------------------- HTTP
    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _post(self, path: str, body: dict, *, root: bool = False, index: int = 0) -> dict:
        """POST JSON with retries and the request cache; return the JSON reply or raise."""
        base = self.root if root else self.url
        cacheable = self._cache is not None and (
            path in _PURE_PATHS or body.get("temperature", 1.0) == 0 or "seed" in body
        )
        key = request_key(base, path, body) if cacheable else ""
        if cacheable:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        reply = self._send(base + path, body, index)
        if cacheable:
            self._cache.put(key, path, body, reply)
        return reply

    def _send(self, url: str, body: dict, index: int) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode()
        last, start = "", time.monotonic()
        for attempt in range(self.max_retries + 1):
            wait = self.retry_base * 2**attempt * (0.5 + random.random() / 2)
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError as e:
                    raise BackendError(f"{url} returned invalid JSON: {self._redact(repr(raw[:300]))}") from e
            except urllib.error.HTTPError as e:
                text = self._redact(e.read().decode("utf-8", "replace")[:500])
                last = f"HTTP {e.code}: {text}"
                if e.code not in _RETRY_STATUS:
                    raise _http_error(url, e.code, text, index) from None
                wait = max(wait, _retry_after(e.headers.get("Retry-After")))
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out
                last = self._redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            spent = time.monotonic() - start
            if attempt == self.max_retries or spent + wait > self.retry_budget:
                raise BackendError(
                    f"{url} failed after {attempt + 1} attempts ({spent:.0f} s; max_retries={self.max_retries}, "
                    f"retry_budget={self.retry_budget:g} s); last error: {last}"
                )
            time.sleep(wait)
        raise AssertionError("unreachable")

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

        def one(item: tuple[int, Conversation, int]) -> str:
            i, conv, seed = item
            conv = list(conv)
            while True:
                try:
                    return self._chat(i, conv, sampling, seed)
                except PromptTooLong:
                    shorter = _drop_oldest_turns(conv) if self.truncation == "left" else None
                    if shorter is None:
                        raise
                    conv = shorter

        return self._map(one, [(i, c, s) for i, (c, s) in enumerate(zip(conversations, seeds))])

    def _text(self, index: int, conv: list, sampling: Sampling, seed: int) -> str:
        """One ``/completions`` request for the plain-text rendering of ``conv``."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": text_prompt(conv),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": int(seed),
            "stop": list(dict.fromkeys((*sampling.stop, *TEXT_STOPS))),
        }
        reply = self._post("/completions", body, index=index)
        try:
            content = reply["choices"][0]["text"] or ""
            why = reply["choices"][0].get("finish_reason")
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{self.url}/completions: unexpected reply {str(reply)[:300]}") from e
        return Generation(content.strip(), why if why in ("stop", "length") else None)

    def _chat(self, index: int, conv: list, sampling: Sampling, seed: int) -> str:
        if self.prompt_format == "text":
            return self._text(index, conv, sampling, seed)
        conv = chat_turns(conv)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conv,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": int(seed),
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        prefill = conv[-1].get("content") or "" if conv and conv[-1].get("role") == "assistant" else None
        if prefill is not None:
            # Prefill (e.g. "The answer is: ("): the reply continues that turn. vLLM and SGLang
            # need these chat-template switches; llama.cpp continues the turn by itself.
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        reply = self._post("/chat/completions", body, index=index)
        try:
            content = reply["choices"][0]["message"]["content"] or ""
            why = reply["choices"][0].get("finish_reason")  # "stop" | "length" (llama.cpp, vLLM, SGLang)
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{self.url}/chat/completions: unexpected reply {str(reply)[:300]}") from e
        if prefill and content.startswith(prefill):
            # llama.cpp answers with the prefilled text followed by the continuation.
            self.prefill_echo = True
            content = content[len(prefill) :]
        elif prefill:
            self.prefill_echo = False
        return Generation(content.strip(), why if why in ("stop", "length") else None)

    # ---------------------------------------------------------------- scoring
    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float | None]]:
        """Log-probability of each option after each raw prompt (``None``: absent from top-k)."""
        try:
            return self._map(lambda ip: self._score_one(ip[0], ip[1], options), list(enumerate(prompts)))
        except _LogprobsRefused as e:
            raise LogprobsUnavailable(_no_logprobs_message(self.name, str(e))) from None

    def _score_one(self, index: int, prompt: str, options: Sequence[str]) -> list[float | None]:
        try:
            top = self._next_token_top(index, prompt)
        except _LogprobsRefused:
            if self.logprob_shape not in (None, "legacy"):
                raise
            top = {}  # e.g. a server capping logprobs below top_k: the echo path may still work
        found: list[float | None] = [top.get(o) for o in options]
        if all(v is not None for v in found) or self.logprob_shape == "chat":
            return found  # chat shape: only the capped top-k of the next token exists
        for j, o in enumerate(options):
            if found[j] is None:
                found[j] = (
                    self._forced_logprob(index, prompt, o)
                    if self.logprob_shape == "content"
                    else self._echo_logprob(index, prompt, o)
                )
        return found

    def _completions(self, index: int, body: dict) -> dict:
        body = {"model": self.model, "temperature": 1.0, "top_p": 1.0, "seed": 0, **body}
        return self._post("/completions", body, index=index)

    def _next_token_top(self, index: int, prompt: str) -> dict[str, float]:
        """``{token text: logprob}`` of the next token's top-k after ``prompt``; detects the shape."""
        if self.logprob_shape != "chat":
            try:
                reply = self._completions(index, {"prompt": prompt, "max_tokens": 1, "logprobs": self.top_k})
            except _NotServed as e:
                if prompt not in self._rendered:
                    raise _LogprobsRefused(str(e)) from None
            else:
                lp = _first_logprobs(reply)
                if isinstance(lp, dict) and isinstance(lp.get("content"), list) and lp["content"]:
                    self.logprob_shape = "content"
                    return _top_from_content(lp["content"][0])
                if isinstance(lp, dict) and lp.get("token_logprobs"):
                    self.logprob_shape = "legacy"
                    top = (lp.get("top_logprobs") or [None])[0]
                    return {str(k): float(v) for k, v in top.items()} if isinstance(top, dict) else {}
                if prompt not in self._rendered:
                    raise _LogprobsRefused(f"{self.url}/completions returned no logprobs")
        return self._chat_top(index, prompt)

    def _chat_top(self, index: int, prompt: str) -> dict[str, float]:
        """Next-token top-k from ``/chat/completions`` (hosted chat APIs cap it at 20)."""
        conv = self._rendered.get(prompt)
        if conv is None:
            raise _LogprobsRefused(f"{self.url}: chat-completions scoring needs prompts rendered by this backend")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conv,
            "max_tokens": 1,
            "temperature": 1.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": min(self.top_k, 20),
        }
        if conv and conv[-1].get("role") == "assistant":
            body.update(continue_final_message=True, add_generation_prompt=False)
        try:
            reply = self._post("/chat/completions", body, index=index)
        except _NotServed as e:
            raise _LogprobsRefused(str(e)) from None
        lp = _first_logprobs(reply)
        content = lp.get("content") if isinstance(lp, dict) else None
        if not content:
            raise _LogprobsRefused(f"{self.url}/chat/completions returned no logprobs either")
        self.logprob_shape = "chat"
        return _top_from_content(content[0])

    # legacy shape: exact scores from echoed prompt tokens
    def _echo(self, index: int, text: str) -> list[tuple[int, int, float | None]]:
        """``(start, end, logprob)`` of every token of ``text`` as the server tokenises it."""
        lp = _first_logprobs(self._completions(index, {"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1}))
        toks, offs, lps = (lp or {}).get("tokens"), (lp or {}).get("text_offset"), (lp or {}).get("token_logprobs")
        if not (toks and offs and lps) or not len(toks) == len(offs) == len(lps):
            raise _LogprobsRefused(f"{self.url}/completions echo reply lacks tokens/text_offset")
        self.logprob_shape = "legacy"
        starts = [int(o) for o in offs]
        ends = starts[1:] + [len(text)]  # next offset, robust to odd token strings
        return [s for s in zip(starts, ends, lps) if s[0] < len(text)]  # drop the generated token

    def _echo_logprob(self, index: int, prompt: str, option: str) -> float:
        """log P(option | prompt) from echoed token logprobs.

        When the server's tokeniser merges the prompt's end with the option (e.g. ``" ("``),
        take log P(prompt+option) - log P(prompt) from the last token boundary both share.
        """
        full = self._echo(index, prompt + option)
        cut = next((s for s, e, _ in full if e > len(prompt)), None)
        if cut is None:
            raise BackendError(f"{self.url}: no tokens of option {option!r} in the echo reply")
        if cut == len(prompt):
            return _sum_from(full, cut, f"{option!r} after the prompt")
        alone = self._echo(index, prompt)
        cut = max({s for s, _, _ in full} & {s for s, _, _ in alone} & set(range(cut + 1)))
        return _sum_from(full, cut, "the prompt's first token") - _sum_from(alone, cut, "the prompt's first token")

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the server's own tokenizer (llama.cpp's ``/tokenize``)."""
        return len(self._tokenize(text))

    # content shape: token-by-token lookups of the option's token ids
    def _tokenize(self, text: str) -> list[int]:
        reply = self._post("/tokenize", {"content": text}, root=True)
        toks = reply.get("tokens") if isinstance(reply, dict) else None
        if not isinstance(toks, list):
            raise BackendError(f"{self.root}/tokenize: unexpected reply {str(reply)[:200]}")
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in toks]

    def _forced_logprob(self, index: int, prompt: str, option: str) -> float | None:
        """log P(option | prompt), one request per option token; ``None`` if one is outside the top-k."""
        full, alone = self._tokenize(prompt + option), self._tokenize(prompt)
        cut = 0
        while cut < min(len(full), len(alone)) and full[cut] == alone[cut]:
            cut += 1
        if cut == 0:
            raise BackendError(f"{self.url}: cannot score option {option!r} after an empty prompt")
        total = 0.0
        for ids in (full, alone):  # log P(full[cut:]) - log P(alone[cut:]), both given [:cut]
            sign = 1.0 if ids is full else -1.0
            for j in range(cut, len(ids)):
                k = max(self.top_k, _DEEP_K)
                reply = self._completions(index, {"prompt": ids[:j], "max_tokens": 1, "logprobs": k})
                lp = _first_logprobs(reply)
                content = lp.get("content") if isinstance(lp, dict) else None
                if not content:
                    raise _LogprobsRefused(f"{self.url}/completions returned no logprobs")
                by_id = {int(t["id"]): float(t["logprob"]) for t in content[0].get("top_logprobs", []) if "id" in t}
                if ids[j] not in by_id:
                    return None  # outside the top-k: no value rather than a guess
                total += sign * by_id[ids[j]]
        return total

    # ---------------------------------------------------------------- prompts
    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """The raw prompt string for a chat conversation (a final assistant turn is continued).

        The template comes from the first source that works (see the module docstring); with
        ``prompt_format="text"`` it is the plain transcript.
        """
        if self.prompt_format == "text":
            return text_prompt(conversation, add_generation_prompt)
        conv = chat_turns(conversation)
        with self._lock:
            if self._render_with is None:
                self._render_with, self.tokenizer_source = self._find_renderer()
        text = self._render_with(conv, add_generation_prompt)
        if len(self._rendered) < 100_000:  # remembered for chat-shape scoring
            self._rendered[text] = conv
        return text

    def _find_renderer(self) -> tuple[Callable[[list, bool], str], str]:
        tried = []
        candidates: list[tuple[str, str]] = []
        if self._tokenizer_option:
            candidates.append(("option", self._tokenizer_option))
        elif os.path.isdir(self.model):
            candidates.append(("model folder", self.model))
        elif _EMBEDDED_HINT in self.model.lower():
            from .local import embedded_model_dir

            candidates.append(("embedded model", str(embedded_model_dir())))
        for how, where in candidates:
            try:
                return _hf_renderer(where), f"{how}: {where}"
            except Exception as e:  # noqa: BLE001 - any load failure means "try the next source"
                tried.append(f"tokenizer {where!r}: {e}")
                if how == "option":
                    raise BackendError(f"{self.name}: cannot load the tokenizer {where!r} ({e})") from None
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "("}]
        for how, fn in (("server /apply-template", self._render_llamacpp), ("server /tokenize", self._render_vllm)):
            try:
                out = fn(probe, True)
                if isinstance(out, str) and out.rstrip().endswith("("):
                    if how.endswith("apply-template") and self._served_is_embedded(out):
                        from .local import embedded_model_dir

                        return _hf_renderer(str(embedded_model_dir())), "embedded model (matched by template)"
                    return fn, how
                tried.append(f"{how}: unexpected reply")
            except (BackendError, KeyError, TypeError, ValueError) as e:
                tried.append(f"{how}: {e}")
        try:  # a hub id this machine has cached
            return _hf_renderer(self.model), f"hub id: {self.model}"
        except Exception as e:  # noqa: BLE001
            tried.append(f"tokenizer {self.model!r}: {str(e)[:120]}")
        raise BackendError(
            f"{self.name} cannot render chat prompts: "
            + "; ".join(tried)
            + ". Set CAI_OPENAI_TOKENIZER (or the tokenizer option) to the served model's tokenizer folder or hub id."
        )

    def _served_is_embedded(self, rendered: str) -> bool:
        """True when the server's template is the embedded model's (so its tokenizer is exact)."""
        return "named SmolLM, trained by Hugging Face" in rendered and "<|im_start|>" in rendered

    def _render_llamacpp(self, conv: list, add_generation_prompt: bool) -> str:
        if not add_generation_prompt and conv and conv[-1].get("role") != "assistant":
            raise BackendError("/apply-template always adds the assistant turn")
        return str(self._post("/apply-template", {"messages": conv}, root=True)["prompt"])

    def _render_vllm(self, conv: list, add_generation_prompt: bool) -> str:
        cont = bool(conv) and conv[-1].get("role") == "assistant"
        tok = self._post(
            "/tokenize",
            {
                "model": self.model,
                "messages": conv,
                "add_special_tokens": False,
                "add_generation_prompt": add_generation_prompt and not cont,
                "continue_final_message": cont,
            },
            root=True,
        )
        return str(self._post("/detokenize", {"model": self.model, "tokens": tok["tokens"]}, root=True)["prompt"])


class _LogprobsRefused(BackendError):
    """Internal: the server answered without (or refused) logprobs."""


class _NotServed(BackendError):
    """Internal: the endpoint does not exist on this server, or rejects the request shape."""


def _http_error(url: str, code: int, text: str, index: int) -> BackendError:
    if code == 400 and _TOO_LONG.search(text):
        nums = [int(n) for n in re.findall(r"(\d+) tokens", text)]
        m = re.search(r'"n_prompt_tokens":\s*(\d+).*?"n_ctx":\s*(\d+)', text)
        n, limit = (int(m[1]), int(m[2])) if m else (max(nums), min(nums)) if len(nums) >= 2 else (-1, -1)
        return PromptTooLong(index, n, limit, f"{url} answered HTTP 400: {text[:200]}")
    if code < 500 and "logprob" in text.lower():
        return _LogprobsRefused(f"{url} refused logprobs (HTTP {code}: {text})")
    if code in (404, 405, 501):
        return _NotServed(f"{url} is not served (HTTP {code}: {text[:200]})")
    return BackendError(f"{url} failed with HTTP {code}: {text}")


def _hf_renderer(where: str) -> Callable[[list, bool], str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(where)

    def render(conv: list, add_generation_prompt: bool) -> str:
        if conv and conv[-1].get("role") == "assistant":
            return tok.apply_chat_template(conv, tokenize=False, continue_final_message=True)
        return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)

    return render


def _first_logprobs(reply: Any) -> Any:
    try:
        return reply["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _top_from_content(entry: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in entry.get("top_logprobs") or []:
        out.setdefault(str(t["token"]), float(t["logprob"]))  # keep the best of tokens that print alike
    return out


def _drop_oldest_turns(conv: list) -> list | None:
    """The conversation minus its oldest non-system turn pair, or ``None`` if nothing is left to drop."""
    system = [m for m in conv[:1] if m.get("role") == "system"]
    rest = conv[len(system) :]
    if len(rest) <= 1:
        return None
    return system + (rest[2:] if len(rest) > 2 else rest[1:])


def _strip_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _sum_from(spans: list[tuple[int, int, float | None]], start: int, what: str) -> float:
    vals = [v for s, _, v in spans if s >= start]
    if any(v is None for v in vals):  # the first token of an echo has no logprob
        raise BackendError(f"no logprob for {what}: the prompt must not be empty")
    return float(sum(vals))


def _retry_after(value: str | None) -> float:
    """Seconds asked for by a ``Retry-After`` header (numeric form), capped at 2 minutes."""
    try:
        return min(max(float(value), 0.0), 120.0) if value else 0.0
    except ValueError:
        return 0.0


def _no_logprobs_message(name: str, detail: str) -> str:
    return (
        f"{name} does not return token log-probabilities ({detail}). Soft AI-feedback labels need "
        "them: use a server that returns them (vLLM, SGLang, llama.cpp), or label with --hard-labels "
        "(parse the model's generated answer instead)."
    )
