"""PM score vs revision round (the paper's "PM score vs number of revisions" figure).

    cai eval rounds --revise runs/revise --pm runs/train-pm --out runs/eval/rounds

the paper's "PM score vs number of revisions" figure: every record of a
``cai revise`` folder is scored by the PM after its initial response (round 0) and after
each revision; mean, standard deviation (n − 1), standard error and count per round.

Output: ``samples.jsonl`` (per record: every round's score), ``metrics.json``, ``manifest.json`` last.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import opt, output_settings
from ..data import read_jsonl
from ..metrics import summary_stats
from ..pm import load_pm, pm_identity, score_conversations
from ..store import StageDir, manifest_identity, read_manifest


@dataclass
class RoundsConfig:
    revise: str = opt("runs/revise", "Output folder of `cai revise`", output=False)  # its identity is pinned instead
    pm: str = opt("runs/pm", "Preference model folder (output of `cai train pm`)")
    out: str = opt("runs/eval/rounds", "Output folder (rerun the same command to resume)", output=False)
    limit: int | None = opt(None, "Score only the first N revise records", output=False, min=1)
    batch_size: int = opt(16, "Conversations per PM forward pass", output=False, min=1)
    max_length: int | None = opt(None, "Longest conversation in tokens (default: the PM's context)")


def rounds_metrics(samples: list[dict]) -> dict:
    def table(ss):
        most = max((len(s["scores"]) for s in ss), default=0)
        return [
            {"round": r, **summary_stats([s["scores"][r] for s in ss if len(s["scores"]) > r])} for r in range(most)
        ]

    cats = sorted({s.get("category") or "uncategorised" for s in samples})
    return {
        "per_round": table(samples),
        "by_category": {c: table([s for s in samples if (s.get("category") or "uncategorised") == c]) for c in cats},
        "records": len(samples),
    }


def main(cfg: RoundsConfig) -> Path:
    rm = read_manifest(cfg.revise, stage="revise")
    recs = [r for _, r in read_jsonl(Path(cfg.revise) / "records.jsonl")]
    recs = recs[: cfg.limit] if cfg.limit else recs
    settings = output_settings(cfg, revise_identity=manifest_identity(rm), pm_identity=pm_identity(cfg.pm))
    t0 = time.time()
    with StageDir(cfg.out, "eval-rounds", settings) as out:
        samples = out.records("samples.jsonl")
        todo = [r for r in recs if r["key"] not in samples]
        if todo:
            model, tok = load_pm(cfg.pm)
            print(f"[eval rounds] {len(todo)} revise records to score ({len(samples)} done)", file=sys.stderr)
            with tqdm(total=len(todo), desc="eval rounds", unit="record", dynamic_ncols=True) as bar:
                for start in range(0, len(todo), cfg.batch_size):
                    chunk = todo[start : start + cfg.batch_size]
                    texts = [
                        [r["initial_response"]] + [x.get("current", x["revision"]) for x in r["rounds"]] for r in chunk
                    ]
                    convs = [
                        list(r["messages"]) + [{"role": "assistant", "content": t}]
                        for r, ts in zip(chunk, texts)
                        for t in ts
                    ]
                    flat = score_conversations(model, tok, convs, cfg.batch_size, cfg.max_length)
                    i = 0
                    for r, ts in zip(chunk, texts):
                        samples.append(
                            {
                                "key": r["key"],
                                "prompt_id": r.get("prompt_id"),
                                "sample": r.get("sample"),
                                "category": r.get("category"),
                                "messages": r["messages"],
                                "responses": ts,
                                "principles": [x["principle"] for x in r["rounds"]],
                                "empty_revision": [x.get("empty_revision", False) for x in r["rounds"]],
                                "scores": flat[i : i + len(ts)],
                                "pm": cfg.pm,
                                "model": r.get("model"),
                            }
                        )
                        i += len(ts)
                    bar.update(len(chunk))
        wanted = {r["key"] for r in recs}
        done = [s for s in samples if s["key"] in wanted]
        metrics = {"kind": "rounds", "revise": cfg.revise, "pm": cfg.pm, **rounds_metrics(done)}
        out.write_json("metrics.json", metrics)
        out.finish(
            {
                "config": asdict(cfg),
                "inputs": {"revise": cfg.revise, "pm": cfg.pm},
                "counts": {"records": len(recs), "scored": len(done)},
                "files": {"samples": "samples.jsonl", "metrics": "metrics.json"},
                "seconds": round(time.time() - t0, 1),
            }
        )
    means = " -> ".join(f"{r['mean']:.3f}" for r in metrics["per_round"] if r["mean"] is not None)
    print(f"[eval rounds] {len(done)} records; mean PM score by round: {means} -> {cfg.out}", file=sys.stderr)
    return Path(cfg.out)
