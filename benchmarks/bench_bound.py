"""The physical bounds of this machine for the embedded model: memory bandwidth and fp32 matmul peak.

    python benchmarks/bench_bound.py [--model default] [--gib 1]

Measures (best of several repeats, with torch's own threads):

* read bandwidth: summing a float32 tensor of ``--gib`` GiB (bytes read / second);
* fp32 matrix-product peak: a 2048 x 2048 x 2048 product, and the decode-shaped products of
  the model (32 rows x its projection matrices);

then prints the model's weight bytes and FLOPs per token and the lower bounds they imply for
one decode step at batch 1 (weights read once) and batch 32 (the larger of bytes and FLOPs).

It also times the matrix products of one decode step alone — every layer's projections and
the lm_head, shaped and laid out as ``models/fast.py`` runs them, on the oneDNN kernels the
backend uses — at batch 1 (the weight bytes they stream per second: what this CPU's kernels
reach, against the read bandwidth) and batch 32.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    n = int(args.gib * 2**30 / 4)
    big = torch.ones(n, dtype=torch.float32)
    bw = n * 4 / best_of(lambda: big.sum())
    big = None  # free it before the matmul test
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / best_of(lambda: a @ b)

    from constitutional_ai.models.local import LocalBackend

    model = LocalBackend(args.model).model
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    # Weights read per decode step: every matrix once; the tied embedding is read as lm_head.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # 2 FLOPs per weight per token: the tied embedding matrix counts once, as lm_head.
    flops_token = 2 * params
    h, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    x = torch.randn(32, h)
    mats = [torch.randn(inter, h), torch.randn(vocab, h)]
    t_mlp = best_of(lambda: torch.nn.functional.linear(x, mats[0]))
    t_head = best_of(lambda: torch.nn.functional.linear(x, mats[1]))
    shaped = (2 * 32 * inter * h + 2 * 32 * vocab * h) / (t_mlp + t_head)
    from constitutional_ai.models.fast import _onednn, onednn_linear_ok

    lin = _onednn if onednn_linear_ok() else torch.nn.functional.linear
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    layer_mats = [
        (torch.randn(h, h + 2 * kv).t(), torch.randn(h, h).t(), torch.randn(2 * inter, h), torch.randn(inter, h).t())
        for _ in range(cfg.num_hidden_layers)
    ]
    head = torch.randn(vocab, h)

    def products(rows: int) -> None:
        x, xi = torch.randn(rows, h), torch.randn(rows, inter)
        for qkv, o, gu, down in layer_mats:
            lin(x, qkv), lin(x, o), lin(x, gu), lin(xi, down)
        lin(x, head)

    t_prod1, t_prod32 = best_of(lambda: products(1)), best_of(lambda: products(32))
    b1 = weight_bytes / bw
    b32 = max(weight_bytes / bw, 32 * flops_token / peak)
    print(f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"read bandwidth: {bw / 1e9:.1f} GB/s")
    print(
        f"fp32 matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s; decode-shaped (32 rows x MLP/lm_head): "
        f"{shaped / 1e9:.0f} GFLOP/s"
    )
    print(
        f"model: {params / 1e6:.1f} M parameters, {weight_bytes / 1e6:.0f} MB of weights, "
        f"{flops_token / 1e6:.0f} MFLOP per token"
    )
    print(
        f"one decode step's matrix products alone ({'oneDNN' if lin is _onednn else 'F.linear'}): batch 1 "
        f"{t_prod1 * 1e3:.1f} ms ({weight_bytes / t_prod1 / 1e9:.1f} GB/s of weights), "
        f"batch 32 {t_prod32 * 1e3:.1f} ms ({32 * flops_token / t_prod32 / 1e9:.0f} GFLOP/s)"
    )
    print(
        f"bound per decode step: batch 1 >= {b1 * 1e3:.1f} ms ({1 / b1:.0f} tokens/s); "
        f"batch 32 >= {b32 * 1e3:.1f} ms ({32 / b32:.0f} tokens/s)"
    )


if __name__ == "__main__":
    main()
