"""OpenAIBackend and the stages against a real llama.cpp server (xllamacpp) serving the
embedded GGUF: generation, log-probabilities, prompts, the request cache and a killed server.

One server is shared by the whole session (see ``llamacpp_fixture.py``); sizes are tiny.
The faults a real server will not produce on demand (429 storms, 5xx, stalls) are tested
against the home-made server in ``test_openai_backend.py``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from constitutional_ai.models import PromptTooLong, Sampling, load_backend
from constitutional_ai.models.openai import OpenAIBackend
from llamacpp_fixture import CountingProxy, llama_server  # noqa: F401 (fixture)

SECRET = "sk-test-do-not-leak-81f3"


@pytest.fixture(scope="module")
def proxy(llama_server):  # noqa: F811
    p = CountingProxy(llama_server.address)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, proxy):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAI_REQUEST_CACHE", "off")  # tests that want a cache name a file
    monkeypatch.delenv("CAI_OPENAI_TOKENIZER", raising=False)
    proxy.reset()


@pytest.fixture(scope="module")
def local():
    from constitutional_ai.models.local import LocalBackend

    return LocalBackend(None, device="cpu")


def spec(proxy: CountingProxy) -> str:
    # A name unrelated to the embedded model: the chat template must come from the server.
    return f"openai:served-model@{proxy.url}"


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def label_prompts(n: int) -> tuple[list[list[dict]], list[str]]:
    """Feedback conversations of the label stage (one exemplar) for the first n comparisons."""
    from importlib.resources import files

    from constitutional_ai.constitution import load_constitution
    from constitutional_ai.feedback import FeedbackOptions, scoring_units
    from constitutional_ai.prompts import feedback_messages

    text = files("constitutional_ai").joinpath("data/helpful_comparisons.jsonl").read_text()
    rows = [json.loads(x) for x in text.splitlines()][:n]
    c, cfg = load_constitution("default"), FeedbackOptions(few_shot=1, debias=False)
    convs = []
    for r in rows:
        rec = {
            "key": r["id"],
            "messages": r["prompt"],
            "responses": [r["chosen"][0]["content"], r["rejected"][0]["content"]],
        }
        for u in scoring_units(rec, c, cfg):
            convs.append(feedback_messages(u["question"], u["exemplars"]))
    return convs, [str(x) for x in range(len(convs))]


# ------------------------------------------------------------------ generation
def test_seeded_generation_is_reproducible(proxy):
    b = load_backend(spec(proxy), concurrency=4, cache=False)
    convs = [[{"role": "user", "content": f"Name a colour and a number, #{i}."}] for i in range(4)]
    s = Sampling(temperature=1.0, max_new_tokens=12)
    first = b.generate(convs, s, seeds=[1, 2, 3, 4])
    assert first == b.generate(convs, s, seeds=[1, 2, 3, 4])  # same seeds, concurrent: same texts
    assert all(first) and first != b.generate(convs, s, seeds=[5, 6, 7, 8])
    assert proxy.count("/v1/chat/completions") == 12


def test_prefilled_turn_is_continued_not_repeated(proxy):
    """The hard-label bug: llama.cpp echoes the prefill, so the letter was never first."""
    b = load_backend(spec(proxy), cache=False)
    convs, _ = label_prompts(2)
    letters = b.generate(convs, Sampling(temperature=0.0, max_new_tokens=2), seeds=[0] * len(convs))
    assert all(t[:1] in ("A", "B") for t in letters), letters
    assert b.info()["prefill_echo"] is True


# --------------------------------------------------------------------- scoring
def test_render_needs_no_tokenizer_hunt(proxy, local):
    b = load_backend(spec(proxy), cache=False)
    convs, _ = label_prompts(1)
    assert b.render(convs[0]) == local.render(convs[0])
    assert b.info()["tokenizer_source"].startswith("embedded model")
    # Named like the embedded model: its tokenizer is used without asking the server.
    named = load_backend(f"openai:SmolLM2-135M-Instruct@{proxy.url}", cache=False)
    proxy.reset()
    assert named.render(convs[0]) == local.render(convs[0]) and proxy.count() == 0


def test_score_choices_agrees_with_local(proxy, local):
    """llama.cpp runs the Q4_1 file, transformers the dequantised fp32 weights of the same file.

    Measured on 24 label prompts (2026-12-01): max |P(A) difference| 0.041, mean 0.014, max
    |log-prob difference| 0.17, same verdict on all 24. The bound 0.08 is twice the measured
    maximum: the gap comes from llama.cpp's quantised matmuls (activations re-quantised to
    8 bits), not from a different prompt (the rendered strings are asserted equal).
    """
    from constitutional_ai.feedback import normalise

    b = load_backend(spec(proxy), cache=False)
    convs, _ = label_prompts(4)
    prompts = [b.render(c) for c in convs]
    assert prompts == [local.render(c) for c in convs]
    http, mine = b.score_choices(prompts, ["A", "B"]), local.score_choices(prompts, ["A", "B"])
    assert proxy.count("/v1/completions") == len(prompts)  # both letters in one top-k reply
    pa, pb = [normalise(*x) for x in http], [normalise(*y) for y in mine]
    assert max(abs(x - y) for x, y in zip(pa, pb)) < 0.08
    assert sum((x > 0.5) == (y > 0.5) for x, y in zip(pa, pb)) >= len(pa) - 1
    info = b.info()
    assert info["logprob_shape"] == "content" and info["base_url"] == proxy.url


def test_chat_shape_when_completions_is_missing(proxy):
    """Like a hosted chat API: no /completions; the prefilled turn is continued by the chat endpoint."""
    convs, _ = label_prompts(2)
    content = load_backend(spec(proxy), cache=False)
    want = content.score_choices([content.render(c) for c in convs], ["A", "B"])
    proxy.blocked = {"/v1/completions"}
    chat = load_backend(spec(proxy), cache=False)
    got = chat.score_choices([chat.render(c) for c in convs], ["A", "B"])
    assert chat.info()["logprob_shape"] == "chat" and proxy.count("/v1/chat/completions") == 2
    # Same tokens scored; only llama.cpp's prompt-cache state differs (see the killed-server
    # test): measured up to 0.13 nats on 2026-12-01 and 0.16 in one run on 2026-12-02.
    assert [x for r in got for x in r] == pytest.approx([x for r in want for x in r], abs=0.25)
    with pytest.raises(Exception, match="rendered by this backend"):
        chat.score_choices(["a prompt this backend never rendered ("], ["A"])


def test_multi_token_options_scored_token_by_token(proxy, local):
    b = load_backend(spec(proxy), cache=False)
    prompt = local.render([{"role": "user", "content": "Is the sky blue? Answer yes or no."}])
    options = ["Yes, it is", "No"]
    got, want = b.score_choices([prompt], options)[0], local.score_choices([prompt], options)[0]
    # Up to 3 tokens each, with the same per-token gap as above (0.17): 0.6 bounds the sum.
    assert got == pytest.approx(want, abs=0.6)
    assert got[0] is not None and got[0] < 0 and got[1] is not None


def test_option_absent_from_top_k_gets_no_value(proxy):
    b = load_backend(spec(proxy), cache=False, top_k=2)
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    # Rare script characters, far outside even the top 1000 after this prompt: no value, never
    # a guess; an option that is in the top-k still gets its value in the same call.
    got = b.score_choices([prompt], ["\ua66e\ua66e\ua66e", "Hello"])[0]
    assert got[0] is None and got[1] is not None and got[1] < 0


def test_over_long_prompt_is_prompt_too_long(proxy):
    from llamacpp_fixture import SLOT_CTX

    b = load_backend(spec(proxy), cache=False)
    long = "word " * (SLOT_CTX + 100)
    with pytest.raises(PromptTooLong) as err:
        b.score_choices(["short prompt (", long], ["A"])
    assert err.value.index == 1 and err.value.limit == SLOT_CTX and err.value.n_tokens > SLOT_CTX
    conv = [
        {"role": "user", "content": long},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Say hi."},
    ]
    with pytest.raises(PromptTooLong):
        b.generate([conv], Sampling(max_new_tokens=4))
    left = load_backend(spec(proxy), cache=False, truncation="left")
    assert left.generate([conv], Sampling(max_new_tokens=4), seeds=[0])[0]


# ---------------------------------------------------------------- stages, cache
def test_stages_end_to_end_over_http(proxy, tmp_path, monkeypatch):
    from constitutional_ai.stages import eval_hhh, eval_refusal, label, revise, sample_pairs

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "requests.sqlite"
    monkeypatch.setenv("CAI_REQUEST_CACHE", str(cache))
    m = spec(proxy)

    out = revise.main(
        revise.ReviseConfig(out=str(tmp_path / "rev"), model=m, limit=1, rounds=1, max_new_tokens=12, few_shot=1)
    )
    (rec,) = read(out / "records.jsonl")
    assert rec["rounds"] and all(r.get("revision") is not None for r in rec["rounds"])

    def pairs_run(name: str) -> list[dict]:
        o = sample_pairs.main(
            sample_pairs.SamplePairsConfig(out=str(tmp_path / name), model=m, limit=2, max_new_tokens=12)
        )
        return read(o / "pairs.jsonl")

    pairs = pairs_run("pairs")
    assert len(pairs) == 2 and all(len(p["responses"]) == 2 and all(p["responses"]) for p in pairs)

    def label_run(name: str, hard: bool) -> list[dict]:
        o = label.main(
            label.LabelConfig(
                pairs=str(tmp_path / "pairs"), out=str(tmp_path / name), model=m, few_shot=1, hard_labels=hard
            )
        )
        return read(o / "labels.jsonl")

    soft, hard = label_run("soft", False), label_run("hard", True)
    assert len(soft) == 2 and all(0 < r["p_a"] < 1 and not r["hard"] for r in soft)
    assert len(hard) == 2 and all(r["p_a"] in (0.0, 0.5, 1.0) and r["hard"] for r in hard)

    ref = eval_refusal.main(
        eval_refusal.RefusalConfig(model=m, out=str(tmp_path / "refusal"), limit=2, max_new_tokens=12)
    )
    assert len(read(ref / "samples.jsonl")) == 4  # --limit 2 benign look-alikes + 2 harmful prompts
    hhh = eval_hhh.main(eval_hhh.HHHConfig(model=m, out=str(tmp_path / "hhh"), limit=2, few_shot=1))
    samples = read(hhh / "samples.jsonl")
    assert len(samples) == 2 and all(s["model"] == m for s in samples)

    # The same commands into fresh folders: every answer comes from the cache, nothing is sent.
    before = proxy.count()
    assert pairs_run("pairs2") == pairs
    assert [r["p_a"] for r in label_run("soft2", False)] == [r["p_a"] for r in soft]
    assert proxy.count() == before

    # The API key was sent (llama.cpp ignores it) but is written nowhere.
    assert SECRET.encode() not in cache.read_bytes()
    with sqlite3.connect(cache) as db:
        assert SECRET not in json.dumps(db.execute("SELECT * FROM responses").fetchall())
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl"):
            assert SECRET not in f.read_text(), f
    assert SECRET not in json.dumps(load_backend(m).info())


def test_unseeded_sampling_is_not_cached(proxy, tmp_path):
    b = OpenAIBackend("m", proxy.url, cache=tmp_path / "c.sqlite")
    body = {"model": "m", "prompt": "Hello", "max_tokens": 2, "temperature": 1.0}
    b._post("/completions", body)
    b._post("/completions", body)
    b._post("/completions", {**body, "seed": 3})
    b._post("/completions", {**body, "seed": 3})
    assert proxy.count("/v1/completions") == 3


def test_killed_server_rerun_completes_like_an_uninterrupted_run(
    proxy,
    llama_server,  # noqa: F811 (the fixture)
    tmp_path,
    monkeypatch,
):
    """Kill llama.cpp mid-run: the stage stops; after a restart the same command finishes, and
    its labels equal an uninterrupted run's, none lost or duplicated, answered requests not re-sent."""
    from constitutional_ai.stages import label
    from constitutional_ai.store import StageDir

    pairs = tmp_path / "pairs"
    d = StageDir(pairs, "sample-pairs", {})
    rf = d.records("pairs.jsonl")
    for i in range(4):
        rf.append(
            {
                "key": f"q{i}",
                "prompt_id": f"q{i}",
                "messages": [{"role": "user", "content": f"Question {i}?"}],
                "responses": [f"A short answer {i}.", f"I will not answer question {i}."],
            }
        )
    d.finish({})
    d.close()
    m = spec(proxy)

    def run(name: str, cache: str) -> Path:
        monkeypatch.setenv("CAI_REQUEST_CACHE", cache)
        return label.main(
            label.LabelConfig(
                pairs=str(pairs), out=str(tmp_path / name), model=m, few_shot=1, debias=False, batch_size=1
            )
        )  # one pair per chunk

    want = {r["key"]: r for r in read(run("ref", "off") / "labels.jsonl")}
    assert len(want) == 4

    # Fail fast while the server is down instead of retrying for minutes.
    monkeypatch.setitem(OpenAIBackend.__init__.__kwdefaults__, "retry_budget", 0.5)
    monkeypatch.setitem(OpenAIBackend.__init__.__kwdefaults__, "retry_base", 0.1)
    cache = str(tmp_path / "requests.sqlite")
    proxy.reset()
    proxy.on_request = lambda n: llama_server.kill() if n == 4 else None  # at the 3rd pair
    with pytest.raises(Exception, match="failed after"):
        run("crash", cache)
    done_before = read(tmp_path / "crash" / "labels.jsonl")
    assert 0 < len(done_before) < 4
    answered = len(sqlite3.connect(cache).execute("SELECT key FROM responses").fetchall())
    proxy.on_request = None
    llama_server.start()
    proxy.reset()
    got = read(run("crash", cache) / "labels.jsonl")
    assert sorted(r["key"] for r in got) == sorted(want)  # nothing lost, nothing twice
    kept = {r["key"]: r for r in done_before}
    for r in got:
        if r["key"] in kept:  # written before the crash: kept exactly as it was
            assert r == kept[r["key"]]
        # llama.cpp's log-probs depend on its prompt-cache state: a prompt whose prefix was
        # reused from a slot's cache differs from a cold prefill by up to 0.13 nats (measured
        # on label prompts, 2026-12-01), i.e. up to ~0.03 in P(A). A restarted server starts
        # cold, so labels after the restart match the uninterrupted run within that bound.
        assert r["p_a"] == pytest.approx(want[r["key"]]["p_a"], abs=0.05)
        assert [s["order"] for s in r["scores"]] == [s["order"] for s in want[r["key"]]["scores"]]
    # Only what was never answered went out again: fewer requests than the full run needed.
    total = len(sqlite3.connect(cache).execute("SELECT key FROM responses").fetchall())
    assert proxy.count() == total - answered
    assert not math.isnan(sum(r["p_a"] for r in got))


