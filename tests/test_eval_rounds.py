"""`cai eval rounds`: PM score per revision round."""

import math

import pytest

from constitutional_ai.stages import eval_rounds
from constitutional_ai.store import StageDir
from evalhelpers import metrics_of, read


def test_rounds_means_match_direct_scoring(tmp_path, tiny_pm):
    from constitutional_ai.pm import load_pm, score_conversations

    folder = tmp_path / "revise"
    d = StageDir(folder, "revise", {})
    rf = d.records("records.jsonl")
    recs = []
    for i in range(3):
        rec = {
            "key": f"p{i}/s0",
            "prompt_id": f"p{i}",
            "sample": 0,
            "category": "crime" if i else "violence",
            "messages": [{"role": "user", "content": f"How do I do bad thing {i}?"}],
            "initial_response": f"Here is how to do bad thing {i}.",
            "rounds": [
                {
                    "round": r,
                    "principle": "harmful",
                    "critique": "c",
                    "revision": f"Revision {r} of answer {i}.",
                    "empty_revision": False,
                }
                for r in (1, 2)
            ],
        }
        rf.append(rec)
        recs.append(rec)
    d.finish({})
    d.close()
    out = eval_rounds.main(eval_rounds.RoundsConfig(revise=str(folder), pm=tiny_pm, out=str(tmp_path / "o")))
    m = metrics_of(out)
    model, tok = load_pm(tiny_pm)
    table = [
        [
            score_conversations(model, tok, [r["messages"] + [{"role": "assistant", "content": t}]])[0]
            for t in [r["initial_response"]] + [x["revision"] for x in r["rounds"]]
        ]
        for r in recs
    ]
    assert [row["round"] for row in m["per_round"]] == [0, 1, 2]
    for k, row in enumerate(m["per_round"]):
        col = [t[k] for t in table]
        mean = sum(col) / 3
        assert row["count"] == 3 and row["mean"] == pytest.approx(mean, abs=1e-4)
        assert row["std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in col) / 2), abs=1e-4)
    assert m["by_category"]["violence"][1]["mean"] == pytest.approx(table[0][1], abs=1e-4)
    assert read(out / "samples.jsonl")[2]["scores"] == pytest.approx(table[2], abs=1e-4)
