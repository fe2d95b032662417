"""Labelling throughput: the label stage's scorer vs a naive one-prompt-at-a-time scorer.

    python benchmarks/bench_label.py [--model default] [--pairs 32] [--principles 1] [--exemplar-pool 8]

Builds the real multiple-choice prompts of ``cai label`` (default constitution, few-shot
exemplars, both orders) for the first N bundled helpfulness comparisons, then scores the
"A"/"B" answer with:

* naive: one prompt per forward pass, full logits over the whole sequence, transformers'
  own forward with default matrix products (backend option ``kernels="transformers"``): what
  a first implementation does, and the baseline of the "vs naive" column;
* naive with the backend's kernels: the same loop on the lean forward and planned matrix products, to
  separate what the kernels give from what prefix reuse gives;
* batched: ``LocalBackend.score_choices`` with shared-prefix reuse switched off;
* batched + shared prefix: ``LocalBackend.score_choices`` with its persistent prefix cache
  off (the prefix that the prompts of one call share is encoded once);
* batched + shared prefix + prefix cache: as the label stage uses it (the exemplar blocks of
  ``--exemplar-pool`` are encoded once per run and reused across calls), cache cold at start.

The batched scorers are called ``--batch-size`` prompts at a time, in pair order, as the
label stage calls them.

All three must agree on every probability (checked); labels/s counts pairs labelled in
both orders.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from transformers.cache_utils import DynamicCache

from constitutional_ai.constitution import load_constitution
from constitutional_ai.data import HELPFUL_COMPARISONS
from constitutional_ai.feedback import FeedbackOptions, normalise, scoring_units
from constitutional_ai.models.local import LocalBackend
from constitutional_ai.prompts import feedback_messages, feedback_text
from constitutional_ai.stages.label import LabelConfig


def build_prompts(backend: LocalBackend, n: int, principles: int, exemplar_pool: int = 8) -> list[str]:
    c = load_constitution()
    cfg = FeedbackOptions.of(LabelConfig(principles=principles, exemplar_pool=exemplar_pool))
    prompts = []
    with open(HELPFUL_COMPARISONS) as f:
        rows = [json.loads(x) for x in f][:n]
    for i, r in enumerate(rows):
        rec = {
            "key": f"b{i}",
            "messages": r["prompt"],
            "responses": [r["chosen"][0]["content"], r["rejected"][0]["content"]],
        }
        for u in scoring_units(rec, c, cfg):
            if cfg.effective_format == "text":  # rendered as `cai label` renders them
                prompts.append(feedback_text(u["question"], u["exemplars"]))
            else:
                prompts.append(backend.render(feedback_messages(u["question"], u["exemplars"])))
    return prompts


@torch.inference_mode()
def naive(backend: LocalBackend, prompts: list[str]) -> list[float]:
    tok = backend.tokenizer
    a, b = tok("A", add_special_tokens=False).input_ids[0], tok("B", add_special_tokens=False).input_ids[0]
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False).input_ids])
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        lp = backend._forward(ids, pos, DynamicCache())[0, -1].float().log_softmax(-1)
        out.append(normalise(float(lp[a]), float(lp[b])))
    return out


def batched(backend: LocalBackend, prompts: list[str], share: bool, cache: bool) -> list[float]:
    """``score_choices`` called as the label stage calls it: ``batch_size`` prompts per call."""
    backend.min_shared_prefix = 64 if share else 10**9  # 10**9 tokens: never shared
    backend.prefix_cache.clear()
    backend.prefix_cache.reused_tokens = backend.prefix_cache.encoded_tokens = 0
    backend.prefix_cache.max_bytes = 512 * 2**20 if cache else 0
    out = []
    for s in range(0, len(prompts), backend.batch_size):
        out += [normalise(*lp) for lp in backend.score_choices(prompts[s : s + backend.batch_size], ["A", "B"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--principles", type=int, default=1, help="principles per label (cai label --principles)")
    ap.add_argument("--exemplar-pool", type=int, default=8, help="cai label --exemplar-pool (0: a fresh draw per pair)")
    ap.add_argument(
        "--only-cached",
        action="store_true",
        help="time only the naive scorer and the full one (prefix reuse + cache): for large --pairs",
    )
    args = ap.parse_args()
    backend = LocalBackend(args.model, batch_size=args.batch_size)
    plain = LocalBackend(args.model, batch_size=args.batch_size, kernels="transformers")
    prompts = build_prompts(backend, args.pairs, args.principles, args.exemplar_pool)
    n_tok = sum(backend.count_tokens(p) for p in prompts)
    backend.score_choices(prompts[:2], ["A", "B"])  # warm-up
    n_pairs = len(prompts) // (2 * args.principles)  # the bundled set may hold fewer than --pairs
    rows, ref = [], None
    kernels = f"{backend.kernels['forward']} forward, planned products"
    bs = args.batch_size
    scorers = [
        ("naive (1 prompt per forward, full logits, transformers' forward)", lambda: naive(plain, prompts)),
        (f"naive, the backend's kernels ({kernels})", lambda: naive(backend, prompts)),
        (f"batched (batch {bs}), no prefix reuse", lambda: batched(backend, prompts, False, False)),
        (f"batched (batch {bs}) + shared prefix within a call", lambda: batched(backend, prompts, True, False)),
        (f"batched (batch {bs}) + shared prefix + prefix cache (cold)", lambda: batched(backend, prompts, True, True)),
    ]
    if args.only_cached:
        scorers = [scorers[0], scorers[1], scorers[-1]]
    for name, fn in scorers:
        t0 = time.perf_counter()
        probs = fn()
        dt = time.perf_counter() - t0
        if ref is None:
            ref = probs
        err = max(abs(x - y) for x, y in zip(probs, ref))
        rows.append((name, dt, err))
    pc = backend.prefix_cache
    print(
        f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"model {backend.name}, {n_pairs} pairs x {args.principles} principles x 2 orders = {len(prompts)} "
        f"prompts, {n_tok / len(prompts):.0f} tokens/prompt on average, "
        f"exemplar pool {args.exemplar_pool}, load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| scorer | seconds | labels/s | vs naive | max abs diff in P(A) vs naive |")
    print("|---|---:|---:|---:|---:|")
    for name, dt, err in rows:
        print(f"| {name} | {dt:.1f} | {n_pairs / dt:.2f} | {rows[0][1] / dt:.1f}x | {err:.1e} |")
    print(
        f"\nprefix cache of the last scorer: {pc.reused_tokens} prefix tokens reused, {pc.encoded_tokens} encoded "
        f"(of {n_tok} prompt tokens in all)"
    )


if __name__ == "__main__":
    main()
