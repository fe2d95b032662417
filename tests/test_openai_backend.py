"""OpenAIBackend against the home-made HTTP server (tests/openai_server.py) serving a tiny model.

This server is kept for what a real server will not do on demand (429 storms, 5xx, stalls,
refused logprobs) and for the legacy log-probability shape; tests against a real llama.cpp
server are in test_llamacpp_server.py.

    PYTHONPATH=src python -m pytest -q tests/test_openai_backend.py
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch

from constitutional_ai.models import BackendError, LogprobsUnavailable, Sampling, load_backend
from constitutional_ai.models.local import LocalBackend
from constitutional_ai.models.openai import OpenAIBackend
from openai_server import OpenAITestServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(autouse=True)
def _no_default_cache(monkeypatch):
    monkeypatch.setenv("CAI_REQUEST_CACHE", "off")  # request counts below must see every request


@pytest.fixture(scope="module")
def server(tiny_model):
    srv = OpenAITestServer(tiny_model)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def local(tiny_model):
    return LocalBackend(tiny_model, device="cpu")


@pytest.fixture()
def backend(server):
    server.reset()
    yield OpenAIBackend("tiny", server.url, retry_base=0.01, concurrency=4)
    server.reset()


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def seq_logprob(local: LocalBackend, text: str) -> float:
    """Sum of the model's logprobs of every token of ``text`` after the first."""
    ids = local.tokenizer(text, add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = local.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))


# ---------------------------------------------------------------------- spec / load
def test_load_backend_parses_spec(server):
    b = load_backend(f"openai:org/tiny-model@{server.url}", batch_size=8, concurrency=2)
    assert isinstance(b, OpenAIBackend)
    assert (b.model, b.url, b.concurrency) == ("org/tiny-model", server.url, 2)
    assert b.name == f"openai:org/tiny-model@{server.url}"
    with pytest.raises(ValueError, match="openai:MODEL@http"):
        OpenAIBackend.from_spec("openai:tiny")


def test_options_are_declared_and_checked_at_load(server):
    url = server.url
    b = load_backend(f"openai:m@{url}", batch_size=4, truncation="left", concurrency=3, cache=False)
    assert (b.truncation, b.concurrency, b.cache_path) == ("left", 3, None)
    with pytest.raises(ValueError, match="'device'.*do not apply.*OpenAI-compatible"):
        load_backend(f"openai:m@{url}", device="cpu")
    with pytest.raises(ValueError, match="truncation"):
        load_backend(f"openai:m@{url}", truncation="middle")
    with pytest.raises(ValueError, match="concurrency"):
        load_backend(f"openai:m@{url}", concurrency=0)
    with pytest.raises(ValueError, match="'retry_budget'.*do not apply.*in-process"):
        load_backend("default", retry_budget=3)
    with pytest.raises(ValueError, match="cache"):
        load_backend(f"openai:m@{url}", cache=3)


