"""Side by side with llama.cpp: generation and labelling, same prompts, same model, one run.

    python benchmarks/bench_llamacpp.py [--prompts 32] [--max-new-tokens 64] [--pairs 32] [--skip-local]
                                        [--also torch,transformers,bfloat16] [--repeats 1]

llama.cpp runs the embedded Q4_1 GGUF (``embedded_gguf_path()``) in its native
OpenAI-compatible server through the ``xllamacpp`` package, in a child process
(``models/llamacpp.py``), with 32 slots and 2 threads; the
project runs the same model dequantized to fp32 in ``LocalBackend``. Both get the same
rendered prompts (the bundled red-team prompts through the chat template), T = 1, top-p 1
(llama.cpp's top-k and min-p switched off so both sample the full softmax), the same token
budget; tokens are counted with the same tokenizer on the returned texts. ``--also`` adds
generation rows for other local configurations in the same run: ``torch`` (the lean forward
with every operator through torch, the batch-1 native step off: ``kernels="torch"``),
``transformers`` (transformers' own forward and matrix products, ``kernels="transformers"``) and ``bfloat16``
(the opt-in lower precision, ``dtype="bfloat16"``). ``--repeats N`` times every generation
row N times, one after the other, and reports the median with the range (this machine's
speed drifts between runs; llama.cpp's prompt cache is off, so every repeat starts cold).

Labelling: the ``cai label`` prompts of the first N bundled comparison pairs (one principle,
both orders, the default exemplar pool), scored by ``LocalBackend.score_choices`` (prefix cache
cold at the start), by the naive scorer of ``bench_label.py`` (one prompt per forward pass,
transformers' forward, the baseline of its "vs naive" column; its probabilities checked
against the project's) and by llama.cpp as 1-token completions with the top log-probabilities,
32 requests in flight (once, at the end). Every repeat runs the generation rows, then the
project's and the naive scorer, then measures the read bandwidth (``bench_bound.py``): this
machine's bandwidth drifts by tens of percent over minutes, so each repeat's batch-1 rows are
set against the bound of that repeat, the weight bytes over its bandwidth (their time per token
includes the prompts' prefill). Prints Markdown tables and the load average, and ends with the
three figures of the CPU targets from this one run, median and per repeat: batch 32 against
llama.cpp at 32 requests, batch 1 against the bound, labelling against the naive scorer.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from constitutional_ai.data import load_prompts
from constitutional_ai.models import Sampling
from constitutional_ai.models.llamacpp import LlamaCppServer
from constitutional_ai.models.local import LocalBackend


def start_server(slots: int, ctx_per_slot: int, threads: int = 2) -> tuple[LlamaCppServer, str]:
    """Start llama.cpp's server in a child process (as a user runs it: its threads and OpenMP
    runtime never share this process with torch's); returns (server, base URL)."""
    server = LlamaCppServer(n_parallel=slots, slot_ctx=ctx_per_slot, threads=threads).start()
    url = server.address
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the model is loaded
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    return server, url


