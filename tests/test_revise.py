"""The SL-CAI critique → revision stage, on a scripted backend and on real models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from constitutional_ai.constitution import load_constitution
from constitutional_ai.prompts import TEXT_LABEL, clean_text
from constitutional_ai.stages import revise
from constitutional_ai.store import StoreError
from fakes import FakeBackend, install

TESTS = Path(__file__).resolve().parent


def write_prompts(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"How do I do bad thing number {i}?"}) + "\n")
    return path


@pytest.fixture(autouse=True)
def _mp(monkeypatch):
    global MONKEYPATCH
    MONKEYPATCH = monkeypatch


def run(tmp_path, backend, **kw):
    kw.setdefault("model", install(backend, MONKEYPATCH))
    kw.setdefault("prompts", str(write_prompts(tmp_path / "prompts.jsonl", kw.pop("n", 4))))
    kw.setdefault("out", str(tmp_path / "out"))
    cfg = revise.ReviseConfig(**kw)
    return Path(revise.main(cfg))


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]


def test_rounds_principles_and_provenance(tmp_path):
    fb = FakeBackend()
    out = run(tmp_path, fb, n=20, rounds=4, samples=2, batch_size=8)
    recs = records(out)
    c = load_constitution("default")
    ids = {p.id for p in c.critique_revision}
    assert len(recs) == 40 and len({r["key"] for r in recs}) == 40
    for r in recs:
        assert [x["round"] for x in r["rounds"]] == [1, 2, 3, 4]
        assert all(x["principle"] in ids for x in r["rounds"])
        assert r["model"] == "fake" and r["seed"] == 0 and r["initial_response"].startswith("reply-")
    draws = [[x["principle"] for x in r["rounds"]] for r in recs]
    # One draw per round, with replacement: some chains repeat a principle, many differ.
    assert any(len(set(d)) < len(d) for d in draws)
    assert len({p for d in draws for p in d}) >= 8
    # The two samples of a prompt are independent.
    assert recs[0]["initial_response"] != next(r for r in recs if r["key"] == "p0/s1")["initial_response"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["records"] == 40 and m["counts"]["sft_examples"] == 40
    assert sum(m["principle_counts"].values()) == 160


def test_each_round_critiques_the_previous_revision(tmp_path):
    fb = FakeBackend()
    out = run(tmp_path, fb, n=1, rounds=3, few_shot=1)
    rec = records(out)[0]
    c = load_constitution("default")
    # calls: initial, then (critique, revision) per round
    calls = [call[0] for call in fb.generate_calls]
    assert len(calls) == 7
    current = rec["initial_response"]
    for r, x in enumerate(rec["rounds"]):
        p = c.critique_principle(x["principle"])
        crit_conv, rev_conv = calls[1 + 2 * r], calls[2 + 2 * r]
        # each request turn carries the label the plain-text format shows it under (chat drops it)
        assert crit_conv[-1] == {"role": "user", "content": p.critique, TEXT_LABEL: "CritiqueRequest"}
        assert crit_conv[-2] == {"role": "assistant", "content": current}
        assert rev_conv[-1] == {"role": "user", "content": p.revision, TEXT_LABEL: "RevisionRequest"}
        assert rev_conv[-2] == {"role": "assistant", "content": x["critique"], TEXT_LABEL: "Critique"}
        # few-shot exemplar turns come first
        ex = c.revision_examples[0]
        assert crit_conv[0] == dict(ex.messages[0])
        current = x["revision"]


def test_no_critique_ablation(tmp_path):
    fb = FakeBackend()
    out = run(tmp_path, fb, n=2, rounds=2, no_critique=True)
    assert len(fb.generate_calls) == 3  # initial + one revision per round
    rec = records(out)[0]
    assert all(x["critique"] == "" for x in rec["rounds"])
    assert json.loads((out / "manifest.json").read_text())["config"]["no_critique"] is True


def test_sft_round_selection_and_datasets_loading(tmp_path):
    from datasets import load_dataset

    out = run(tmp_path, FakeBackend(), n=3, rounds=3, sft_rounds="all")
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and sorted({r["round"] for r in rows}) == [1, 2, 3]
    rec = records(out)[0]
    first = [r for r in rows if r["prompt_id"] == "p0" and r["round"] == 2][0]
    assert first["messages"][-1] == {"role": "assistant", "content": rec["rounds"][1]["revision"]}
    assert first["messages"][:-1] == rec["messages"]
    ds = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    assert len(ds) == 9 and ds[0]["messages"][-1]["role"] == "assistant"
    rds = load_dataset("json", data_files=str(out / "records.jsonl"), split="train")
    assert len(rds) == 3 and len(rds[0]["rounds"]) == 3
    # Re-deriving with another round choice needs no generation.
    fb = FakeBackend()
    run(tmp_path, fb, n=3, rounds=3, sft_rounds="2")
    assert fb.generate_calls == []
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["round"] for r in rows} == {2}


def test_resume_only_does_missing_work_and_refuses_changed_settings(tmp_path):
    out = run(tmp_path, FakeBackend(), n=5, limit=3, rounds=2)
    first = records(out)
    fb = FakeBackend()
    run(tmp_path, fb, n=5, rounds=2)  # no limit: two more prompts
    assert sum(len(call) for call in fb.generate_calls) == 2 * 5  # 2 chains x (1 + 2 rounds x 2)
    assert records(out)[:3] == first and len(records(out)) == 5
    with pytest.raises(StoreError, match=r"rounds: 2 -> 3"):
        run(tmp_path, FakeBackend(), n=5, rounds=3)


def test_prompt_longer_than_context_is_a_clear_error(tmp_path):
    fb = FakeBackend()
    fb.context_length = 250
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "word " * 100}) + "\n")
    with pytest.raises(ValueError) as e:
        run(tmp_path, fb, prompts=str(p), max_new_tokens=200)
    assert "long.jsonl:2" in str(e.value) and "'prompt'" in str(e.value) and "tokens" in str(e.value)
    assert not (tmp_path / "out" / "records.jsonl").exists() or (tmp_path / "out" / "records.jsonl").read_text() == ""


def test_cli_reports_bad_input_with_file_and_line(tmp_path, capsys):
    from constitutional_ai.cli import main

    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": "   "}\n')
    assert main(["revise", "--prompts", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "prompt" in err


@pytest.mark.parametrize(
    "raw, clean",
    [
        (
            "Here is the revised response: I can't help with that, but here's a safer idea.",
            "I can't help with that, but here's a safer idea.",
        ),
        ("Revision: Sure thing.\nHuman: now tell me more\nAssistant: ok", "Sure thing."),
        ("Assistant: Fine answer.<|im_start|>user\nhi", "Fine answer."),
        ('"Quoted whole answer."', "Quoted whole answer."),
        ("Sure! Here's a rewritten version of the response:\n\nBe kind.", "Be kind."),
        ("Good answer.\n\nCritiqueRequest: blah", "Good answer."),
        ("User: role confusion from the start", ""),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from constitutional_ai.stages import revise
from fakes import FakeBackend, install
spec = install(FakeBackend(delay={delay}))
revise.main(revise.ReviseConfig(prompts={prompts!r}, model=spec, out={out!r}, rounds=2, batch_size=2, samples=2))
"""


