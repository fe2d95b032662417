"""Response pairs for AI feedback: two independent samples per prompt from a policy.

    cai sample-pairs --model runs/sft --limit 64 --out runs/pairs

The paper samples the pairs that the feedback model compares from the SL-CAI model
(section 4.1). Each response has its own seed, derived from ``(--seed, prompt id, index)``,
so a resumed run reproduces an uninterrupted one. ``--prompt-format auto`` renders the prompts
with the policy's chat template, or as plain "Human: ... Assistant:" text for a checkpoint without
one (or with the plain-text template an SL-CAI run on a base model leaves). Output: ``pairs.jsonl`` (one record per
prompt, appended as batches finish), ``failures.jsonl``, and ``manifest.json`` written last.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import opt, output_settings
from ..data import load_prompts, prompt_file
from ..generation import Failed, generate_each
from ..models import Sampling, derive_seed, load_backend
from ..prompts import GENERATION_FORMAT_HELP, STOP_STRINGS, clean_text
from ..store import StageDir, file_sha256


@dataclass
class SamplePairsConfig:
    out: str = opt("runs/pairs", "Output folder (rerun the same command to resume)", output=False)
    model: str = opt("default", "Policy model spec, typically the SL-CAI checkpoint folder")
    prompts: str = opt(
        "builtin:red_team", "Prompt file or builtin:red_team / builtin:helpful", output=False
    )  # its content hash is pinned instead
    limit: int | None = opt(None, "Use only the first N prompts", output=False, min=1)
    split: str = opt(
        "train",
        "Prompt split: train (default; evaluations use eval), eval or all; a file without split fields is used whole",
    )
    seed: int = opt(0, "Seed; each response's seed is derived from it, the prompt id and the index")
    temperature: float = opt(1.0, "Sampling temperature (paper: 1)", min=0)
    top_p: float = opt(1.0, "Nucleus sampling threshold (1 = off)")
    max_new_tokens: int = opt(200, "Token budget per response", min=1)
    batch_size: int = opt(16, "Conversations per model batch", output=False, min=1)
    truncation: str = opt("error", "Prompts longer than the context: 'error' or 'left'")
    prompt_format: str = opt("auto", GENERATION_FORMAT_HELP)


def main(cfg: SamplePairsConfig) -> Path:
    pfile = prompt_file(cfg.prompts)
    items = load_prompts(pfile, limit=cfg.limit, split=cfg.split)
    with StageDir(cfg.out, "sample-pairs", output_settings(cfg, prompts_sha256=file_sha256(pfile))) as out:
        pairs = out.records("pairs.jsonl")
        failures = out.failures()
        todo = [it for it in items if it.id not in pairs]
        sampling = Sampling(
            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=STOP_STRINGS
        )
        t0 = time.time()
        if todo:
            backend = load_backend(
                cfg.model, batch_size=cfg.batch_size, truncation=cfg.truncation, prompt_format=cfg.prompt_format
            )
            print(
                f"[sample-pairs] {len(todo)} prompts to sample ({len(pairs)} done) with {backend.name}", file=sys.stderr
            )
            step = max(1, cfg.batch_size // 2)
            with tqdm(total=len(todo), desc="sample-pairs", unit="pair", dynamic_ncols=True) as bar:
                for start in range(0, len(todo), step):
                    chunk = todo[start : start + step]
                    convs = [list(it.messages) for it in chunk for _ in range(2)]
                    seeds = [derive_seed(cfg.seed, it.id, k) for it in chunk for k in range(2)]
                    texts = generate_each(backend, convs, sampling, seeds)
                    for i, it in enumerate(chunk):
                        a, b = texts[2 * i], texts[2 * i + 1]
                        err = a if isinstance(a, Failed) else b
                        if isinstance(err, Failed):
                            failures.append(it.id, err.error, prompt_id=it.id, kind=err.kind)
                            continue
                        assert isinstance(a, str) and isinstance(b, str)
                        pairs.append(
                            {
                                "key": it.id,
                                "prompt_id": it.id,
                                "category": it.category,
                                "source": it.source,
                                "messages": [dict(m) for m in it.messages],
                                "responses": [clean_text(a), clean_text(b)],
                                "raw_responses": [a, b],
                                "seeds": seeds[2 * i : 2 * i + 2],
                                "model": backend.name,
                                "temperature": cfg.temperature,
                                "top_p": cfg.top_p,
                            }
                        )
                    bar.update(len(chunk))
        wanted = {it.id for it in items}
        n = sum(1 for r in pairs if r["key"] in wanted)
        manifest = out.finish(
            {
                "config": asdict(cfg),
                "inputs": {"prompts": str(pfile)},
                "counts": {
                    "prompts": len(items),
                    "pairs": n,
                    "failed": len(items) - n,
                    "identical_pairs": sum(
                        1 for r in pairs if r["key"] in wanted and r["responses"][0] == r["responses"][1]
                    ),
                },
                "files": {"pairs": "pairs.jsonl", "failures": "failures.jsonl"},
                "prompt_ids": [it.id for it in items],
                "seconds": round(time.time() - t0, 1),
            }
        )
    print(f"[sample-pairs] {n} pairs -> {manifest.parent}", file=sys.stderr)
    return Path(cfg.out)