def test_info_has_no_credentials(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-42")
    b = OpenAIBackend("tiny", "http://user:pw@127.0.0.1:9/v1")
    assert b.info()["base_url"] == "http://127.0.0.1:9/v1" and "pw" not in b.name
    assert "sk-secret-42" not in json.dumps(b.info())


def test_api_key_not_in_error_messages(backend, server, monkeypatch):
    server.bad_request = True
    b = OpenAIBackend("tiny", server.url, api_key="sk-secret-42", max_retries=0)
    with pytest.raises(BackendError) as err:
        b.generate([[{"role": "user", "content": "sk-secret-42"}]], Sampling(max_new_tokens=2))
    assert "sk-secret-42" not in str(err.value)


def test_rerun_after_429_storm_resends_only_unanswered(server, tmp_path):
    server.reset()
    cache = tmp_path / "requests.sqlite"
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    s = Sampling(max_new_tokens=3)
    first = OpenAIBackend("tiny", server.url, cache=cache, concurrency=1, max_retries=0, retry_base=0.01)
    first.generate(convs[:2], s, seeds=[0, 1])  # answered, then the storm starts
    server.fail_queue[:] = [(429, {"Retry-After": "0"})] * 50
    with pytest.raises(BackendError, match="HTTP 429"):
        first.generate(convs, s, seeds=[0, 1, 2, 3])
    server.reset()
    again = OpenAIBackend("tiny", server.url, cache=cache, concurrency=1)
    out = again.generate(convs, s, seeds=[0, 1, 2, 3])
    assert sorted(b["messages"][0]["content"] for b in server.bodies(CHAT)) == ["q2", "q3"]
    server.reset()
    nocache = OpenAIBackend("tiny", server.url, cache=False)
    assert out == nocache.generate(convs, s, seeds=[0, 1, 2, 3])


def test_retry_budget_bounds_total_waiting(server):
    server.reset()
    server.fail_queue[:] = [(503, {"Retry-After": "1"})] * 10
    b = OpenAIBackend("tiny", server.url, max_retries=10, retry_budget=1.5, retry_base=0.01)
    with pytest.raises(BackendError, match=r"after 2 attempts.*retry_budget=1.5"):
        b.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))
    assert len(server.requests) == 2
    server.reset()


def test_context_length_error_is_prompt_too_long(backend, server, monkeypatch):
    from constitutional_ai.models import PromptTooLong

    msg = "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens."
    monkeypatch.setattr(server, "handle", lambda path, body, headers: (400, {}, {"error": {"message": msg}}))
    with pytest.raises(PromptTooLong) as err:
        backend.score_choices(["Answer: ("], ["A"])
    assert (err.value.index, err.value.n_tokens, err.value.limit) == (0, 3000, 2048)


