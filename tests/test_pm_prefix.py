"""PM scoring that encodes a shared prompt once equals scoring every sequence in full."""

import random

import pytest
import torch

from constitutional_ai import pm as pm_lib


def test_prefix_groups_by_hand():
    a = [1, 2, 3, 4, 5, 6]
    seqs = [a + [7, 8], [9, 9, 9], a + [10], a, [9, 9, 8]]
    groups = pm_lib.prefix_groups(seqs, min_shared=3, max_group=16)
    shared = {tuple(sorted(m)): n for m, n in groups}
    # a is a prefix of the others: the group's prefix stops one token short of its shortest member
    assert shared[(0, 2, 3)] == 5
    assert shared[(1,)] == shared[(4,)] == 0  # two tokens in common < 3: not grouped
    assert sorted(i for m, _ in groups for i in m) == list(range(5))
    assert all(len(m) <= 2 for m, _ in pm_lib.prefix_groups(seqs, 3, max_group=2))


def test_shared_prefix_scores_equal_full_scores(tiny_pm):
    model, tok = pm_lib.load_pm(tiny_pm)
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 1000) for _ in range(rng.randrange(40, 90))] for _ in range(5)]
    seqs = [p + [rng.randrange(5, 1000) for _ in range(rng.randrange(1, 20))] for p in prompts for _ in range(3)]
    seqs += [[rng.randrange(5, 1000) for _ in range(12)] for _ in range(4)]  # short, nothing shared
    seqs.append(list(prompts[0]))  # one sequence is exactly another's prompt
    seqs.append(list(seqs[1]))  # and a duplicate
    rng.shuffle(seqs)
    full = pm_lib.score_ids(model, tok.pad_token_id, seqs, batch_size=4, min_shared=None)
    shared = pm_lib.score_ids(model, tok.pad_token_id, seqs, batch_size=4)
    assert shared == pytest.approx(full, abs=1e-5)
    assert len({round(x, 6) for x in full}) > 10  # the scores are not all alike
    # groups really formed: fewer sequences were scored in full
    groups = pm_lib.prefix_groups(seqs, pm_lib.MIN_SHARED_PREFIX, 4)
    assert sum(len(m) for m, n in groups if n) >= 15


def test_models_without_a_score_head_are_scored_in_full(tiny_pm, monkeypatch):
    model, tok = pm_lib.load_pm(tiny_pm)
    seqs = [[7] * 40 + [8], [7] * 40 + [9]]
    full = pm_lib.score_ids(model, tok.pad_token_id, seqs, min_shared=None)
    monkeypatch.setattr(pm_lib, "_head", lambda m: None)
    assert pm_lib.score_ids(model, tok.pad_token_id, seqs) == full
    assert torch.is_grad_enabled()
