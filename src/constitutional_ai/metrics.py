"""The numbers the evaluations report, in one place: calibration, accuracy with ties,
Bradley–Terry Elo from soft outcomes, win-rate tables, summary statistics.

Every function is pure (lists in, numbers out) and returns ``None`` for a statistic over
zero items rather than a made-up 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations


def mean(xs: Sequence[float]) -> float | None:
    """The mean of ``xs``, or ``None`` for no items."""
    return sum(xs) / len(xs) if len(xs) else None


def calibration(pred: Sequence[float], outcome: Sequence[float], bins: int = 10) -> dict:
    """ECE and reliability table of probabilities against outcomes (0/1, or soft).

    Equal-width bins on [0, 1] (the last includes 1); per bin: ``bin, lo, hi, count,
    mean_pred, mean_target`` (``None`` means for empty bins) — the same table ``cai train
    pm`` writes. ECE = Σ (n_bin / N)·|mean pred − mean outcome|.
    """
    sums = [[0, 0.0, 0.0] for _ in range(bins)]
    for q, t in zip(pred, outcome):
        b = min(int(q * bins + 1e-9), bins - 1)  # 0.4 computed as 0.39999... still lands in [0.4, 0.5)
        sums[b][0] += 1
        sums[b][1] += q
        sums[b][2] += t
    n, ece, table = len(pred), 0.0, []
    for b, (c, sq, st) in enumerate(sums):
        table.append(
            {
                "bin": b,
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": c,
                "mean_pred": sq / c if c else None,
                "mean_target": st / c if c else None,
            }
        )
        if c:
            ece += c / n * abs(sq / c - st / c)
    return {"ece": ece if n else None, "reliability": table}


#: Probabilities this close to 0.5 are ties (both-order averages of mirrored answers).
TIE_EPS = 1e-9


def graded(p_first: float, correct: int) -> float:
    """1 if the prediction picks the right response, 0 if the wrong one, 0.5 for a tie (0.5)."""
    if abs(p_first - 0.5) <= TIE_EPS:
        return 0.5
    return float((p_first > 0.5) == (correct == 0))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def summary_stats(xs: list[float]) -> dict:
    """Count, mean, standard deviation (n − 1) and standard error of ``xs`` (``None`` when undefined)."""
    n = len(xs)
    m = sum(xs) / n if n else None
    std = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"count": n, "mean": m, "std": std, "sem": std / math.sqrt(n) if n else None}


def bradley_terry_elo(
    names: list[str],
    outcomes: list[tuple[str, str, float]],
    prior: float = 1.0,
    base: float = 1000.0,
    scale: float = 400.0,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> dict[str, float]:
    """Elo ratings from soft pairwise outcomes ``(a, b, P(a better))`` (see the module docstring)."""
    m, idx = len(names), {n: i for i, n in enumerate(names)}
    wins, games = [0.0] * m, [[0.0] * m for _ in range(m)]
    for a, b, p in outcomes:
        i, j = idx[a], idx[b]
        wins[i] += p
        wins[j] += 1.0 - p
        games[i][j] += 1
        games[j][i] += 1
    for i in range(m):
        for j in range(m):
            if i != j:
                games[i][j] += prior
                wins[i] += prior / 2
    if any(w <= 0 for w in wins):
        raise ValueError("a model lost every comparison: the Bradley-Terry fit needs --elo-prior > 0")
    pi = [1.0] * m
    for _ in range(max_iter):
        new = []
        for i in range(m):
            d = sum(games[i][j] / (pi[i] + pi[j]) for j in range(m) if j != i and games[i][j])
            new.append(wins[i] / d if d else pi[i])
        g = math.exp(sum(math.log(x) for x in new) / m)
        new = [x / g for x in new]
        done = max(abs(math.log(x / y)) for x, y in zip(new, pi)) < tol
        pi = new
        if done:
            break
    return {n: base + scale * math.log10(pi[idx[n]]) for n in names}


def pair_table(comps: list[dict], names: list[str]) -> tuple[dict, dict, list[dict]]:
    """Win-rate and mean-preference matrices (row vs column) and one summary row per pair."""
    win = {a: {} for a in names}
    mean_p = {a: {} for a in names}
    rows = []
    for a, b in combinations(names, 2):
        ps = [c["p_a"] for c in comps if (c["a"], c["b"]) == (a, b)]
        if not ps:
            continue
        wins_a = sum(p > 0.5 + TIE_EPS for p in ps)
        wins_b = sum(p < 0.5 - TIE_EPS for p in ps)
        ties = len(ps) - wins_a - wins_b
        rate = (wins_a + ties / 2) / len(ps)
        mp = sum(ps) / len(ps)
        win[a][b], win[b][a] = rate, 1 - rate
        mean_p[a][b], mean_p[b][a] = mp, 1 - mp
        rows.append(
            {
                "a": a,
                "b": b,
                "n": len(ps),
                "wins_a": wins_a,
                "ties": ties,
                "wins_b": wins_b,
                "win_rate_a": rate,
                "mean_p_a": mp,
            }
        )
    return win, mean_p, rows


def bootstrap_elo(
    names: list[str],
    outcomes: list[tuple[str, str, str, float]],
    n: int = 200,
    seed: int = 0,
    prior: float = 1.0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Confidence intervals of Bradley–Terry Elo by resampling *prompts* with replacement.

    ``outcomes`` are ``(prompt id, a, b, P(a better))``; each resample draws as many prompts
    as there are, keeps every comparison made on each drawn prompt, and refits
    :func:`bradley_terry_elo`. Returns ``{name: {"lo", "hi", "resamples"}}`` (percentile
    interval at ``level``), with ``None`` bounds when there are no prompts or ``n`` is 0.
    """
    import random

    by: dict[str, list[tuple[str, str, float]]] = {}
    for pid, a, b, p in outcomes:
        by.setdefault(pid, []).append((a, b, p))
    prompts = sorted(by)
    if not prompts or n <= 0:
        return {m: {"lo": None, "hi": None, "resamples": 0} for m in names}
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(n):
        sample = [o for _ in prompts for o in by[prompts[rng.randrange(len(prompts))]]]
        for m, r in bradley_terry_elo(names, sample, prior).items():
            draws[m].append(r)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def q(xs: list[float], f: float) -> float:
        xs = sorted(xs)
        k = f * (len(xs) - 1)
        i = int(k)
        return xs[i] + (xs[min(i + 1, len(xs) - 1)] - xs[i]) * (k - i)

    return {m: {"lo": q(d, lo_q), "hi": q(d, hi_q), "resamples": n} for m, d in draws.items()}