# ----------------------------------------------------------------------- generate
def test_generate_order_seed_and_sampling_sent(backend, server, local):
    convs = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(5)]
    sampling = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=6, stop=("\n",))
    seeds = [11, 22, 33, 44, 55]
    out = backend.generate(convs, sampling, seeds=seeds)
    # The server runs the same model with the same per-conversation seed: same texts, in order.
    assert out == [local.generate([c], sampling, seeds=[s])[0] for c, s in zip(convs, seeds)]
    bodies = sorted(server.bodies(CHAT), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == seeds
    assert [b["messages"] for b in bodies] == convs
    for b in bodies:
        assert (b["model"], b["temperature"], b["top_p"], b["max_tokens"], b["stop"]) == ("tiny", 0.7, 0.9, 6, ["\n"])


def test_generate_continues_a_prefilled_assistant_turn(backend, server, local):
    server.reset()
    conv = [
        {"role": "user", "content": "Which is better?"},
        {"role": "assistant", "content": "Let's think step by step:"},
    ]
    sampling = Sampling(max_new_tokens=6)
    (out,) = backend.generate([conv], sampling, seeds=[3])
    assert out == local.generate([conv], sampling, seeds=[3])[0]
    (body,) = server.bodies(CHAT)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_generate_default_seeds_and_api_key(server, monkeypatch):
    server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    b = OpenAIBackend("tiny", server.url)
    b.generate([[{"role": "user", "content": "hi"}]] * 2, Sampling(max_new_tokens=2, seed=7))
    assert sorted(r["body"]["seed"] for r in server.requests) == [7, 8]
    assert "stop" not in server.requests[0]["body"]
    assert all(r["headers"]["Authorization"] == "Bearer sk-test-123" for r in server.requests)


# ------------------------------------------------------------------------ scoring
def test_score_single_token_options_match_local(backend, server, local):
    prompts = ["Which is better? The answer is: (", "Options: (A) yes (B) no. Answer: ("]
    got = backend.score_choices(prompts, ["A", "B"])
    assert flat(got) == pytest.approx(flat(local.score_choices(prompts, ["A", "B"])), abs=1e-3)
    # A random model hardly ever ranks "A"/"B" in its top 20: the echo path was used.
    assert any(b.get("echo") for b in server.bodies(COMPLETIONS))
    assert backend.info()["logprob_shape"] == "legacy"


def test_score_fast_path_uses_one_request_per_prompt(backend, server, local):
    prompt = "The answer is: ("
    ids = local.tokenizer(prompt, add_special_tokens=False).input_ids
    with torch.inference_mode():
        top = local.model(input_ids=torch.tensor([ids])).logits[0, -1].topk(20).indices.tolist()
    # Options that are top-20 tokens and tokenise back to themselves after the prompt.
    options = [
        s
        for s in (local.tokenizer.decode([t]) for t in top)
        if local.tokenizer(prompt + s, add_special_tokens=False).input_ids[len(ids) :] != []
        and len(local.tokenizer(prompt + s, add_special_tokens=False).input_ids) == len(ids) + 1
    ][:3]
    assert len(options) >= 2
    got = backend.score_choices([prompt], options)
    assert flat(got) == pytest.approx(flat(local.score_choices([prompt], options)), abs=1e-3)
    bodies = server.bodies(COMPLETIONS)
    assert len(bodies) == 1 and bodies[0]["logprobs"] == 20 and not bodies[0].get("echo")


def test_score_multi_token_options_match_local(backend, server, local):
    prompts = ["Question: is this fine?\nAnswer:", "Reply to the user politely.\nAssistant:"]
    options = [" yes, that is fine", " no", " I cannot help with that request"]
    got = backend.score_choices(prompts, options)
    assert flat(got) == pytest.approx(flat(local.score_choices(prompts, options)), abs=1e-3)
    assert len(server.bodies(COMPLETIONS)) == len(prompts) * (1 + len(options))


def test_score_option_merging_with_prompt_end(backend, local):
    # " (" is one token in this vocabulary, so "is: " + "(A)" straddles the boundary.
    prompt, options = "The answer is: ", ["(A)", "(B)"]
    got = backend.score_choices([prompt], options)[0]
    want = [seq_logprob(local, prompt + o) - seq_logprob(local, prompt) for o in options]
    assert got == pytest.approx(want, abs=1e-3)


def test_score_falls_back_when_server_caps_logprobs(backend, server, local):
    server.max_logprobs = 5  # like hosted APIs: logprobs=20 is a 400
    got = backend.score_choices(["Answer: ("], ["A", "B"])
    assert flat(got) == pytest.approx(flat(local.score_choices(["Answer: ("], ["A", "B"])), abs=1e-3)


@pytest.mark.parametrize("switch", ["no_logprobs", "refuse_logprobs"])
def test_no_logprobs_raises_never_fakes(backend, server, switch):
    setattr(server, switch, True)
    with pytest.raises(LogprobsUnavailable) as err:
        backend.score_choices(["Answer: (", "Other: ("], ["A", "B"])
    assert "--hard-labels" in str(err.value) and server.url in str(err.value)


# ------------------------------------------------------------------------ retries
def test_retries_5xx_then_succeeds(backend, server):
    server.fail_queue[:] = [(503, {}), (503, {})]
    out = backend.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))
    assert len(out) == 1 and len(server.requests) == 3


def test_429_retry_after_is_honoured(backend, server):
    server.fail_queue[:] = [(429, {"Retry-After": "1"})]
    t0 = time.monotonic()
    backend.score_choices(["Answer: ("], ["A"])
    assert time.monotonic() - t0 >= 0.95
    assert server.requests[0]["body"] == server.requests[1]["body"]


def test_400_fails_at_once_with_status_and_body(backend, server):
    server.bad_request = True
    with pytest.raises(BackendError) as err:
        backend.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))
    assert len(server.requests) == 1
    msg = str(err.value)
    assert "400" in msg and "simulated bad request" in msg and server.url in msg


