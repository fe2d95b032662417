"""What a run lets its user conclude (``verdict.py``) and the report section that opens with it."""

from __future__ import annotations

import json

import pytest

from constitutional_ai.report import build_report
from constitutional_ai.store import StageDir, write_json_atomic
from constitutional_ai.verdict import Checkpoint, Interval, Judge, conclude, wilson

CALIBRATED = Judge("openai:big@http://h/v1", same_as_labeller=False, accuracy=Interval(0.8, 0.72, 0.86))


def test_wilson_interval_by_hand():
    # k=5, n=10, z=1.96: centre (0.5 + 0.19208) / 1.38416 = 0.5, half 1.96*sqrt(0.025 + 0.0096040)/1.38416
    iv = wilson(5, 10)
    assert iv.value == 0.5
    assert iv.lo == pytest.approx(0.2366, abs=1e-4) and iv.hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10).lo == 0.0 and wilson(10, 10).hi == 1.0
    assert wilson(0, 0) is None


def _cps(rl_harmless: Interval, rl_benign: tuple[int, int] = (1, 20)) -> list[Checkpoint]:
    return [
        Checkpoint("base", harmlessness_elo=Interval(950, 920, 980), benign_refused=wilson(1, 20)),
        Checkpoint("rl-cai", harmlessness_elo=rl_harmless, benign_refused=wilson(*rl_benign)),
    ]


def test_a_calibrated_independent_judge_supports_a_conclusion():
    v = conclude(_cps(Interval(1050, 1020, 1080)), CALIBRATED)
    assert v.concluded
    assert v.sentence.startswith("rl-cai: harmlessness Elo higher than base")
    assert "no difference in benign refusals" in v.sentence


def test_overlapping_intervals_conclude_no_difference():
    v = conclude(_cps(Interval(960, 930, 990)), CALIBRATED)
    assert not v.concluded and v.sentence.startswith("No difference beyond the 95 % intervals")


@pytest.mark.parametrize(
    "judge, why",
    [
        (Judge("default", same_as_labeller=True, accuracy=Interval(0.8, 0.7, 0.9)), "circular"),
        (Judge("default", same_as_labeller=False, accuracy=Interval(0.52, 0.45, 0.59)), "at chance"),
        (Judge("default", same_as_labeller=False), "no measured accuracy"),
        (None, "no judged evaluation"),
    ],
)
def test_nothing_is_concluded_from_a_circular_uncalibrated_or_chance_judge(judge, why):
    # the Elo gap is large: only the judge's standing stops the conclusion
    v = conclude(_cps(Interval(1200, 1150, 1250), rl_benign=(15, 20)), judge)
    assert v.sentence.startswith("Nothing can be concluded") and why in v.sentence
    assert not v.concluded
    # the transparent rule still reports what it sees
    assert "rl-cai: benign refusal higher than base" in v.sentence


def _finish(path, stage, metrics):
    with StageDir(path, stage, {}) as d:
        write_json_atomic(path / "metrics.json", metrics)
        d.finish({"config": {}, "counts": {}})


def _run(tmp_path, judge):
    root = tmp_path / "run"
    elo = {"harmlessness": {"base": 950.0, "rl-cai": 1050.0}, "helpfulness": {"base": 1000.0, "rl-cai": 1000.0}}
    ci = {
        "harmlessness": {"base": {"lo": 920, "hi": 980}, "rl-cai": {"lo": 1020, "hi": 1080}},
        "helpfulness": {"base": {"lo": 970, "hi": 1030}, "rl-cai": {"lo": 970, "hi": 1030}},
    }
    _finish(root / "eval-compare", "eval-compare", {"judge": judge, "elo": elo, "elo_ci": ci, "models": {}})
    for name, refused in (("base", 2), ("rl-cai", 3)):
        sets = {
            "benign": {"n": 20, "refusals": refused},
            "harmful": {"n": 20, "classifier": {"n": 20, "counts": {"engaged": 5 + refused}}},
        }
        harm = {"mean": 2.0 - refused / 10, "ci_low": 1.5, "ci_high": 2.5, "n": 20}
        _finish(root / f"eval-refusal-{name}", "eval-refusal", {"sets": sets, "harmfulness": harm})
    with StageDir(root / "label", "label", {}) as d:
        cal = {"accuracy": 0.5, "ci_low": 0.42, "ci_high": 0.58, "n": 150}
        d.finish({"config": {}, "counts": {}, "calibration": cal})
    return root


def test_the_report_opens_with_the_result(tmp_path):
    judge = {"spec": "big", "same_as_labeller": False, "calibration": {"accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9}}
    html = build_report(_run(tmp_path, judge)).read_text()
    sections = [html.index(f'<section id="{s}"') for s in ("result", "summary", "label", "eval")]
    assert sections == sorted(sections)  # the result first, run counts after it
    assert "rl-cai: harmlessness Elo higher than base" in html
    assert "0.15 <small>[0.05, 0.36]</small>" in html  # rl-cai benign refusals 3/20, Wilson interval
    assert "the labeller scored <b>50%</b>" in html and "<b>at chance</b>" in html


def test_the_report_says_nothing_when_the_judge_wrote_the_labels(tmp_path):
    judge = {"spec": "default", "same_as_labeller": True, "calibration": None}
    html = build_report(_run(tmp_path, judge)).read_text()
    result = html[html.index('<section id="result"') : html.index('<section id="summary"')]
    assert "Nothing can be concluded" in result and "circular" in result
    assert "Not evidence" in result
    assert "rl-cai: harmlessness Elo higher" not in result


def test_an_old_run_without_judge_details_concludes_nothing(tmp_path):
    html = build_report(_run(tmp_path, "default")).read_text()  # older metrics: the judge as a bare spec
    assert "no measured accuracy on known answers" in html
    assert json.loads((tmp_path / "run" / "eval-compare" / "metrics.json").read_text())["judge"] == "default"


def test_headline_names_the_conclusion_and_its_figures(tmp_path):
    from constitutional_ai.report import headline

    judge = {"spec": "big", "same_as_labeller": False, "calibration": {"accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9}}
    lines = headline(_run(tmp_path, judge))
    assert lines[0].startswith("rl-cai: harmlessness Elo higher than base")
    assert lines[1] == "labeller accuracy on known answers: 50% [42%, 58%]"
    assert lines[2] == "harmlessness Elo: base 950 [920, 980], rl-cai 1050 [1020, 1080]"
    assert lines[3] == "benign look-alikes refused: base 10% [3%, 30%], rl-cai 15% [5%, 36%]"
