"""In-process LocalBackend vs OpenAIBackend against llama.cpp's server (xllamacpp), same model.

    python benchmarks/bench_engines.py [--prompts 32] [--max-new-tokens 64] [--pairs 4]

Both sides run the embedded SmolLM2-135M-Instruct: transformers on the dequantised fp32
checkpoint, llama.cpp on the Q4_1 GGUF itself, both on the same CPU threads (2 here).

* Generation: the first N bundled red-team prompts, T = 1, top-p 1, up to M new tokens.
  Local batch 32 (``--local-batches 1,32`` adds batch 1); HTTP at concurrency 1, 8 and 32 (the server has 32 slots of
  1024 tokens, started afresh for each level so none reuses another's prompt cache).
  Tokens are counted the same way for both: the returned texts re-tokenised.
* Labelling: ``score_choices(["A", "B"])`` on the real `cai label` prompts (default
  constitution and exemplars, both orders) for the first P bundled comparison pairs.

The request cache is off (every request really goes to the server). Prints a Markdown table
and writes ``benchmarks/results/engines-<UTC time>.json`` with the machine's load average
before and after, since figures on a shared machine mean little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

from constitutional_ai.constitution import load_constitution
from constitutional_ai.data import load_prompts
from constitutional_ai.feedback import FeedbackOptions, normalise, scoring_units
from constitutional_ai.models import Sampling, load_backend
from constitutional_ai.models.llamacpp import LlamaCppServer
from constitutional_ai.models.local import LocalBackend
from constitutional_ai.prompts import feedback_messages
from constitutional_ai.stages.label import LabelConfig


def label_conversations(n_pairs: int) -> list[list[dict]]:
    """The `cai label` feedback conversations (both orders) for the first comparison pairs."""
    text = files("constitutional_ai").joinpath("data/helpful_comparisons.jsonl").read_text()
    rows = [json.loads(x) for x in text.splitlines()][:n_pairs]
    c, cfg = load_constitution("default"), FeedbackOptions.of(LabelConfig(pairs="-", out="-"))
    convs = []
    for r in rows:
        responses = [r["chosen"][0]["content"], r["rejected"][0]["content"]]
        rec = {"key": r["id"], "messages": r["prompt"], "responses": responses}
        convs += [feedback_messages(u["question"], u["exemplars"]) for u in scoring_units(rec, c, cfg)]
    return convs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--local-batches", default="32", help="Comma-separated LocalBackend batch sizes, e.g. 1,32")
    args = ap.parse_args()
    load_before = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)
    convs = [list(it.messages) for it in load_prompts("builtin:red_team")[: args.prompts]]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    seeds = list(range(len(convs)))
    local = LocalBackend(None, device="cpu", batch_size=32)
    tok = local.tokenizer
    count = lambda texts: sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)  # noqa: E731
    feedback = label_conversations(args.pairs)
    prompts = [local.render(c) for c in feedback]
    prompt_tokens = sum(len(tok(p, add_special_tokens=False).input_ids) for p in prompts)
    rows: list[dict] = []

    def gen_row(name: str, texts: list[str], secs: float) -> None:
        n = count(texts)
        rows.append(
            {
                "task": "generate",
                "engine": name,
                "tokens": n,
                "seconds": round(secs, 2),
                "tokens_per_s": round(n / secs, 1),
            }
        )
        print(rows[-1], flush=True)

    def score_row(name: str, scores: list, secs: float, ref: list | None) -> None:
        pa = [normalise(*s) for s in scores]
        diff = max(abs(a - b) for a, b in zip(pa, ref)) if ref else 0.0
        rows.append(
            {
                "task": "label",
                "engine": name,
                "prompts": len(prompts),
                "prompt_tokens": prompt_tokens,
                "seconds": round(secs, 2),
                "prompt_tokens_per_s": round(prompt_tokens / secs, 1),
                "max_abs_diff_p_a_vs_local": round(diff, 4),
            }
        )
        print(rows[-1], flush=True)

    for bs in [int(x) for x in args.local_batches.split(",")]:
        local.batch_size = bs
        texts, secs = timed(lambda: local.generate(convs, sampling, seeds=seeds))
        gen_row(f"LocalBackend batch {bs}", texts, secs)
    local.batch_size = 16
    ref_scores, secs = timed(lambda: local.score_choices(prompts, ["A", "B"]))
    ref = [normalise(*s) for s in ref_scores]
    score_row("LocalBackend batch 16", ref_scores, secs, None)

    metrics = {}
    for conc in (1, 8, 32):
        # A fresh server per level, so no level reuses prompts another one left in llama.cpp's slot cache.
        with LlamaCppServer(n_parallel=32, slot_ctx=2048, threads=args.threads) as server:
            http = load_backend(f"openai:smollm2@{server.url}", concurrency=conc, cache=False)
            http.generate(convs[:1], Sampling(max_new_tokens=4))  # warm-up (not timed)
            texts, secs = timed(lambda: http.generate(convs, sampling, seeds=seeds))
            gen_row(f"llama.cpp server, concurrency {conc}", texts, secs)
            scores, secs = timed(lambda: http.score_choices(prompts, ["A", "B"]))
            score_row(f"llama.cpp server, concurrency {conc}", scores, secs, ref)
            metrics[f"concurrency {conc}"] = server.metrics()
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "args": vars(args),
        "rows": rows,
        "server_metrics": metrics,
    }
    out = Path(__file__).parent / "results" / f"engines-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("\n| task | engine | work | seconds | throughput |\n|---|---|---:|---:|---:|")
    for r in rows:
        if r["task"] == "generate":
            print(
                f"| generate | {r['engine']} | {r['tokens']} new tokens | {r['seconds']} | {r['tokens_per_s']} tok/s |"
            )
        else:
            print(
                f"| label | {r['engine']} | {r['prompts']} prompts, {r['prompt_tokens']} tokens | {r['seconds']} | "
                f"{r['prompt_tokens_per_s']} prompt tok/s (max dP(A) {r['max_abs_diff_p_a_vs_local']}) |"
            )
    print(f"\nload average before {load_before}, after {result['load_avg_after']}; results: {out}")


if __name__ == "__main__":
    main()
