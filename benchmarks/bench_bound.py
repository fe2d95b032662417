"""The physical bounds of this machine for the embedded model: memory bandwidth and fp32 matmul peak.

    python benchmarks/bench_bound.py [--model default] [--gib 1]

Measures (best of several repeats, with torch's own threads):

* read bandwidth: the faster of two reads of a float32 tensor of ``--gib`` GiB (bytes read /
  second), torch's ``sum`` and the native matrix-vector kernel of ``models/decode_step.c`` on
  it viewed as a 576-column matrix (on one Intel Xeon ``sum`` read at 18 GB/s while the
  decode step's own kernels streamed the weights at 20-23: the bound must not be the slower);
* fp32 matrix-product peak: a 2048 x 2048 x 2048 product, and the decode-shaped products of
  the model (32 rows x its projection matrices);

then prints the model's weight bytes and FLOPs per token and the lower bounds they imply for
one decode step at batch 1 (weights read once) and batch 32 (the larger of bytes and FLOPs).

It also times the matrix products of one decode step alone — every layer's projections and
the lm_head, on the backend's own fused weights with the kernels and layouts it planned for
this CPU (``models/fast.py``) — at batch 1 (the weight bytes they stream per second: what
this CPU's kernels reach, against the read bandwidth) and batch 32; one whole decode step
(the backend's forward on a 100-token cache, without sampling) against the bounds; and at
batch 1 the same step through torch (the native step off: ``models/native.py``), with its
other operators on their own (every product replaced by a ready-made output) against what
they add to the products inside the step.
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


def read_bandwidth(gib: float = 1.0) -> tuple[float, str]:
    """Bytes read per second from a float32 tensor of ``gib`` GiB, the faster of torch's ``sum``
    and the native matrix-vector kernel on it (a [n / 576, 576] matrix), and how each did."""
    from constitutional_ai.models import native

    n = int(gib * 2**30 / 4)
    big = torch.ones(n, dtype=torch.float32)
    bw_sum = n * 4 / best_of(lambda: big.sum())
    dll, how = native.library()
    bw_native = 0.0
    if dll is not None:
        mat, vec = big[: n // 576 * 576].view(-1, 576), torch.ones(576)
        bw_native = mat.numel() * 4 / best_of(lambda: native.matvec(dll, mat, vec))
    sources = f"torch sum {bw_sum / 1e9:.1f} GB/s, " + (
        f"native matvec {bw_native / 1e9:.1f} GB/s" if dll is not None else f"native matvec not run: {how}"
    )
    return max(bw_sum, bw_native), sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    bw, sources = read_bandwidth(args.gib)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / best_of(lambda: a @ b)

    from constitutional_ai.models.local import LocalBackend

    backend = LocalBackend(args.model)
    model = backend.model
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
    fast = backend._fast
    if fast is None:
        raise SystemExit(f"{args.model}: not a model the lean forward runs; the products below need it")

    def products(rows: int) -> None:
        # every layer's four projections and the lm_head, on the backend's own weights and plans
        x, xi = torch.randn(rows, h), torch.randn(rows, inter)
        k = [fast.plans[kind].kernel(rows) for kind in fast.KINDS]
        for _, qkv_w, qkv_b, o_w, o_b, _, gu_w, gu_b, down_w, down_b in fast.layers:
            k[0](x, qkv_w, qkv_b), k[1](x, o_w, o_b), k[2](x, gu_w, gu_b), k[3](xi, down_w, down_b)
        k[4](x, *fast.head)

    t_prod1, t_prod32 = best_of(lambda: products(1)), best_of(lambda: products(32))

    def decode_step(rows: int, context: int = 100, steps: int = 16) -> float:
        """Median time of one whole decode step (the backend's forward, a cache of ``context``
        tokens, no sampling) at batch ``rows``."""
        from constitutional_ai.models.local import SlabCache

        cache = SlabCache(cfg.num_hidden_layers, context + steps)
        ids = torch.randint(10, 1000, (rows, context))
        backend._forward(ids, torch.arange(context).expand(rows, -1), cache, None, 1)
        times = []
        for s in range(steps):
            t0 = time.perf_counter()
            backend._forward(ids[:, :1], torch.full((rows, 1), context + s), cache, None, 1)
            times.append(time.perf_counter() - t0)
        return sorted(times)[steps // 2]

    with torch.inference_mode():
        t_step1, t_step32 = decode_step(1), decode_step(32)
        # The batch-1 step through torch (the native step off), for the decomposition below.
        saved_native, fast.native = fast.native, None
        try:
            t_torch1 = decode_step(1)
        finally:
            fast.native = saved_native
        # The same step with every matrix product replaced by a ready-made output of its shape:
        # what the step's other operators cost on their own.
        from constitutional_ai.models import fast as fast_module

        outputs: dict[tuple, torch.Tensor] = {}

        def no_product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            key = (*x.shape[:-1], w.shape[0])
            return outputs.setdefault(key, torch.zeros(key, dtype=x.dtype))

        saved = dict(fast_module.KERNELS)
        fast_module.KERNELS.update(dict.fromkeys(saved, no_product))
        try:
            fast.native = None
            t_rest1 = decode_step(1)
        finally:
            fast_module.KERNELS.update(saved)
            fast.native = saved_native
    b1 = weight_bytes / bw
    b32 = max(weight_bytes / bw, 32 * flops_token / peak)
    print(f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"read bandwidth ({args.gib:g} GiB): {bw / 1e9:.1f} GB/s (the faster of {sources})")
    print(f"batch-1 decode step served by: {fast.decode_b1}")
    print(
        f"fp32 matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s; decode-shaped (32 rows x MLP/lm_head): "
        f"{shaped / 1e9:.0f} GFLOP/s"
    )
    print(
        f"model: {params / 1e6:.1f} M parameters, {weight_bytes / 1e6:.0f} MB of weights, "
        f"{flops_token / 1e6:.0f} MFLOP per token"
    )
    print(
        f"one decode step's matrix products alone (the backend's plans): batch 1 "
        f"{t_prod1 * 1e3:.1f} ms ({weight_bytes / t_prod1 / 1e9:.1f} GB/s of weights), "
        f"batch 32 {t_prod32 * 1e3:.1f} ms ({32 * flops_token / t_prod32 / 1e9:.0f} GFLOP/s)"
    )
    print(
        f"bound per decode step: batch 1 >= {b1 * 1e3:.1f} ms ({1 / b1:.0f} tokens/s); "
        f"batch 32 >= {b32 * 1e3:.1f} ms ({32 / b32:.0f} tokens/s)"
    )
    print(
        f"one whole decode step (forward, 100-token context, no sampling): batch 1 {t_step1 * 1e3:.1f} ms "
        f"= {t_step1 / b1:.2f}x the bound; batch 32 {t_step32 * 1e3:.1f} ms = {t_step32 / b32:.2f}x"
    )
    print(
        f"batch 1 through torch: {t_torch1 * 1e3:.1f} ms = {t_torch1 / b1:.2f}x the bound (its products alone "
        f"{t_prod1 / b1:.2f}x); its other operators alone (products skipped) {t_rest1 * 1e3:.1f} ms, interleaved "
        f"with the products they cost {(t_torch1 - t_prod1) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