# ---------------------------------------------------------------- the whole pipeline
def test_cai_run_with_served_generating_and_feedback_models(proxy, tiny_model, tmp_path, monkeypatch):
    """`cai run` where the starting model generates through llama.cpp (model_server) and the
    feedback model is served too; the training stages finetune the weights named by `model`."""
    import yaml

    from constitutional_ai.pipeline import run
    from test_pipeline import tiny_recipe

    monkeypatch.setenv("CAI_REQUEST_CACHE", str(tmp_path / "requests.sqlite"))
    path = tiny_recipe(tmp_path, tiny_model)
    recipe = yaml.safe_load(path.read_text())
    recipe.update(model_server=spec(proxy), feedback_model=spec(proxy), pm_model=tiny_model)
    path.write_text(yaml.safe_dump(recipe))
    report = run(path)
    root = tmp_path / "run"
    assert all(r["model"].startswith("openai:") for r in read(root / "revise" / "records.jsonl"))
    labels = read(root / "label" / "labels.jsonl")
    assert labels and all(r["model"].startswith("openai:") and 0 < r["p_a"] < 1 for r in labels)
    sft = json.loads((root / "train-sft" / "manifest.json").read_text())
    assert sft["inputs"]["model"] == tiny_model  # the weights, not the endpoint, were finetuned
    cmp = json.loads((root / "eval-compare" / "manifest.json").read_text())
    assert cmp["config"]["models"][0] == spec(proxy) and cmp["config"]["judge"] == spec(proxy)
    assert report.exists() and proxy.count() > 0
