"""sample-pairs and label: soft labels, both-order debiasing, CoT clamping, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from constitutional_ai import feedback
from constitutional_ai.models import BackendError
from constitutional_ai.stages import label, sample_pairs
from constitutional_ai.store import StageDir, StoreError
from fakes import FakeBackend, install

TESTS = Path(__file__).resolve().parent
L = math.log


def make_pairs(folder: Path, pairs: list[tuple[str, str]]) -> Path:
    if folder.exists():
        return folder
    d = StageDir(folder, "sample-pairs", {})
    rf = d.records("pairs.jsonl")
    for i, (a, b) in enumerate(pairs):
        rf.append(
            {
                "key": f"q{i}",
                "prompt_id": f"q{i}",
                "messages": [{"role": "user", "content": f"question {i}?"}],
                "responses": [a, b],
            }
        )
    d.finish({})
    d.close()
    return folder


def run_label(tmp_path, monkeypatch, backend, pairs=None, **kw):
    kw.setdefault("model", install(backend, monkeypatch))
    folder = make_pairs(tmp_path / "pairs", pairs or [("alpha", "beta")])
    cfg = label.LabelConfig(pairs=str(folder), out=str(tmp_path / kw.pop("out", "labels")), **kw)
    out = label.main(cfg)
    recs = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    prefs = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    return out, recs, prefs


def test_normalise_and_clamp():
    assert feedback.normalise(L(0.3), L(0.1)) == pytest.approx(0.75)
    assert feedback.normalise(-1000.0, -1000.0) == pytest.approx(0.5)
    assert (
        feedback.clamp(0.9, 0.4, 0.6) == 0.6
        and feedback.clamp(0.1, 0.4, 0.6) == 0.4
        and feedback.clamp(0.5, 0.4, 0.6) == 0.5
    )


# A labeller biased to slot A: prefers "alpha" when it is in slot A (0.8) and still picks A
# (0.6) when "beta" is there.
BIASED = {"(A) alpha": [L(0.8), L(0.2)], "(A) beta": [L(0.6), L(0.4)]}


def test_both_orders_averaged_and_bias_measured(tmp_path, monkeypatch):
    out, recs, prefs = run_label(tmp_path, monkeypatch, FakeBackend(choice_logprobs=BIASED))
    (r,) = recs
    by_order = {s["order"]: s for s in r["scores"]}
    assert by_order["AB"]["p_first"] == pytest.approx(0.8) and by_order["AB"]["p_a"] == pytest.approx(0.8)
    assert by_order["BA"]["p_first"] == pytest.approx(0.6) and by_order["BA"]["p_a"] == pytest.approx(0.4)
    assert by_order["AB"]["logprobs"] == pytest.approx([L(0.8), L(0.2)])
    assert r["p_a"] == pytest.approx(0.6)  # (0.8 + (1 - 0.6)) / 2
    (p,) = prefs
    assert p["chosen"] == [{"role": "assistant", "content": "alpha"}] and p["p_chosen"] == pytest.approx(0.6)
    assert p["rejected"][0]["content"] == "beta" and p["prompt"] == r["messages"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["slot_following_rate"] == 1.0 and stats["first_slot_rate"] == 1.0
    assert stats["mean_confidence_single_order"] == pytest.approx(0.3) and stats["mean_confidence"] == pytest.approx(
        0.1
    )


def test_single_order_without_debias(tmp_path, monkeypatch):
    out, recs, prefs = run_label(tmp_path, monkeypatch, FakeBackend(choice_logprobs=BIASED), debias=False)
    assert [s["order"] for s in recs[0]["scores"]] == ["AB"] and recs[0]["p_a"] == pytest.approx(0.8)
    assert json.loads((out / "stats.json").read_text())["slot_following_rate"] is None


def test_prompt_format_and_independent_exemplar_draws(tmp_path, monkeypatch):
    fb = FakeBackend(choice_logprobs=BIASED)
    _, recs, _ = run_label(tmp_path, monkeypatch, fb, pairs=[("alpha", "beta")] * 30, principles=3, exemplar_pool=0)
    from constitutional_ai.constitution import load_constitution

    c = load_constitution()
    prompts = [p for call in fb.score_calls for p in call]
    assert len(prompts) == 30 * 3 * 2
    q = prompts[0]
    assert "Consider the following conversation between a human and an assistant:" in q
    assert q.endswith("The answer is: (") and "Options:\n(A) " in q
    for r in recs:
        assert len(r["scores"]) == 6 and len({s["principle"] for s in r["scores"]}) >= 1
        for s in r["scores"]:
            assert c.feedback_principle(s["principle"]).text
            assert len(s["exemplar_principles"]) == sum(not e.cot_only for e in c.feedback_examples)
    mains = [s["principle"] for r in recs for s in r["scores"]]
    shots = [x for r in recs for s in r["scores"] for x in s["exemplar_principles"]]
    assert len(set(mains)) >= 10 and len(set(shots)) >= 10
    # exemplars are drawn independently of the main principle
    assert any(s["principle"] not in s["exemplar_principles"] for r in recs for s in r["scores"])


def test_cot_reasoning_scored_and_clamped(tmp_path, monkeypatch):
    fb = FakeBackend(replies={}, choice_logprobs={"(A) alpha": [L(0.95), L(0.05)], "(A) beta": [L(0.05), L(0.95)]})
    _, recs, prefs = run_label(tmp_path, monkeypatch, fb, cot=True, cot_samples=2)
    r = recs[0]
    assert len(r["scores"]) == 4 and all(s["reasoning"].startswith("reply-") for s in r["scores"])
    assert r["p_a_unclamped"] == pytest.approx(0.95) and r["p_a"] == pytest.approx(0.6)
    assert prefs[0]["p_chosen"] == pytest.approx(0.6)
    # the reasoning generation was prefilled with "Let's think step by step:" and the score
    # came after the model's reasoning
    gen_conv = fb.generate_calls[0][0]
    assert gen_conv[-1] == {"role": "assistant", "content": "Let's think step by step:"}
    scored = [p for call in fb.score_calls for p in call]
    assert all("So the answer is: (" in p and "reply-" in p for p in scored)


def test_no_logprobs_stops_with_clear_error_and_hard_labels_are_marked(tmp_path, monkeypatch):
    with pytest.raises(BackendError, match="--hard-labels"):
        run_label(tmp_path, monkeypatch, FakeBackend(logprobs=False))
    fb = FakeBackend(logprobs=False, replies={"The answer is: (": "A)"})
    _, recs, prefs = run_label(tmp_path, monkeypatch, fb, hard_labels=True, out="hard")
    # A in both orders: a real labeller contradicting itself averages to 0.5
    assert recs[0]["hard"] is True and recs[0]["p_a"] == pytest.approx(0.5) and prefs[0]["hard"] is True


def test_refuses_unfinished_pairs_folder(tmp_path):
    (tmp_path / "pairs").mkdir()
    with pytest.raises(StoreError, match="manifest"):
        label.main(label.LabelConfig(pairs=str(tmp_path / "pairs"), out=str(tmp_path / "o")))


def test_sample_pairs_two_independent_responses(tmp_path, monkeypatch):
    fb = FakeBackend()
    spec = install(fb, monkeypatch)
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"q{i}"}) + "\n" for i in range(5)))
    out = sample_pairs.main(
        sample_pairs.SamplePairsConfig(prompts=str(p), model=spec, out=str(tmp_path / "pairs"), batch_size=4)
    )
    recs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(recs) == 5
    for r in recs:
        a, b = r["responses"]
        assert a != b and r["seeds"][0] != r["seeds"][1] and r["temperature"] == 1.0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["pairs"] == 5 and m["stage"] == "sample-pairs"


KILL = """
import sys
sys.path.insert(0, {tests!r})
from constitutional_ai.stages import label, sample_pairs
from fakes import FakeBackend, install
spec = install(FakeBackend(delay={delay}))
sample_pairs.main(sample_pairs.SamplePairsConfig(prompts={prompts!r}, model=spec, out={out!r} + "/pairs", batch_size=2))
label.main(label.LabelConfig(pairs={out!r} + "/pairs", model=spec, out={out!r} + "/labels", batch_size=4))
"""


@pytest.mark.parametrize("victim_stage", ["pairs", "labels"])
def test_kill_9_then_rerun_equals_uninterrupted(tmp_path, victim_stage):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"q{i}"}) + "\n" for i in range(8)))
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}

    def cmd(out, delay):
        return [sys.executable, "-c", KILL.format(tests=str(TESTS), delay=delay, prompts=str(prompts), out=str(out))]

    subprocess.run(cmd(tmp_path / "ref", 0), check=True, env=env, capture_output=True)
    v = tmp_path / "victim"
    proc = subprocess.Popen(cmd(v, 0.2), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = v / victim_stage / ("pairs.jsonl" if victim_stage == "pairs" else "labels.jsonl")
    deadline = time.time() + 60
    while time.time() < deadline and not (target.exists() and len(target.read_text().splitlines()) >= 2):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (v / victim_stage / "manifest.json").exists()
    subprocess.run(cmd(v, 0), check=True, env=env, capture_output=True)
    for sub, name in (("pairs", "pairs.jsonl"), ("labels", "labels.jsonl"), ("labels", "preferences.jsonl")):
        ref = sorted((tmp_path / "ref" / sub / name).read_text().splitlines())
        got = sorted((v / sub / name).read_text().splitlines())
        assert got == ref and len(got) == 8


def test_cot_clamps_each_label_before_averaging(tmp_path, monkeypatch):
    # AB order: P(alpha) = 0.9 -> clamped 0.6; BA order: P(alpha) = 1 - 0.55 = 0.45 (inside the band).
    fb = FakeBackend(replies={}, choice_logprobs={"(A) alpha": [L(0.9), L(0.1)], "(A) beta": [L(0.55), L(0.45)]})
    _, recs, _ = run_label(tmp_path, monkeypatch, fb, cot=True)
    (r,) = recs
    by_order = {s["order"]: s for s in r["scores"]}
    assert by_order["AB"]["p_a"] == pytest.approx(0.9) and by_order["AB"]["p_a_clamped"] == pytest.approx(0.6)
    assert by_order["BA"]["p_a"] == pytest.approx(0.45) and by_order["BA"]["p_a_clamped"] == pytest.approx(0.45)
    assert r["p_a"] == pytest.approx(0.525)  # not clamp(0.675) = 0.6
    assert r["p_a_unclamped"] == pytest.approx(0.675)


class TooLongFor(FakeBackend):
    """Refuses any scoring batch holding a prompt that contains ``needle`` (as a backend whose
    context the prompt does not fit)."""

    def __init__(self, needle: str, **kw):
        super().__init__(**kw)
        self.needle = needle

    def score_choices(self, prompts, options):
        from constitutional_ai.models import PromptTooLong

        for i, p in enumerate(prompts):
            if self.needle and self.needle in p:
                raise PromptTooLong(i, 9999, 100)
        return super().score_choices(prompts, options)


def test_pair_too_long_is_a_failure_and_rerun_retries_it(tmp_path, monkeypatch):
    pairs = [("alpha", "beta"), ("gamma-HUGE", "delta"), ("alpha", "beta")]
    fb = TooLongFor("HUGE", choice_logprobs=BIASED)
    out, recs, prefs = run_label(tmp_path, monkeypatch, fb, pairs=pairs)
    assert [r["key"] for r in recs] == ["q0", "q2"] and len(prefs) == 2
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["key"], f["kind"], f["attempt"]) for f in fails] == [("q1", "too-long", 1)]
    assert "9999 tokens" in fails[0]["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"pairs": 3, "labels": 2, "failed": 1}
    # A rerun retries only the failed pair (here with a backend it now fits).
    fb.needle, fb.score_calls = "", []
    out, recs, prefs = run_label(tmp_path, monkeypatch, fb, pairs=pairs)
    assert sorted(r["key"] for r in recs) == ["q0", "q1", "q2"]
    assert fb.score_calls and all("question 1?" in p for call in fb.score_calls for p in call)
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 0


def test_manifest_records_the_backends_the_stage_loaded(tmp_path, monkeypatch):
    class Described(FakeBackend):
        def info(self):
            return {"name": "fake", "kind": "fake", "logprob_shape": "scripted"}

    out, _, _ = run_label(tmp_path, monkeypatch, Described(choice_logprobs=BIASED))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backends"] == [{"name": "fake", "kind": "fake", "logprob_shape": "scripted"}]
