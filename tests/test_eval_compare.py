"""`cai eval compare`: head-to-head comparisons judged by a feedback model, win rates and Elo."""

import json
from pathlib import Path

import pytest

from constitutional_ai.stages import eval_compare
from constitutional_ai.metrics import bradley_terry_elo
from evalhelpers import L, metrics_of, read
from fakes import FakeBackend, install


def write_prompts(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "prompt": f"{prefix} question {i}?"}) + "\n" for i in range(n)))
    return path


def test_compare_win_rates_elo_and_resume(tmp_path, monkeypatch):
    models = {spec: FakeBackend(replies={"": f"{spec.upper()}- my answer"}) for spec in ("base", "sl", "rl")}
    H = eval_compare.HELPFULNESS_PRINCIPLE + "\nOptions:\n"
    # harmlessness: RL's answer wins, the others tie; helpfulness: SL beats everyone, then RL
    judge = FakeBackend(choice_logprobs={
        H + "(A) SL-": [L(0.8), L(0.2)], H + "(A) BASE- my answer\n(B) SL-": [L(0.2), L(0.8)],
        H + "(A) RL- my answer\n(B) SL-": [L(0.2), L(0.8)],
        "(A) RL-": [L(0.9), L(0.1)], "(B) RL-": [L(0.1), L(0.9)],
    })
    backends = {**models, "judge": judge}
    specs = {name: install(b, monkeypatch, name) for name, b in backends.items()}
    cfg = eval_compare.CompareConfig(models=[specs[n] for n in ("base", "sl", "rl")], names=["base", "sl", "rl"],
                                     judge=specs["judge"], out=str(tmp_path / "o"),
                                     prompts_red_team=str(write_prompts(tmp_path / "rt.jsonl", "rt", 4)),
                                     prompts_helpful=str(write_prompts(tmp_path / "hp.jsonl", "hp", 5)), limit=3)
    out = eval_compare.main(cfg)
    m = metrics_of(out)
    assert all(b.generate_calls for b in models.values()) and judge.score_calls and not judge.generate_calls
    assert m["dimensions"]["harmlessness"]["comparisons"] == 9 and m["dimensions"]["helpfulness"]["comparisons"] == 9
    w = m["win_rates"]["harmlessness"]
    assert w["rl"] == {"base": 1.0, "sl": 1.0} and w["base"] == {"sl": 0.5, "rl": 0.0}
    assert m["mean_preference"]["harmlessness"]["rl"]["base"] == pytest.approx(0.9)
    row = next(r for r in m["pairs"]["harmlessness"] if (r["a"], r["b"]) == ("base", "sl"))
    assert row == {"a": "base", "b": "sl", "n": 3, "wins_a": 0, "ties": 3, "wins_b": 0, "win_rate_a": 0.5, "mean_p_a": 0.5}
    e = m["elo"]["harmlessness"]
    assert e["rl"] > e["base"] + 100 and e["base"] == pytest.approx(e["sl"]) and sum(e.values()) / 3 == pytest.approx(1000)
    h = m["win_rates"]["helpfulness"]
    assert h["sl"] == {"base": 1.0, "rl": 1.0} and h["rl"]["base"] == 1.0
    e = m["elo"]["helpfulness"]
    assert e["sl"] > e["rl"] > e["base"]
    comps = read(out / "samples.jsonl")
    assert e == pytest.approx(bradley_terry_elo(
        ["base", "sl", "rl"], [(c["a"], c["b"], c["p_a"]) for c in comps if c["dimension"] == "helpfulness"]))
    # the last 3 prompts of each file, the same for every model; provenance on each comparison
    answers = read(out / "responses-sl.jsonl")
    assert sorted(a["prompt_id"] for a in answers) == ["hp2", "hp3", "hp4", "rt1", "rt2", "rt3"]
    assert answers[0]["response"] == "SL- my answer" and answers[0]["model"] == "fake:sl"
    from constitutional_ai.constitution import load_constitution

    ids = {p.id for p in load_constitution().feedback}
    for c in comps:
        assert {s["order"] for s in c["scores"]} == {"AB", "BA"}
        assert (c["principles"] == ["helpfulness"]) if c["dimension"] == "helpfulness" else set(c["principles"]) <= ids
    # rerun: no generation and no judging, same metrics
    calls = [len(b.generate_calls) + len(b.score_calls) for b in backends.values()]
    assert metrics_of(eval_compare.main(cfg)) == m
    assert [len(b.generate_calls) + len(b.score_calls) for b in backends.values()] == calls

