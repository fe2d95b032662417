"""RLAIF: soft preference labels from a feedback model (Bai et al. 2022, section 4.1).

    cai label --pairs runs/pairs --out runs/labels

Each pair is asked the paper's multiple-choice question ("Consider the following conversation
... Options: (A) ... (B) ... The answer is: (") under a feedback principle drawn at random per
label, after few-shot exemplars that each draw their own principle; the log-probabilities of
"A" and "B" are normalised into a soft label. The question, the draws and the arithmetic live
in :mod:`constitutional_ai.feedback`.

Beyond the paper (Lee et al. 2023): with ``--debias`` (default) every pair is scored in both
orders and the two probabilities averaged, cancelling the position bias small labellers
have; the stage measures that bias and records both raw values. ``--principles K`` averages
over K principles per label. ``--cot`` lets the model reason first ("Let's think step by
step:") and scores the answer after its reasoning; each such probability is clamped
to ``--clamp 0.4 0.6`` as in the paper, then averaged over orders, principles and
``--cot-samples`` reasonings (``p_a_unclamped`` keeps the average of the raw values).

A pair that cannot be labelled (its prompt does not fit in the feedback model's context, a
request that failed for good, an answer that is neither letter) is recorded in
``failures.jsonl`` and the stage goes on; the next run retries it. A backend that cannot
return log-probabilities stops the stage; ``--hard-labels`` instead
asks the model for the letter and records 0/1 labels, marked ``"hard": true``.

Output: ``labels.jsonl`` (provenance: principle ids, every raw score per order), the TRL
conversational preference file ``preferences.jsonl`` (``prompt``, ``chosen``, ``rejected``,
``p_chosen``, ...), ``stats.json`` (position bias, label confidence), ``manifest.json``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import opt, output_settings
from ..constitution import load_constitution
from ..data import read_jsonl
from ..feedback import (
    PROMPT_FORMAT_HELP,
    FeedbackOptions,
    label_chunk,  # noqa: F401 (kept importable from here)
    label_each,
    position_stats,
    preference_row,
)
from ..models import load_backend
from ..store import StageDir, manifest_identity, read_manifest


@dataclass
class LabelConfig:
    pairs: str = opt("runs/pairs", "Input folder written by `cai sample-pairs`", output=False)  # its identity is pinned
    out: str = opt("runs/labels", "Output folder (rerun the same command to resume)", output=False)
    model: str = opt("default", "Feedback model spec (needs log-probabilities unless --hard-labels)")
    constitution: str = opt(
        "default", "Constitution file with feedback principles, or 'default'", output=False
    )  # its fingerprint is pinned instead
    principles: int = opt(
        1, "Principles per label, each drawn at random; their probabilities are averaged (paper: 1)", min=1
    )
    debias: bool = opt(True, "Score both option orders and average them (Lee et al. 2023); --no-debias for one order")
    few_shot: int | None = opt(
        None, "Feedback exemplars before each question (default: all in the constitution)", min=0
    )
    exemplar_pool: int = opt(
        8,
        "Exemplar blocks (each exemplar with its own random principle) drawn once per "
        "run; each label uses one at random, so the model reuses its encoding "
        "(0: a fresh draw per pair)",
        min=0,
    )
    prompt_format: str = opt(
        "text",
        PROMPT_FORMAT_HELP,
    )
    cot: bool = opt(False, "Chain-of-thought: the model reasons before the answer is scored")
    clamp: list[float] = opt([0.4, 0.6], "With --cot: clamp each scoring to [LO, HI], then average (paper: 0.4 0.6)")
    cot_samples: int = opt(1, "With --cot: reasoning samples per scoring, probabilities averaged", min=1)
    cot_max_new_tokens: int = opt(160, "With --cot: token budget of each reasoning", min=1)
    cot_temperature: float = opt(1.0, "With --cot: sampling temperature of the reasoning", min=0)
    hard_labels: bool = opt(False, "For backends without log-probabilities: ask for the letter, record 0/1 labels")
    seed: int = opt(0, "Seed for principle draws and reasoning samples")
    limit: int | None = opt(None, "Label only the first N pairs", output=False, min=1)
    batch_size: int = opt(16, "Prompts per model batch", output=False, min=1)


def main(cfg: LabelConfig) -> Path:
    if len(cfg.clamp) != 2 or not 0 <= cfg.clamp[0] <= cfg.clamp[1] <= 1:
        raise ValueError(f"--clamp needs LO HI with 0 <= LO <= HI <= 1, got {cfg.clamp}")
    pm = read_manifest(cfg.pairs, stage="sample-pairs")
    c = load_constitution(cfg.constitution)
    if not c.feedback:
        raise ValueError(f"{c.source}: the constitution has no feedback principles; the label stage needs them")
    pairs = [r for _, r in read_jsonl(Path(cfg.pairs) / "pairs.jsonl")][: cfg.limit]
    opts = FeedbackOptions.of(cfg)
    settings = output_settings(cfg, constitution_sha256=c.fingerprint(), pairs_identity=manifest_identity(pm))
    with StageDir(cfg.out, "label", settings) as out:
        labels = out.records("labels.jsonl")
        failures = out.failures()
        todo = [r for r in pairs if r["key"] not in labels]
        t0 = time.time()
        if todo:
            backend = load_backend(cfg.model, batch_size=cfg.batch_size)
            print(
                f"[label] {len(todo)} pairs to label ({len(labels)} done), {opts.per_pair} scorings each, "
                f"with {backend.name}",
                file=sys.stderr,
            )
            chunk_pairs = max(1, cfg.batch_size // opts.per_pair)
            with tqdm(total=len(todo), desc="label", unit="pair", dynamic_ncols=True) as bar:
                for start in range(0, len(todo), chunk_pairs):
                    for rec in label_each(backend, todo[start : start + chunk_pairs], c, opts):
                        if "error" in rec:
                            failures.append(rec.pop("key"), rec.pop("error"), **rec)
                        else:
                            labels.append(rec)
                    bar.update(len(todo[start : start + chunk_pairs]))
        wanted = {r["key"] for r in pairs}
        done = [r for r in labels if r["key"] in wanted]
        out.write_jsonl("preferences.jsonl", [preference_row(r) for r in done])
        stats = position_stats(done)
        out.write_json("stats.json", stats)
        manifest = out.finish(
            {
                "config": asdict(cfg),
                "inputs": {"pairs": cfg.pairs, "constitution": c.source},
                "counts": {"pairs": len(pairs), "labels": len(done), "failed": len(pairs) - len(done)},
                "stats": stats,
                "files": {"labels": "labels.jsonl", "preferences": "preferences.jsonl", "stats": "stats.json"},
                "seconds": round(time.time() - t0, 1),
            }
        )
    sf, fs = stats["slot_following_rate"], stats["first_slot_rate"]
    print(
        f"[label] {len(done)} labels"
        + (f"; position bias: first-slot rate {fs:.2f}" if fs is not None else "")
        + (f", verdict follows the slot in {sf:.0%} of both-order checks" if sf is not None else "")
        + f" -> {manifest.parent}",
        file=sys.stderr,
    )
    if len(done) < len(pairs):
        print(
            f"[label] {len(pairs) - len(done)} pairs not labelled: see {Path(cfg.out) / 'failures.jsonl'}; "
            "rerun the same command to retry them",
            file=sys.stderr,
        )
    return Path(cfg.out)
