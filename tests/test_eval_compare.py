"""`cai eval compare`: head-to-head comparisons judged by a feedback model, win rates and Elo."""

import json
from pathlib import Path

import pytest

from constitutional_ai.metrics import bradley_terry_elo
from constitutional_ai.stages import eval_compare
from evalhelpers import L, metrics_of, read
from fakes import FakeBackend, install


def write_prompts(path: Path, prefix: str, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"{prefix}{i}", "prompt": f"{prefix} question {i}?"}) + "\n" for i in range(n))
    )
    return path


def test_compare_win_rates_elo_and_resume(tmp_path, monkeypatch):
    models = {spec: FakeBackend(replies={"": f"{spec.upper()}- my answer"}) for spec in ("base", "sl", "rl")}
    H = eval_compare.HELPFULNESS_PRINCIPLE + "\nOptions:\n"
    # harmlessness: RL's answer wins, the others tie; helpfulness: SL beats everyone, then RL
    judge = FakeBackend(
        choice_logprobs={
            H + "(A) SL-": [L(0.8), L(0.2)],
            H + "(A) BASE- my answer\n(B) SL-": [L(0.2), L(0.8)],
            H + "(A) RL- my answer\n(B) SL-": [L(0.2), L(0.8)],
            "(A) RL-": [L(0.9), L(0.1)],
            "(B) RL-": [L(0.1), L(0.9)],
        }
    )
    backends = {**models, "judge": judge}
    specs = {name: install(b, monkeypatch, name) for name, b in backends.items()}
    cfg = eval_compare.CompareConfig(
        models=[specs[n] for n in ("base", "sl", "rl")],
        names=["base", "sl", "rl"],
        judge=specs["judge"],
        out=str(tmp_path / "o"),
        prompts_red_team=str(write_prompts(tmp_path / "rt.jsonl", "rt", 4)),
        prompts_helpful=str(write_prompts(tmp_path / "hp.jsonl", "hp", 5)),
        limit=3,
    )
    out = eval_compare.main(cfg)
    m = metrics_of(out)
    assert all(b.generate_calls for b in models.values()) and judge.score_calls and not judge.generate_calls
    assert m["dimensions"]["harmlessness"]["comparisons"] == 9 and m["dimensions"]["helpfulness"]["comparisons"] == 9
    w = m["win_rates"]["harmlessness"]
    assert w["rl"] == {"base": 1.0, "sl": 1.0} and w["base"] == {"sl": 0.5, "rl": 0.0}
    assert m["mean_preference"]["harmlessness"]["rl"]["base"] == pytest.approx(0.9)
    row = next(r for r in m["pairs"]["harmlessness"] if (r["a"], r["b"]) == ("base", "sl"))
    assert row == {
        "a": "base",
        "b": "sl",
        "n": 3,
        "wins_a": 0,
        "ties": 3,
        "wins_b": 0,
        "win_rate_a": 0.5,
        "mean_p_a": 0.5,
    }
    e = m["elo"]["harmlessness"]
    assert (
        e["rl"] > e["base"] + 100 and e["base"] == pytest.approx(e["sl"]) and sum(e.values()) / 3 == pytest.approx(1000)
    )
    h = m["win_rates"]["helpfulness"]
    assert h["sl"] == {"base": 1.0, "rl": 1.0} and h["rl"]["base"] == 1.0
    e = m["elo"]["helpfulness"]
    assert e["sl"] > e["rl"] > e["base"]
    comps = read(out / "samples.jsonl")
    assert e == pytest.approx(
        bradley_terry_elo(
            ["base", "sl", "rl"], [(c["a"], c["b"], c["p_a"]) for c in comps if c["dimension"] == "helpfulness"]
        )
    )
    # the first 3 prompts of each (unsplit) file, the same for every model; provenance on each comparison
    answers = read(out / "responses-sl.jsonl")
    assert sorted(a["prompt_id"] for a in answers) == ["hp0", "hp1", "hp2", "rt0", "rt1", "rt2"]
    # counts: nothing missing, base-sl harmlessness ties shown as ties; bootstrap intervals bracket the fit
    d = m["dimensions"]["harmlessness"]
    assert (d["expected"], d["missing"], d["judge_errors"], d["ties"]) == (9, 0, 0, 3)
    for dim in ("harmlessness", "helpfulness"):
        for n, r in m["elo"][dim].items():
            ci = m["elo_ci"][dim][n]
            assert ci["resamples"] == 200 and ci["lo"] <= r + 1e-6 and r - 1e-6 <= ci["hi"]
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


