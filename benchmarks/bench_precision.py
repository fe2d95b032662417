"""Output drift and speed of a lower-precision local model (``--dtype bfloat16``) against fp32.

    python benchmarks/bench_precision.py [--model default] [--dtype bfloat16] [--prompts 32]
                                         [--max-new-tokens 64] [--pairs 16]

The opt-in lower precision (backend option ``dtype``) is measured, not assumed harmless:

* next-token drift: the fp32 model's greedy continuations of the first N bundled red-team
  prompts are fed to both models (teacher forcing), and at every generated position the two
  next-token distributions are compared: mean and max KL(fp32 || low), how often the argmax
  agrees, and the mean total-variation distance;
* greedy texts: how many of the N greedy generations are identical;
* labels: P(A) of the real ``cai label`` prompts (as ``bench_label.py`` builds them) under
  both, max and mean absolute difference, and how often the preferred option flips;
* speed: sampled generation (T = 1) at batch 1 and batch 32 for both, tokens/s.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_label import build_prompts
from transformers.cache_utils import DynamicCache

from constitutional_ai.data import load_prompts
from constitutional_ai.feedback import normalise
from constitutional_ai.models import Sampling
from constitutional_ai.models.local import LocalBackend


@torch.inference_mode()
def next_token_logprobs(backend: LocalBackend, ids: list[int], start: int) -> torch.Tensor:
    """Log-probabilities of the next token at positions ``start - 1 .. len(ids) - 2``."""
    pos = torch.arange(len(ids)).unsqueeze(0)
    out = backend._forward(torch.tensor([ids]), pos, DynamicCache())[0, start - 1 : len(ids) - 1]
    return out.float().log_softmax(-1)


def tokens_per_second(backend: LocalBackend, convs, max_new: int, batch: int) -> float:
    backend.batch_size = batch
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=max_new)
    t0 = time.perf_counter()
    texts = backend.generate(convs, sampling, seeds=list(range(len(convs))))
    return sum(backend.count_tokens(t) for t in texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch1-prompts", type=int, default=8, help="prompts timed at batch 1")
    args = ap.parse_args()
    ref = LocalBackend(args.model, dtype="float32", batch_size=32)
    low = LocalBackend(args.model, dtype=args.dtype, batch_size=32)
    convs = [list(p.messages) for p in load_prompts(None, limit=args.prompts)]
    greedy = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    ref_texts, low_texts = ref.generate(convs, greedy), low.generate(convs, greedy)

    kls, tvs, agree = [], [], []
    for conv, text in zip(convs, ref_texts):
        prompt = ref.tokenizer(ref.render(conv), add_special_tokens=False).input_ids
        cont = ref.tokenizer(text, add_special_tokens=False).input_ids
        if not cont:
            continue
        ids = prompt + cont
        p, q = next_token_logprobs(ref, ids, len(prompt)), next_token_logprobs(low, ids, len(prompt))
        kls += (p.exp() * (p - q)).sum(-1).tolist()
        tvs += (0.5 * (p.exp() - q.exp()).abs().sum(-1)).tolist()
        agree += (p.argmax(-1) == q.argmax(-1)).tolist()

    label_prompts = build_prompts(ref, args.pairs, 1)
    pa_ref = [normalise(*lp) for lp in ref.score_choices(label_prompts, ["A", "B"])]
    pa_low = [normalise(*lp) for lp in low.score_choices(label_prompts, ["A", "B"])]
    diffs = [abs(a - b) for a, b in zip(pa_ref, pa_low)]
    flips = sum((a > 0.5) != (b > 0.5) for a, b in zip(pa_ref, pa_low))

    few = convs[: args.batch1_prompts]
    speed = {
        name: (tokens_per_second(b, few, args.max_new_tokens, 1), tokens_per_second(b, convs, args.max_new_tokens, 32))
        for name, b in (("float32", ref), (args.dtype, low))
    }
    print(
        f"\n{os.cpu_count()} CPUs, torch {torch.__version__}, model {ref.name}, {len(convs)} prompts, "
        f"{len(kls)} teacher-forced positions, {len(label_prompts)} label prompts, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print(f"| drift of {args.dtype} vs float32 | value |")
    print("|---|---:|")
    print(f"| mean KL(fp32 ‖ {args.dtype}) per next token (nats) | {sum(kls) / len(kls):.2e} |")
    print(f"| max KL per next token (nats) | {max(kls):.2e} |")
    print(f"| mean total-variation distance per next token | {sum(tvs) / len(tvs):.4f} |")
    print(f"| argmax agreement per next token | {100 * sum(agree) / len(agree):.1f} % |")
    same = sum(a == b for a, b in zip(ref_texts, low_texts))
    print(f"| identical greedy generations | {same} of {len(convs)} |")
    print(f"| label P(A): max / mean abs difference | {max(diffs):.4f} / {sum(diffs) / len(diffs):.4f} |")
    print(f"| label preference flipped (P(A) across 0.5) | {flips} of {len(label_prompts)} |")
    print()
    print("| dtype | tokens/s, batch 1 | tokens/s, batch 32 |")
    print("|---|---:|---:|")
    for name, (b1, b32) in speed.items():
        print(f"| {name} | {b1:.1f} | {b32:.1f} |")


if __name__ == "__main__":
    main()