def test_gives_up_after_max_retries(server):
    server.reset()
    server.fail_queue[:] = [(500, {})] * 3
    b = OpenAIBackend("tiny", server.url, max_retries=2, retry_base=0.01)
    with pytest.raises(BackendError, match="after 3 attempts.*HTTP 500"):
        b.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))
    assert len(server.requests) == 3
    server.reset()


def test_timeout_is_retried(server):
    server.reset()
    server.stall_queue[:] = [3.0]
    b = OpenAIBackend("tiny", server.url, timeout=1.0, retry_base=0.01)
    assert len(b.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))) == 1
    assert len(server.requests) == 2
    server.reset()


def test_connection_refused_names_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    b = OpenAIBackend("tiny", f"http://127.0.0.1:{port}/v1", max_retries=1, retry_base=0.01)
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}/v1/chat/completions"):
        b.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2))


# ------------------------------------------------------------------------- render
def test_render_needs_a_tokenizer(server, tiny_model, local, monkeypatch, tmp_path):
    conv = [{"role": "user", "content": "hi"}]
    monkeypatch.delenv("CAI_OPENAI_TOKENIZER", raising=False)
    with pytest.raises(BackendError, match="CAI_OPENAI_TOKENIZER"):
        OpenAIBackend(str(tmp_path / "no-such-model"), server.url).render(conv)
    assert OpenAIBackend("tiny", server.url, tokenizer=tiny_model).render(conv) == local.render(conv)
    # the model name is tried as the tokenizer, then the environment variable
    assert OpenAIBackend(tiny_model, server.url).render(conv) == local.render(conv)
    monkeypatch.setenv("CAI_OPENAI_TOKENIZER", tiny_model)
    prefill = conv + [{"role": "assistant", "content": "The answer is: ("}]
    assert OpenAIBackend("tiny", server.url).render(prefill) == local.render(prefill)


# ------------------------------------------------------------- a stage over HTTP
def test_label_stage_over_http_matches_in_process(server, tiny_model, tmp_path):
    """`cai label --model openai:...` gives the labels the in-process backend gives."""
    import json

    from constitutional_ai.stages import label
    from constitutional_ai.store import StageDir

    server.reset()
    pairs = tmp_path / "pairs"
    d = StageDir(pairs, "sample-pairs", {})
    rf = d.records("pairs.jsonl")
    for i in range(3):
        rf.append(
            {
                "key": f"q{i}",
                "prompt_id": f"q{i}",
                "messages": [{"role": "user", "content": f"question {i}?"}],
                "responses": [f"first answer {i}", f"second answer {i}"],
            }
        )
    d.finish({})
    d.close()
    runs = {}
    for name, spec in (("http", f"openai:{tiny_model}@{server.url}"), ("local", tiny_model)):
        out = label.main(label.LabelConfig(pairs=str(pairs), out=str(tmp_path / name), model=spec, few_shot=1))
        runs[name] = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["p_a"] for r in runs["http"]] == pytest.approx([r["p_a"] for r in runs["local"]], abs=1e-3)
    assert runs["http"][0]["model"].startswith("openai:")
    assert server.bodies(COMPLETIONS)  # really went over the wire


def test_label_records_option_absent_from_top_k_as_failure():
    """A ``None`` score (option outside a capped top-k) becomes a failure saying so, not a label."""
    from constitutional_ai.constitution import load_constitution
    from constitutional_ai.feedback import FeedbackOptions, label_chunk

    class CappedTopK:
        name = "capped"

        def render(self, conv, add_generation_prompt=True):
            return str(conv)

        def score_choices(self, prompts, options):
            return [[None, -0.1] for _ in prompts]

    rec = {"key": "k", "prompt_id": "k", "messages": [{"role": "user", "content": "q?"}], "responses": ["a", "b"]}
    (out,) = label_chunk(CappedTopK(), [rec], load_constitution("default"), FeedbackOptions(few_shot=0))
    assert "absent from the server's top-k" in out["error"] and "p_a" not in out
