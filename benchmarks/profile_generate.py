"""Where a batched generation spends its time: a torch.profiler table of one run.

    python benchmarks/profile_generate.py [--prompts 32] [--max-new-tokens 64] [--batch-size 32]
                                          [--kernels auto|transformers] [--dtype auto|bfloat16]

Runs ``LocalBackend.generate`` once as a warm-up, then once under ``torch.profiler`` (CPU
activities), and prints the top operators by self CPU time plus the wall time and tokens/s of
the profiled run. The table is summarised in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import time

from torch.profiler import ProfilerActivity, profile

from constitutional_ai.data import load_prompts
from constitutional_ai.models import Sampling
from constitutional_ai.models.local import LocalBackend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rows", type=int, default=15, help="operators to list")
    ap.add_argument("--kernels", default="auto", help="LocalBackend kernels: auto or transformers")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    backend = LocalBackend(args.model, batch_size=args.batch_size, kernels=args.kernels, dtype=args.dtype)
    convs = [list(p.messages) for p in load_prompts(None, limit=args.prompts)]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    backend.generate(convs, sampling, seeds=list(range(len(convs))))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        texts = backend.generate(convs, sampling, seeds=list(range(len(convs))))
        dt = time.perf_counter() - t0
    n = sum(backend.count_tokens(t) for t in texts)
    print(
        f"load average {os.getloadavg()[0]:.2f}; kernels {backend.kernels}, dtype {backend.info()['dtype']}; "
        f"batch {args.batch_size}: {n} tokens in {dt:.2f} s "
        f"= {n / dt:.1f} tokens/s (under the profiler)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