def complete(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def llamacpp_generate(url: str, prompts: list[str], max_new: int, concurrent: int) -> tuple[list[str], float]:
    bodies = [
        # cache_prompt off: a repeat starts cold, as the project's rows do
        {
            "prompt": p,
            "max_tokens": max_new,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "seed": i,
            "cache_prompt": False,
        }
        for i, p in enumerate(prompts)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as ex:
        out = list(ex.map(lambda b: complete(url, b)["choices"][0]["text"], bodies))
    return out, time.perf_counter() - t0


def local_run(backend: LocalBackend, batch: int, convs, sampling: Sampling) -> list[str]:
    backend.batch_size = batch
    return backend.generate(convs, sampling, seeds=list(range(len(convs))))


def project_scores(backend: LocalBackend, prompts: list[str]) -> list[float]:
    """P(A) as the label stage scores: 16 prompts per call, the prefix cache cold at the start."""
    from constitutional_ai.feedback import normalise

    backend.batch_size = 16
    backend.prefix_cache.clear()
    out = []
    for s in range(0, len(prompts), backend.batch_size):
        out += [normalise(*lp) for lp in backend.score_choices(prompts[s : s + backend.batch_size], ["A", "B"])]
    return out


def llamacpp_run(url: str, texts: list[str], max_new: int, concurrent: int) -> list[str]:
    out, _ = llamacpp_generate(url, texts, max_new, concurrent)
    return [t.split("<|im_end|>")[0] for t in out]


def llamacpp_label(url: str, prompts: list[str], concurrent: int) -> tuple[list[float | None], float]:
    """P(A) from the top-20 log-probabilities of the next token (None when A or B is missing)."""
    bodies = [{"prompt": p, "max_tokens": 1, "temperature": 0.0, "logprobs": 20} for p in prompts]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as ex:
        res = list(ex.map(lambda b: complete(url, b), bodies))
    dt = time.perf_counter() - t0
    probs = []
    for r in res:
        lp = r["choices"][0].get("logprobs") or {}
        top = (lp.get("top_logprobs") or [{}])[0]
        if not top and lp.get("content"):  # newer servers: OpenAI chat-style logprobs
            top = {t["token"]: t["logprob"] for t in lp["content"][0].get("top_logprobs", [])}
        a, b = top.get("A"), top.get("B")
        probs.append(None if a is None or b is None else 1 / (1 + math.exp(b - a)))
    return probs, dt


def progress(row: tuple) -> None:
    """Each figure as soon as it is measured (a long run cut short still leaves its numbers)."""
    print(f"# {row[0]}: {', '.join(f'{x:.1f}' for x in row[1:])} (load average {os.getloadavg()[0]:.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--skip-local", action="store_true", help="only the llama.cpp rows")
    ap.add_argument("--repeats", type=int, default=1, help="time each generation row this many times")
    ap.add_argument("--also-batches", default="1,32", help="batch sizes of the --also rows")
    ap.add_argument(
        "--also", default="", help="extra local configurations: torch, transformers, bfloat16 (comma-separated)"
    )
    args = ap.parse_args()
    from bench_label import build_prompts, naive

    backend = LocalBackend("default")
    convs = [list(p.messages) for p in load_prompts(None, limit=args.prompts)]
    texts = [backend.render(c) for c in convs]
    label_prompts = build_prompts(backend, args.pairs, 1)
    loads = {"start": os.getloadavg()[0]}
    ctx = max(backend.count_tokens(p) for p in label_prompts + texts) + args.max_new_tokens + 64
    t0 = time.perf_counter()
    server, url = start_server(32, ctx)
    print(f"llama.cpp server up at {url} in {time.perf_counter() - t0:.1f} s")
    llamacpp_generate(url, texts[:2], 4, 2)  # warm-up
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    rows: list[tuple[str, Callable[[], list[str]]]] = []  # (name, run) -> generated texts
    if not args.skip_local:
        configs: list[tuple[str, LocalBackend, tuple[int, ...]]] = [("", backend, (1, 32))]
        for extra in filter(None, args.also.split(",")):
            opts = {"kernels": extra} if extra in ("transformers", "torch") else {"dtype": extra}
            configs.append(
                (f" ({extra})", LocalBackend("default", **opts), tuple(map(int, args.also_batches.split(","))))
            )
        for label, b, sizes in configs:
            b.generate(convs[:2], Sampling(max_new_tokens=4))  # warm-up
            for bs in sizes:
                rows.append(
                    (f"project LocalBackend{label}, batch {bs}", functools.partial(local_run, b, bs, convs, sampling))
                )
    for conc in (1, 32):
        name = f"llama.cpp server, {conc} request{'s' if conc > 1 else ''} at a time"
        rows.append((name, functools.partial(llamacpp_run, url, texts, args.max_new_tokens, conc)))
    # Interleaved: every repeat runs every row once, so a drift of the machine's speed during
    # the run reaches all rows alike.
    timings: dict[str, list[float]] = {name: [] for name, _ in rows}
    counts: dict[str, int] = {}
    from bench_bound import read_bandwidth

    label_runs: list[tuple[str, Callable[[], list[float]]]] = []
    if not args.skip_local:
        plain = LocalBackend("default", kernels="transformers")
        naive(plain, label_prompts[:2])  # warm-up
        label_runs = [
            (
                "project score_choices (batch 16, prefix cache cold)",
                functools.partial(project_scores, backend, label_prompts),
            ),
            (
                "naive scorer (one prompt per pass, transformers' forward)",
                functools.partial(naive, plain, label_prompts),
            ),
        ]
    label_times: dict[str, list[float]] = {name: [] for name, _ in label_runs}
    scored: dict[str, list[float]] = {}
    bandwidths: list[tuple[float, str]] = []  # one per repeat, after its rows: the bound drifts too
    for _ in range(args.repeats):
        for name, run in rows:
            t0 = time.perf_counter()
            out = run()
            timings[name].append(time.perf_counter() - t0)
            counts[name] = sum(backend.count_tokens(t) for t in out)
            progress((name, counts[name], timings[name][-1]))
        for name, score in label_runs:
            t0 = time.perf_counter()
            scored[name] = score()
            label_times[name].append(time.perf_counter() - t0)
            progress((name, label_times[name][-1]))
        bandwidths.append(read_bandwidth())
        print(f"# read bandwidth: {bandwidths[-1][0] / 1e9:.1f} GB/s ({bandwidths[-1][1]})", flush=True)
    gen_rows = [(name, counts[name], timings[name]) for name, _ in rows]
    probs, dt = llamacpp_label(url, label_prompts, 32)
    label_rows = [(name, statistics.median(times)) for name, times in label_times.items()]
    label_rows.append(("llama.cpp server, 1-token completions, 32 in flight", dt))
    loads["end"] = os.getloadavg()[0]
    weight_bytes = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    print(
        f"\nload average {', '.join(f'{k} {v:.2f}' for k, v in loads.items())}; {len(convs)} prompts, "
        f"max_new_tokens {args.max_new_tokens}; labelling {args.pairs} pairs = {len(label_prompts)} prompts\n"
    )
    print(f"| configuration | tokens | seconds (median of {args.repeats}) | tokens/s | range of tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name, n, times in gen_rows:
        dt = statistics.median(times)
        print(f"| {name} | {n} | {dt:.1f} | {n / dt:.1f} | {n / max(times):.1f}–{n / min(times):.1f} |")
    bounds = [weight_bytes / bw for bw, _ in bandwidths]  # seconds per token, per repeat
    print(
        f"\nbatch-1 bound: {weight_bytes / 1e6:.0f} MB of weights read per token at "
        f"{', '.join(f'{bw / 1e9:.1f}' for bw, _ in bandwidths)} GB/s (measured after each repeat's rows, "
        f"the faster of {bandwidths[-1][1].replace(', ', ' and ')} in the last) = "
        f"{', '.join(f'{b * 1e3:.1f}' for b in bounds)} ms per token"
    )
    b1_ratio: dict[str, list[float]] = {}
    for name, n, times in gen_rows:
        if name.endswith("batch 1") and name.startswith("project"):
            b1_ratio[name] = [t / n / b for t, b in zip(times, bounds)]
            print(
                f"{name}: {', '.join(f'{t / n * 1e3:.1f}' for t in times)} ms per token = "
                f"{', '.join(f'{r:.2f}x' for r in b1_ratio[name])} the bound of its repeat "
                f"(median {statistics.median(b1_ratio[name]):.2f}x)"
            )
    n_tok = sum(backend.count_tokens(p) for p in label_prompts)
    print(f"\n| scorer | seconds (median of {args.repeats}; llama.cpp's once) | labels/s | prompt tokens/s |")
    print("|---|---:|---:|---:|")
    for name, secs in label_rows:
        print(f"| {name} | {secs:.1f} | {args.pairs / secs:.2f} | {n_tok / secs:.0f} |")
    if not args.skip_local:
        pa, ref = scored[label_runs[0][0]], scored[label_runs[1][0]]
        worst = max(abs(x - y) for x, y in zip(pa, ref))
        print(f"\nP(A), project vs naive scorer: largest difference {worst:.1e} over {len(pa)} prompts")
        assert worst < 1e-3, "the project's scorer disagrees with the naive one"
        both = [(x, y) for x, y in zip(pa, probs) if y is not None]
        if both:
            print(
                f"\nP(A), Q4_1 llama.cpp vs fp32 project on {len(both)}/{len(pa)} prompts: "
                f"mean abs diff {sum(abs(x - y) for x, y in both) / len(both):.3f}"
            )
        summary(timings, counts, b1_ratio["project LocalBackend, batch 1"], label_times)
    server.stop()


def summary(
    timings: dict[str, list[float]], counts: dict[str, int], b1_ratio: list[float], label: dict[str, list[float]]
) -> None:
    """The CPU targets, from this run: batch 32 >= 2x llama.cpp at 32 requests, batch 1 within
    1.3x of the bound, labelling >= 3x the naive scorer (medians, and per repeat)."""
    ours32, theirs32 = "project LocalBackend, batch 32", "llama.cpp server, 32 requests at a time"
    n, m = counts[ours32], counts[theirs32]
    ratio = (n / statistics.median(timings[ours32])) / (m / statistics.median(timings[theirs32]))
    per_repeat = ", ".join(f"{(n / a) / (m / b):.2f}x" for a, b in zip(timings[ours32], timings[theirs32]))
    ours, base = label.values()  # the project's scorer, then the naive one
    speedups = [b / a for a, b in zip(ours, base)]
    print(
        f"\ntargets, this run: batch 32 {ratio:.2f}x llama.cpp at 32 requests (per repeat {per_repeat}; "
        f"target >= 2x); batch 1 {statistics.median(b1_ratio):.2f}x the bound (per repeat "
        f"{', '.join(f'{r:.2f}x' for r in b1_ratio)}; target <= 1.3x); labelling "
        f"{statistics.median(speedups):.2f}x the naive scorer (per repeat {', '.join(f'{r:.2f}x' for r in speedups)}; "
        "target >= 3x)"
    )


if __name__ == "__main__":
    main()
