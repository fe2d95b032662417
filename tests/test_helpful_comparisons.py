"""The bundled helpfulness comparisons mixed into the hybrid preference model's training data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import constitutional_ai

PATH = Path(constitutional_ai.__file__).parent / "data" / "helpful_comparisons.jsonl"
KEYS = {"id", "category", "prompt", "chosen", "rejected"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    assert PATH.is_file(), f"missing bundled file {PATH}"
    lines = PATH.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        assert line.strip(), f"blank line {n}"
        out.append(json.loads(line))  # every line is valid JSON
    return out


def _check_messages(messages, where):
    assert isinstance(messages, list) and messages, where
    for m in messages:
        assert set(m) == {"role", "content"}, where
        assert m["role"] in {"user", "assistant"}, where
        assert isinstance(m["content"], str) and m["content"].strip(), where


def test_row_count_and_unique_ids(rows):
    assert len(rows) == 80
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and i.startswith("hc-") for i in ids)


def test_structure(rows):
    for r in rows:
        rid = r.get("id")
        assert set(r) == KEYS, rid
        assert isinstance(r["category"], str) and r["category"], rid
        _check_messages(r["prompt"], rid)
        # Prompt turns alternate user/assistant and end with a user turn.
        roles = [m["role"] for m in r["prompt"]]
        assert roles == ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))], rid
        assert roles[-1] == "user", rid
        for side in ("chosen", "rejected"):
            _check_messages(r[side], rid)
            assert len(r[side]) == 1 and r[side][0]["role"] == "assistant", rid
        assert r["chosen"] != r["rejected"], rid
        assert r["chosen"][0]["content"].strip() != r["rejected"][0]["content"].strip(), rid
        words = len(r["chosen"][0]["content"].split())
        assert 30 <= words <= 90, (rid, words)


def test_categories_and_multi_turn(rows):
    cats = Counter(r["category"] for r in rows)
    assert cats["benign-lookalike"] >= 20
    assert len(cats) >= 5
    assert sum(len(r["prompt"]) > 1 for r in rows) >= 5


def test_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(PATH), split="train", cache_dir=str(tmp_path))
    assert len(ds) == 80
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["prompt"][-1]["role"] == "user"
    assert ds[0]["chosen"][0]["role"] == "assistant"
