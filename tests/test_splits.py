"""Train/eval separation: the bundled splits, split-aware loading, and evaluation sets that
share no near-duplicate question with what trains the models."""

import json
import re

import pytest

from constitutional_ai.data import BUILTIN_SETS, HELPFUL_COMPARISONS, DataError, load_prompts, prompt_items
from constitutional_ai.stages import eval_hhh, sample_pairs
from fakes import FakeBackend, install


def test_bundled_sets_carry_a_fixed_split():
    for name in BUILTIN_SETS:
        items = load_prompts(f"builtin:{name}", split="all")
        train, ev = load_prompts(f"builtin:{name}", split="train"), load_prompts(f"builtin:{name}", split="eval")
        assert {it.split for it in items} == {"train", "eval"} and len(train) + len(ev) == len(items)
        assert not {it.id for it in train} & {it.id for it in ev}
        assert 0.15 <= len(ev) / len(items) <= 0.3
        for cat in {it.category for it in items}:  # every category is represented in both splits
            assert any(it.category == cat for it in ev) and any(it.category == cat for it in train)
    benign, _ = prompt_items("builtin:helpful", category="benign-lookalike", split="eval")
    assert len(benign) >= 8


def test_split_filter_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"q{i}", "split": "eval" if i % 2 else "train"}) + "\n"
            for i in range(4)
        )
    )
    assert [it.id for it in load_prompts(f, split="eval")] == ["p1", "p3"]
    assert [it.id for it in load_prompts(f, split="train", limit=1)] == ["p0"]
    assert len(load_prompts(f)) == 4  # "all" by default
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert len(load_prompts(plain, split="train")) == 2  # a file without splits is used whole
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "a", "split": "train"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match=r"mixed.jsonl:2: field 'split': this row has no split"):
        load_prompts(mixed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "split": "test"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'split': split must be one of train, eval"):
        load_prompts(bad)
    only = tmp_path / "only.jsonl"
    only.write_text('{"prompt": "a", "split": "train"}\n')
    with pytest.raises(DataError, match="no prompts in split 'eval'"):
        load_prompts(only, split="eval")


def test_training_stage_draws_train_split_and_records_ids(tmp_path, monkeypatch):
    spec = install(FakeBackend(), monkeypatch)
    out = sample_pairs.main(sample_pairs.SamplePairsConfig(model=spec, out=str(tmp_path / "pairs"), limit=30))
    man = json.loads((out / "manifest.json").read_text())
    train = {it.id for it in load_prompts("builtin:red_team", split="train")}
    assert len(man["prompt_ids"]) == 30 and set(man["prompt_ids"]) <= train


def _words(t: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", t.lower()))


def _training_questions() -> list[str]:
    out = []
    for path in [*BUILTIN_SETS.values(), HELPFUL_COMPARISONS]:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            p = r.get("prompt") or r.get("messages")
            out.append(" ".join(m["content"] for m in p) if isinstance(p, list) else p)
    return out


@pytest.mark.parametrize("task", ["builtin:hhh_mini", "builtin:hhh_dev"])
def test_hhh_sets_share_no_near_duplicate_with_training_prompts(task):
    """Word-set Jaccard similarity of each HHH question with every bundled training prompt stays
    below 0.5 (the removed near-duplicates scored 0.58-0.87)."""
    train = [_words(t) for t in _training_questions()]
    for e in eval_hhh.load_hhh(task)[0]:
        w = _words(e["messages"][0]["content"])
        worst = max(len(w & t) / len(w | t) for t in train)
        assert worst < 0.5, (e["key"], worst)


def test_dev_set_is_larger_and_slot_balanced():
    ex, _ = eval_hhh.load_hhh("builtin:hhh_dev")
    assert len(ex) > 24
    for sub in {e["subset"] for e in ex}:
        mine = [e for e in ex if e["subset"] == sub]
        assert sum(e["correct"] == 0 for e in mine) * 2 == len(mine)
    mini = {e["messages"][0]["content"] for e in eval_hhh.load_hhh("builtin:hhh_mini")[0]}
    assert not mini & {e["messages"][0]["content"] for e in ex}
