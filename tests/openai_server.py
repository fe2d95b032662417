"""A real OpenAI-compatible HTTP server for tests, backed by a tiny in-process model.

It speaks the two endpoints :class:`OpenAIBackend` uses — ``/v1/chat/completions`` (through
:class:`LocalBackend.generate`) and the legacy ``/v1/completions`` with ``echo``,
``logprobs`` and ``top_logprobs`` computed by the model — over real sockets on 127.0.0.1,
plus switches that simulate a misbehaving server (queued 503/429 replies, stalls, 400s,
missing or refused logprobs). Every request is recorded for assertions.

    with OpenAITestServer(tiny_model_dir) as server:   # conftest's ``tiny_model`` fixture
        backend = OpenAIBackend("tiny", server.url)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from constitutional_ai.models import Sampling
from constitutional_ai.models.local import LocalBackend


class OpenAITestServer:
    """ThreadingHTTPServer on a free 127.0.0.1 port, serving one local model.

    Failure switches (set them between requests):

    * ``fail_queue`` — ``(status, headers)`` replies returned, in order, before normal service;
    * ``stall_queue`` — seconds to sleep before answering the next requests (timeouts);
    * ``bad_request`` — every request gets HTTP 400;
    * ``no_logprobs`` — ``/completions`` answers with ``"logprobs": null``;
    * ``refuse_logprobs`` — ``/completions`` with ``logprobs`` gets a 400 saying unsupported;
    * ``max_logprobs`` — larger ``logprobs`` requests get a 400 (vLLM's cap is 20).
    """

    def __init__(self, model_dir: str, model_name: str = "tiny", device: str = "cpu"):
        self.model_name = model_name
        # CPU by default so replies match a CPU LocalBackend exactly, GPU or not.
        self.local = LocalBackend(model_dir, batch_size=4, device=device)
        self.requests: list[dict[str, Any]] = []
        self.fail_queue: list[tuple[int, dict[str, str]]] = []
        self.stall_queue: list[float] = []
        self.bad_request = self.no_logprobs = self.refuse_logprobs = False
        self.max_logprobs = 20
        self._lock = threading.Lock()  # one model call at a time; guards the queues
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> OpenAITestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget recorded requests and clear every failure switch."""
        with self._lock:
            self.requests.clear()
            self.fail_queue.clear()
            self.stall_queue.clear()
        self.bad_request = self.no_logprobs = self.refuse_logprobs = False
        self.max_logprobs = 20

    def bodies(self, path: str) -> list[dict]:
        """Bodies of the recorded requests to ``path`` (e.g. ``"/v1/completions"``)."""
        return [r["body"] for r in self.requests if r["path"] == path]

    # ------------------------------------------------------------------ dispatch
    def handle(self, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        """Return ``(status, extra headers, JSON reply)`` for one request."""
        with self._lock:
            self.requests.append({"path": path, "body": body, "headers": headers})
            failure = self.fail_queue.pop(0) if self.fail_queue else None
            stall = self.stall_queue.pop(0) if self.stall_queue else 0.0
        if stall:
            time.sleep(stall)
        if failure:
            status, extra = failure
            return status, extra, _error(f"simulated HTTP {status}")
        if self.bad_request:
            return 400, {}, _error("simulated bad request: unknown parameter")
        if path == "/v1/chat/completions":
            msgs = body.get("messages") or []
            if msgs and msgs[-1].get("role") == "assistant" and not body.get("continue_final_message"):
                # Like a server that would otherwise open a new turn after the prefill.
                return 400, {}, _error("final assistant message needs continue_final_message=true")
            return 200, {}, self._chat(body)
        if path == "/v1/completions":
            k = body.get("logprobs")
            if k is not None and self.refuse_logprobs:
                return 400, {}, _error("logprobs are not supported by this server")
            if k is not None and int(k) > self.max_logprobs:
                return 400, {}, _error(f"requested logprobs={k} exceeds max_logprobs={self.max_logprobs}")
            return 200, {}, self._completion(body)
        return 404, {}, _error(f"no route {path}")

    def _chat(self, body: dict) -> dict:
        sampling = Sampling(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(body.get("max_tokens", 16)),
            stop=tuple(body.get("stop") or ()),
        )
        with self._lock:
            text = self.local.generate([body["messages"]], sampling, seeds=[int(body.get("seed", 0))])[0]
        return {
            "object": "chat.completion",
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    @torch.inference_mode()
    def _completion(self, body: dict) -> dict:
        """Greedy completion with real token logprobs, in the legacy ``logprobs`` format."""
        tok, model = self.local.tokenizer, self.local.model
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        k, echo = body.get("logprobs"), bool(body.get("echo"))
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc.input_ids)
        tokens = [prompt[s:e] for s, e in enc.offset_mapping]
        offsets = [s for s, _ in enc.offset_mapping]
        text = prompt
        with self._lock:
            ids_t = torch.tensor([ids], device=self.local.device)
            logp = model(input_ids=ids_t).logits[0].float().log_softmax(-1).cpu()
            token_lps: list[float | None] = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
            tops: list[dict | None] = [None] + [_top(tok, logp[i - 1], k) for i in range(1, len(ids))]
            n_prompt = len(ids)
            for _ in range(min(int(body.get("max_tokens", 16)), 64)):
                nxt = int(logp[-1].argmax())
                piece = tok.decode([nxt])
                tokens.append(piece)
                offsets.append(len(text))
                token_lps.append(float(logp[-1, nxt]))
                tops.append(_top(tok, logp[-1], k))
                ids.append(nxt)
                text += piece
                ids_t = torch.tensor([ids], device=self.local.device)
                logp = model(input_ids=ids_t).logits[0].float().log_softmax(-1).cpu()
        keep = slice(0, None) if echo else slice(n_prompt, None)
        logprobs = None
        if k is not None and not self.no_logprobs:
            logprobs = {
                "tokens": tokens[keep],
                "token_logprobs": token_lps[keep],
                "top_logprobs": tops[keep],
                "text_offset": offsets[keep],
            }
        return {
            "object": "text_completion",
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "text": text if echo else text[len(prompt) :],
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
        }


def _top(tok: Any, row: torch.Tensor, k: int | None) -> dict[str, float] | None:
    if not k:
        return None
    vals, idx = row.topk(int(k))
    out: dict[str, float] = {}
    for v, i in zip(vals.tolist(), idx.tolist()):
        out.setdefault(tok.decode([i]), v)  # keep the best of tokens that decode alike
    return out


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error"}}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            status, extra, reply = self.server.app.handle(self.path, body, dict(self.headers))  # type: ignore[attr-defined]
        except Exception as e:  # a bug in the test server must show up as a 500, not a hang
            status, extra, reply = 500, {}, _error(f"{type(e).__name__}: {e}")
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass
