"""Which feedback prompt should the labeller use? Variants compared on the development set.

    PYTHONPATH=src .venv/bin/python benchmarks/labeller_variants.py            # builtin:hhh_dev, embedded model
    PYTHONPATH=src .venv/bin/python benchmarks/labeller_variants.py --task my/task.json --model openai:...

Each variant asks the feedback model the label stage's multiple-choice question about every
example of the task (BIG-bench ``task.json``), in both slot orders. Reported per variant:

* ``debiased``: accuracy of the both-orders average (ties count half) — the figure the
  defaults are chosen by, because it is free of the slot artefact;
* ``single``: accuracy of one order per example under the seeded balanced slot assignment
  of ``cai eval hhh`` (an always-(B) labeller scores 50 % here);
* ``first slot``: share of all scorings whose verdict is (A) (0.5 = no letter bias);
* ``self-contradicting``: share of examples whose two orders pick the same slot;
* per-subset debiased accuracy and the standard error of the overall figure.

Variants: prompt format (``chat`` template vs the paper's plain ``text``), number of
feedback exemplars (0 or the constitution's 2), and the principle: the fixed HHH question,
one principle drawn from the constitution, or an ensemble of K drawn principles
(``--principles K``), cheapest first. Results go to ``benchmarks/results/labeller_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from constitutional_ai.constitution import FeedbackPrinciple, load_constitution
from constitutional_ai.feedback import FeedbackOptions, label_chunk
from constitutional_ai.metrics import graded, mean
from constitutional_ai.models import load_backend
from constitutional_ai.stages.eval_hhh import HHH_PRINCIPLE, load_hhh, slot_swaps

#: name -> (prompt format, few-shot exemplars, principle source, principles per label)
VARIANTS: dict[str, tuple[str, int, str, int]] = {
    "chat, 0 exemplars, HHH question": ("chat", 0, "hhh", 1),
    "text, 0 exemplars, HHH question": ("text", 0, "hhh", 1),
    "text, 0 exemplars, 1 drawn principle": ("text", 0, "constitution", 1),
    "chat, 2 exemplars, HHH question (old default)": ("chat", 2, "hhh", 1),
    "text, 2 exemplars, HHH question": ("text", 2, "hhh", 1),
    "text, 0 exemplars, 3 drawn principles": ("text", 0, "constitution", 3),
    "chat, 2 exemplars, 1 drawn principle (label default)": ("chat", 2, "constitution", 1),
}


def run_variant(
    backend,
    examples: list[dict],
    swaps: dict[str, bool],
    constitution,
    fmt: str,
    shots: int,
    source: str,
    k: int,
    seed: int,
    batch: int,
) -> dict:
    """Score every example in both orders under one variant; the variant's figures."""
    c = (
        constitution
        if source == "constitution"
        else replace(constitution, feedback=(FeedbackPrinciple("hhh", HHH_PRINCIPLE),))
    )
    opts = FeedbackOptions(principles=k, debias=True, few_shot=shots, seed=seed, prompt_format=fmt)
    rows = []
    step = max(1, batch // opts.per_pair)
    for start in range(0, len(examples), step):
        chunk = examples[start : start + step]
        recs = [
            {"key": e["key"], "prompt_id": e["key"], "messages": e["messages"], "responses": e["responses"]}
            for e in chunk
        ]
        for e, lr in zip(chunk, label_chunk(backend, recs, c, opts)):
            ab = [s["p_a"] for s in lr["scores"] if s["order"] == "AB"]
            ba = [s["p_a"] for s in lr["scores"] if s["order"] == "BA"]
            single = mean(ba) if swaps[e["key"]] else mean(ab)  # P(first listed better), one order
            both = [(s["p_first"] > 0.5) for s in lr["scores"]]
            rows.append(
                {
                    "subset": e["subset"],
                    "debiased": graded(lr["p_a_unclamped"], e["correct"]),
                    "single": graded(single, e["correct"]),
                    "first_slot": mean([float(b) for b in both]),
                    "contradicts": float((mean(ab) > 0.5) != (mean(ba) > 0.5)),
                }
            )
    acc = mean([r["debiased"] for r in rows])
    subsets = sorted({r["subset"] for r in rows})
    return {
        "debiased": acc,
        "debiased_se": math.sqrt(acc * (1 - acc) / len(rows)),
        "single": mean([r["single"] for r in rows]),
        "first_slot_rate": mean([r["first_slot"] for r in rows]),
        "self_contradicting_rate": mean([r["contradicts"] for r in rows]),
        "by_subset": {s: mean([r["debiased"] for r in rows if r["subset"] == s]) for s in subsets},
        "n": len(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="builtin:hhh_dev")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--only", nargs="*", help="run only the variants whose names contain one of these words")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "labeller_variants.json"))
    args = ap.parse_args()
    examples, _ = load_hhh(args.task)
    swaps = slot_swaps(examples, args.seed)
    constitution = load_constitution("default")
    backend = load_backend(args.model, batch_size=args.batch_size)
    results = {}
    for name, (fmt, shots, source, k) in VARIANTS.items():
        if args.only and not any(w in name for w in args.only):
            continue
        t0 = time.time()
        r = run_variant(backend, examples, swaps, constitution, fmt, shots, source, k, args.seed, args.batch_size)
        results[name] = {
            **r,
            "prompt_format": fmt,
            "few_shot": shots,
            "principle": source,
            "principles": k,
            "seconds": round(time.time() - t0, 1),
        }
        print(
            f"{name}: debiased {r['debiased']:.3f} ± {r['debiased_se']:.3f}, single {r['single']:.3f}, "
            f"first slot {r['first_slot_rate']:.2f} ({results[name]['seconds']} s)",
            flush=True,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # written after each variant: a partial run is kept
        Path(args.out).write_text(
            json.dumps(
                {
                    "task": args.task,
                    "model": args.model,
                    "examples": len(examples),
                    "seed": args.seed,
                    "variants": results,
                },
                indent=1,
                allow_nan=False,
            )
            + "\n"
        )
    print(
        "\n| variant | debiased | ± SE | single order | first-slot rate | self-contradicting | "
        + " | ".join(sorted(next(iter(results.values()))["by_subset"]))
        + " |"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['debiased']:.1%} | {r['debiased_se']:.1%} | {r['single']:.1%} | {r['first_slot_rate']:.2f} "
            f"| {r['self_contradicting_rate']:.2f} | "
            + " | ".join(f"{v:.0%}" for _, v in sorted(r["by_subset"].items()))
            + " |"
        )


if __name__ == "__main__":
    main()
