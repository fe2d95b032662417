"""label --exemplar-pool: exemplar blocks drawn once per run and shared across pairs."""

import json

import pytest

from constitutional_ai.config import parse_config
from constitutional_ai.constitution import load_constitution
from constitutional_ai.feedback import FeedbackOptions, draw_principles
from constitutional_ai.stages import label
from fakes import FakeBackend
from test_label import BIASED, run_label


def blocks(cfg, n=60):
    c = load_constitution()
    return [tuple(draw_principles(c, FeedbackOptions.of(cfg), f"pair-{i}")[0][1]) for i in range(n)]


def test_pool_limits_blocks_and_keeps_each_exemplar_principle_random():
    pooled = blocks(label.LabelConfig(exemplar_pool=4))
    assert 1 < len(set(pooled)) <= 4
    assert blocks(label.LabelConfig(exemplar_pool=4)) == pooled  # drawn from the seed: reruns agree
    assert set(blocks(label.LabelConfig(exemplar_pool=4, seed=1))) != set(pooled)
    # within a block each exemplar has its own draw: over 16 blocks they are not all uniform
    assert any(len(set(b)) > 1 for b in set(blocks(label.LabelConfig(exemplar_pool=16), n=200)))
    fresh = blocks(label.LabelConfig(exemplar_pool=0))
    assert len(set(fresh)) > 8  # 0: today's fresh draw per pair


def test_pool_size_is_recorded_and_prompts_share_blocks(tmp_path, monkeypatch):
    fb = FakeBackend(choice_logprobs=BIASED)
    out, recs, _ = run_label(tmp_path, monkeypatch, fb, pairs=[("alpha", "beta")] * 12, exemplar_pool=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["exemplar_pool"] == 2
    used = {tuple(s["exemplar_principles"]) for r in recs for s in r["scores"]}
    assert 1 <= len(used) <= 2
    prompts = [p for call in fb.score_calls for p in call]
    heads = {p[: p.rindex("Consider the following conversation")] for p in prompts}
    assert len(heads) == len(used)  # the same block is the same text, a prefix shared across pairs


def test_negative_pool_is_a_clear_error():
    with pytest.raises(ValueError, match="--exemplar-pool must be at least 0"):
        parse_config(label.LabelConfig, ["--exemplar-pool", "-1"], "cai label", "d")
