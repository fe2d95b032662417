"""metrics.py: calibration, accuracy with ties, Bradley-Terry Elo, summary statistics — by hand."""

import math

import pytest

from constitutional_ai.metrics import bradley_terry_elo, calibration, graded, mean, summary_stats


def test_calibration_by_hand():
    pred = [0.05, 0.15, 0.12, 0.95, 1.0]
    target = [0.25, 0.5, 0.5, 0.9, 0.9]
    c = calibration(pred, target)
    ece, table = c["ece"], c["reliability"]
    # bin 0: |0.05 - 0.25| = 0.2 (n 1); bin 1: |0.135 - 0.5| = 0.365 (n 2); bin 9: |0.975 - 0.9| = 0.075 (n 2)
    assert ece == pytest.approx((0.2 + 2 * 0.365 + 2 * 0.075) / 5)
    assert [r["count"] for r in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[1]["mean_pred"] == pytest.approx(0.135) and table[1]["mean_target"] == pytest.approx(0.5)
    assert table[2]["mean_pred"] is None and (table[9]["lo"], table[9]["hi"]) == (0.9, 1.0)
    assert calibration([0.62, 0.68, 0.91], [0.65, 0.65, 0.91])["ece"] == pytest.approx(0.0, abs=1e-12)
    assert calibration([], [])["ece"] is None


def test_calibration_bins_a_value_computed_just_below_a_boundary_into_its_bin():
    # 0.1 * 3 * (4/3) is 0.39999999999999997 in floating point: it belongs to [0.4, 0.5)
    q = 0.1 * 3 * (4 / 3)
    assert calibration([q], [1.0])["reliability"][4]["count"] == 1


def test_graded_counts_ties_as_half():
    assert graded(0.7, 0) == 1.0 and graded(0.7, 1) == 0.0 and graded(0.5, 0) == 0.5 and graded(0.5 + 1e-12, 1) == 0.5


def test_summary_stats_and_mean_of_nothing():
    assert mean([]) is None and summary_stats([]) == {"count": 0, "mean": None, "std": None, "sem": None}
    s = summary_stats([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["sem"] == pytest.approx(1 / math.sqrt(3))


def test_bradley_terry_elo_by_hand():
    # 3 games, A preferred with P = 0.75 each, plus one virtual tie: A's share is 2.75 / 4
    elo = bradley_terry_elo(["A", "B"], [("A", "B", 0.75)] * 3, prior=1.0)
    gap = 400 * math.log10(2.75 / 1.25)
    assert elo["A"] == pytest.approx(1000 + gap / 2) and elo["B"] == pytest.approx(1000 - gap / 2)
    games = [("A", "B", 0.9), ("B", "C", 0.7), ("A", "C", 0.6), ("C", "A", 0.2), ("B", "A", 0.5)]
    one = bradley_terry_elo(["A", "B", "C"], games)
    two = bradley_terry_elo(["A", "B", "C"], games[::-1])
    assert one == pytest.approx(two) and sum(one.values()) / 3 == pytest.approx(1000)
    assert one["A"] > one["B"] > one["C"]
    with pytest.raises(ValueError, match="elo-prior"):
        bradley_terry_elo(["A", "B"], [("A", "B", 1.0)], prior=0.0)