def test_kill_9_then_rerun_equals_uninterrupted(tmp_path):
    prompts = str(write_prompts(tmp_path / "prompts.jsonl", 6))
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}

    def script(out, delay):
        return [sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS), delay=delay, prompts=prompts, out=out)]

    subprocess.run(script(str(tmp_path / "ref"), 0), check=True, env=env, capture_output=True)
    victim = tmp_path / "victim"
    proc = subprocess.Popen(script(str(victim), 0.15), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        f = victim / "records.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = (victim / "records.jsonl").read_text().splitlines()
    assert 3 <= len(partial) < 12 and not (victim / "manifest.json").exists()
    subprocess.run(script(str(victim), 0), check=True, env=env, capture_output=True)
    ref = sorted((tmp_path / "ref" / "records.jsonl").read_text().splitlines())
    got = sorted((victim / "records.jsonl").read_text().splitlines())
    assert got == ref and len(got) == 12
    assert (victim / "sft.jsonl").read_text() == (tmp_path / "ref" / "sft.jsonl").read_text()


def test_real_tiny_model_is_batch_invariant_and_resumable(tmp_path, tiny_model):
    """Records depend on seeds, not on which prompts shared a batch."""
    from constitutional_ai.models.local import LocalBackend

    backend = LocalBackend(tiny_model, batch_size=8)
    out_a = run(tmp_path, backend, n=5, rounds=1, max_new_tokens=12, out=str(tmp_path / "a"), batch_size=8)
    backend.batch_size = 2
    run(tmp_path, backend, n=5, limit=2, rounds=1, max_new_tokens=12, out=str(tmp_path / "b"), batch_size=2)
    out_b = run(tmp_path, backend, n=5, rounds=1, max_new_tokens=12, out=str(tmp_path / "b"), batch_size=2)
    a = {r["key"]: r for r in records(out_a)}
    b = {r["key"]: r for r in records(out_b)}
    assert a == b and len(a) == 5


@pytest.mark.slow
def test_embedded_model_end_to_end_cli(tmp_path):
    """`cai revise --limit 2 --rounds 2` on the real embedded model, as a user runs it."""
    from datasets import load_dataset

    out = tmp_path / "rev"
    cmd = [
        sys.executable,
        "-m",
        "constitutional_ai.cli",
        "revise",
        "--limit",
        "2",
        "--rounds",
        "2",
        "--max-new-tokens",
        "48",
        "--few-shot",
        "1",
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert len(recs) == 2 and all(len(x["rounds"]) == 2 for x in recs)
    assert recs[0]["model"] == "SmolLM2-135M-Instruct"
    assert all(bool(x["revision"].strip()) != x["empty_revision"] for rec in recs for x in rec["rounds"])
    assert all(isinstance(x["truncated"], bool) for rec in recs for x in rec["rounds"])
    ds = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    assert len(ds) == 2 - sum(rec["rounds"][-1]["empty_revision"] for rec in recs)
    assert "revise" in r.stderr  # progress bar


class Scripted(FakeBackend):
    """Answers the calls of one chain in order with (text, finish reason) pairs."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)

    def generate(self, conversations, sampling, seeds=None):
        from constitutional_ai.models.base import Generation

        self.generate_calls.append([list(c) for c in conversations])
        return [Generation(*self.script.pop(0)) for _ in conversations]


def test_truncated_empty_and_unchanged_revisions_are_flagged(tmp_path):
    fb = Scripted(
        [
            ("First answer.", "stop"),
            ("Critique one.", "stop"),
            ("", "stop"),  # round 1: empty revision
            ("Critique two.", "length"),
            ("Second answer, cut", "length"),  # round 2: truncated
            ("Critique three.", "stop"),
            ("Second answer, cut", "stop"),
        ]
    )  # round 3: unchanged
    out = run(tmp_path, fb, n=1, rounds=3, sft_rounds="all")
    (rec,) = records(out)
    assert rec["initial_truncated"] is False
    r1, r2, r3 = rec["rounds"]
    # The empty revision is not stored under round 1's name as the previous response.
    assert (r1["revision"], r1["empty_revision"], r1["unchanged"], r1["current"]) == ("", True, False, "First answer.")
    assert (r2["truncated"], r2["critique_truncated"], r2["empty_revision"]) == (True, True, False)
    assert (r3["unchanged"], r3["truncated"], r3["revision"]) == (True, False, "Second answer, cut")
    # Round 2 revised the response round 1 left (the initial one), not an empty text.
    rev2_conv = fb.generate_calls[4][0]
    assert {"role": "assistant", "content": "First answer."} in rev2_conv
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert [(r["round"], r["truncated"], r["unchanged"]) for r in rows] == [(2, True, False), (3, False, True)]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["empty_revisions"], counts["truncated_revisions"], counts["unchanged_revisions"]) == (1, 1, 1)
    assert counts["sft_empty_skipped"] == 1 and counts["sft_examples"] == 2


def test_local_backend_reports_why_generation_stopped(tiny_model):
    from constitutional_ai.models import Sampling, load_backend

    backend = load_backend(tiny_model)
    convs = [[{"role": "user", "content": f"Tell me a long story {i}."}] for i in range(3)]
    texts = backend.generate(convs, Sampling(temperature=1.0, max_new_tokens=3), seeds=[1, 2, 3])
    for t in texts:
        # A random tiny model almost never ends its turn within 3 tokens; if it did, the text is shorter.
        assert t.finish_reason in ("stop", "length") and t.truncated == (t.finish_reason == "length")
        assert isinstance(t, str)
    assert any(t.finish_reason == "length" for t in texts)
