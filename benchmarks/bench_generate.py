"""Generation throughput of the local backend vs a naive one-prompt-at-a-time loop.

    python benchmarks/bench_generate.py [--model default] [--prompts 32] [--max-new-tokens 64]

Same prompts (the first N bundled red-team prompts), same sampling (T=1, top_p=1) and the
same token budget for every configuration. Throughput counts the tokens actually generated
(rows stop at end-of-turn), so shorter answers do not flatter a configuration. Results are
printed as a Markdown table to paste into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from constitutional_ai.data import load_prompts
from constitutional_ai.models import Sampling
from constitutional_ai.models.local import LocalBackend


def naive_loop(backend: LocalBackend, convs, max_new_tokens: int) -> tuple[int, float]:
    """What a first implementation does: ``model.generate`` on one prompt at a time (run on a
    backend with ``kernels="transformers"``: transformers' own forward and matrix products)."""
    tok, model = backend.tokenizer, backend.model
    n_tokens, t0 = 0, time.perf_counter()
    for i, conv in enumerate(convs):
        ids = tok(backend.render(conv), return_tensors="pt", add_special_tokens=False).to(backend.device)
        torch.manual_seed(i)
        out = model.generate(
            **ids,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
        )
        n_tokens += out.shape[1] - ids.input_ids.shape[1]
    return n_tokens, time.perf_counter() - t0


def batched(backend: LocalBackend, convs, max_new_tokens: int, batch_size: int) -> tuple[int, float]:
    backend.batch_size = batch_size
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    texts = backend.generate(convs, sampling, seeds=list(range(len(convs))))
    dt = time.perf_counter() - t0
    return sum(backend.count_tokens(t) for t in texts), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    backend = LocalBackend(args.model)
    convs = [list(p.messages) for p in load_prompts(None, limit=args.prompts)]
    backend.generate(convs[:2], Sampling(max_new_tokens=4))  # warm-up
    plain = LocalBackend(args.model, kernels="transformers")
    rows = [("naive loop (model.generate, 1 prompt)", *naive_loop(plain, convs, args.max_new_tokens))]
    for bs in (1, 8, 32):
        rows.append((f"LocalBackend batch {bs}", *batched(backend, convs, args.max_new_tokens, bs)))
    base = rows[0][1] / rows[0][2]
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, model {backend.name}, {len(convs)} prompts, "
        f"max_new_tokens {args.max_new_tokens}\n"
    )
    print("| configuration | tokens | seconds | tokens/s | vs naive |")
    print("|---|---:|---:|---:|---:|")
    for name, n, dt in rows:
        print(f"| {name} | {n} | {dt:.1f} | {n / dt:.1f} | {n / dt / base:.1f}x |")


if __name__ == "__main__":
    main()
