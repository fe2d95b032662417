"""Labelling throughput: the label stage's scorer vs a naive one-prompt-at-a-time scorer.

    python benchmarks/bench_label.py [--model default] [--pairs 32]

Builds the real multiple-choice prompts of ``cai label`` (default constitution, few-shot
exemplars, both orders) for the first N bundled helpfulness comparisons, then scores the
"A"/"B" answer with:

* naive: one prompt per forward pass, full logits over the whole sequence;
* batched: ``LocalBackend.score_choices`` with shared-prefix reuse switched off;
* batched + shared prefix: ``LocalBackend.score_choices`` as the label stage uses it (the
  prefix that both orders of a pair share is encoded once).

All three must agree on every probability (checked); labels/s counts pairs labelled in
both orders.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from constitutional_ai.constitution import load_constitution
from constitutional_ai.data import HELPFUL_COMPARISONS
from constitutional_ai.models.local import LocalBackend
from constitutional_ai.stages.label import LabelConfig, normalise, scoring_units
from constitutional_ai.prompts import feedback_messages


def build_prompts(backend: LocalBackend, n: int, principles: int) -> list[str]:
    c = load_constitution()
    cfg = LabelConfig(principles=principles)
    prompts = []
    with open(HELPFUL_COMPARISONS) as f:
        rows = [json.loads(x) for x in f][:n]
    for i, r in enumerate(rows):
        rec = {"key": f"b{i}", "messages": r["prompt"], "responses": [r["chosen"][0]["content"], r["rejected"][0]["content"]]}
        for u in scoring_units(rec, c, cfg):
            prompts.append(backend.render(feedback_messages(u["question"], u["exemplars"])))
    return prompts


@torch.inference_mode()
def naive(backend: LocalBackend, prompts: list[str]) -> list[float]:
    tok, model = backend.tokenizer, backend.model
    a, b = tok("A", add_special_tokens=False).input_ids[0], tok("B", add_special_tokens=False).input_ids[0]
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False).input_ids])
        lp = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        out.append(normalise(float(lp[a]), float(lp[b])))
    return out


def batched(backend: LocalBackend, prompts: list[str], share: bool) -> list[float]:
    backend.min_shared_prefix = 64 if share else 10**9  # 10**9 tokens: never shared
    return [normalise(*lp) for lp in backend.score_choices(prompts, ["A", "B"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--principles", type=int, default=1, help="principles per label (cai label --principles)")
    args = ap.parse_args()
    backend = LocalBackend(args.model, batch_size=args.batch_size)
    prompts = build_prompts(backend, args.pairs, args.principles)
    n_tok = sum(backend.count_tokens(p) for p in prompts)
    backend.score_choices(prompts[:2], ["A", "B"])  # warm-up
    rows, ref = [], None
    for name, fn in (("naive (1 prompt per forward, full logits)", lambda: naive(backend, prompts)),
                     (f"batched (batch {args.batch_size}), no prefix reuse", lambda: batched(backend, prompts, False)),
                     (f"batched (batch {args.batch_size}) + shared prefix", lambda: batched(backend, prompts, True))):
        t0 = time.perf_counter()
        probs = fn()
        dt = time.perf_counter() - t0
        if ref is None:
            ref = probs
        err = max(abs(x - y) for x, y in zip(probs, ref))
        rows.append((name, dt, err))
    print(f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, model {backend.name}, "
          f"{args.pairs} pairs x {args.principles} principles x 2 orders = {len(prompts)} prompts, {n_tok / len(prompts):.0f} tokens/prompt on average\n")
    print("| scorer | seconds | labels/s | vs naive | max abs diff in P(A) vs naive |")
    print("|---|---:|---:|---:|---:|")
    for name, dt, err in rows:
        print(f"| {name} | {dt:.1f} | {args.pairs / dt:.2f} | {rows[0][1] / dt:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