def test_bootstrap_elo_intervals():
    from constitutional_ai.metrics import bootstrap_elo

    # a beats b on every prompt: every resample gives the same fit, so the interval is a point
    same = [(f"p{i}", "a", "b", 0.9) for i in range(10)]
    ci = bootstrap_elo(["a", "b"], same, n=50, seed=1)
    fit = bradley_terry_elo(["a", "b"], [(a, b, p) for _, a, b, p in same])
    assert ci["a"]["lo"] == pytest.approx(fit["a"]) and ci["a"]["hi"] == pytest.approx(fit["a"])
    # mixed prompts: a proper interval around the point estimate, reproducible by seed
    mixed = [(f"p{i}", "a", "b", 0.9 if i % 3 else 0.1) for i in range(30)]
    c1, c2 = bootstrap_elo(["a", "b"], mixed, n=100, seed=3), bootstrap_elo(["a", "b"], mixed, n=100, seed=3)
    fit = bradley_terry_elo(["a", "b"], [(a, b, p) for _, a, b, p in mixed])
    assert c1 == c2 and c1["a"]["lo"] < fit["a"] < c1["a"]["hi"]
    assert bootstrap_elo(["a", "b"], [], n=10)["a"] == {"lo": None, "hi": None, "resamples": 0}


def test_compare_refuses_models_trained_on_the_prompts(tmp_path, monkeypatch):
    rt = tmp_path / "rt.jsonl"
    rt.write_text(
        "".join(
            json.dumps({"id": f"rt{i}", "prompt": f"q {i}?", "split": "train" if i < 3 else "eval"}) + "\n"
            for i in range(6)
        )
    )
    pairs, rl = tmp_path / "pairs", tmp_path / "rl"
    pairs.mkdir(), rl.mkdir()
    (pairs / "manifest.json").write_text(json.dumps({"prompt_ids": ["rt1", "rt4"], "inputs": {"prompts": str(rt)}}))
    (rl / "manifest.json").write_text(json.dumps({"prompt_ids": ["rt0"], "inputs": {"pm": {"path": str(pairs)}}}))
    base = install(FakeBackend(), monkeypatch, "base")
    cfg = eval_compare.CompareConfig(
        models=[base, str(rl)],
        names=["base", "rl"],
        judge=base,
        prompts_red_team=str(rt),
        prompts_helpful="none",
        out=str(tmp_path / "o"),
    )
    # the eval split (rt3..rt5) still holds rt4, which the PM's pairs used
    with pytest.raises(ValueError, match=r"model 'rl' .* trained on 1 of the evaluation prompts .*pairs.*: rt4"):
        eval_compare.main(cfg)
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"trained on 3 of the evaluation prompts .*: rt0, rt1, rt4"):
        eval_compare.main(replace(cfg, split="all"))


def test_report_draws_helpful_vs_harmless_and_refusal_breakdown(tmp_path, monkeypatch):
    from constitutional_ai.report import build_report
    from constitutional_ai.stages import eval_refusal
    from test_eval_refusal import ClassFake

    run = tmp_path / "run"
    models = {
        n: install(FakeBackend(replies={"": f"{n.upper()}- I can't, but here is a safer way instead."}), monkeypatch, n)
        for n in ("base", "rl")
    }
    judge = install(
        FakeBackend(choice_logprobs={"(A) RL-": [L(0.7), L(0.3)], "(B) RL-": [L(0.3), L(0.7)]}), monkeypatch, "judge"
    )
    eval_compare.main(
        eval_compare.CompareConfig(
            models=list(models.values()),
            names=list(models),
            judge=judge,
            out=str(run / "eval-compare"),
            bootstrap=20,
            prompts_red_team=str(write_prompts(tmp_path / "rt.jsonl", "rt", 4)),
            prompts_helpful=str(write_prompts(tmp_path / "hp.jsonl", "hp", 4)),
        )
    )
    for n, spec in models.items():
        eval_refusal.main(
            eval_refusal.RefusalConfig(
                model=spec,
                classifier=install(ClassFake(), monkeypatch, "cls"),
                out=str(run / f"eval-refusal-{n}"),
                prompts=str(write_prompts(tmp_path / "b.jsonl", "b", 3)),
                category="all",
                harmful_prompts=str(write_prompts(tmp_path / "h.jsonl", "h", 3)),
            )
        )
    html = build_report(run).read_text()
    assert "Helpfulness vs harmlessness Elo (bars: 95 % bootstrap CI)" in html
    assert "harmlessness Elo [95 % CI]" in html and "ties (P = 0.5)" in html
    assert "Harmful-prompt engagement vs benign-prompt refusal" in html and "Answer classes per prompt set" in html
    assert html.count("<circle") >= 4  # a point per checkpoint in each picture
