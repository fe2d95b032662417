"""SL-CAI data: critique → revision (Bai et al. 2022, section 3).

    cai revise --limit 8 --rounds 2 --out runs/revise

For every prompt (and each of ``--samples`` samples) the model writes an initial response,
then ``--rounds`` sequential rounds follow: a critique/revision principle is drawn at random
**per round, with replacement**, the model critiques its current response under that
principle, and revises it. Few-shot exemplars from the constitution precede every request.
Every round's revision is kept (SL-CAI-n trains on revisions up to round n).

Each generated turn records whether it was cut at ``--max-new-tokens`` (``truncated``, from
the backend's finish reason; ``null`` where the backend does not say). A revision that comes
back empty is stored as ``""`` with ``empty_revision: true`` (the chain goes on from the
previous response, but that response is never passed off as this round's revision); one equal
to the response it revises is flagged ``unchanged`` (a "no problem found" revision).
``sft.jsonl`` leaves out empty revisions (there is nothing to train) and carries the
``truncated``/``unchanged`` flags of the rest, so ``cai train sft`` can exclude them.

Output folder:
  records.jsonl   one provenance record per prompt × sample (appended as each finishes)
  failures.jsonl  prompts that could not be processed, with the error (retried on rerun)
  sft.jsonl       TRL conversational SFT data (``messages``) for the chosen round(s)
  manifest.json   written last

Prompt format (``--prompt-format``): ``auto`` gives a chat model its chat template and a model
without one (a pretrained base model, e.g. ``--model gemma3-270m``) the paper's plain-text
layout — ``Human:``/``Assistant:`` turns, then ``CritiqueRequest: ...`` / ``Critique:`` and
``RevisionRequest: ...`` / ``Revision:``, the few-shot exemplars first in the same layout (see
:mod:`constitutional_ai.prompts`); ``chat`` or ``text`` force one.

Work is batched across prompts: all chains in a chunk take their initial response together,
then their round-1 critiques together, and so on. Each chain's randomness (principle draws,
sampling) comes from seeds derived from ``(--seed, prompt id, sample, step)``, so a resumed
run reproduces an uninterrupted one.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import opt, output_settings
from ..constitution import Constitution, load_constitution
from ..data import load_prompts, prompt_file
from ..generation import Failed, check_fits, generate_each
from ..models import Backend, Sampling, derive_seed, load_backend
from ..models.base import finish_reason
from ..prompts import GENERATION_FORMAT_HELP, STOP_STRINGS, clean_text, critique_messages, revision_messages
from ..store import StageDir, file_sha256


@dataclass
class ReviseConfig:
    out: str = opt("runs/revise", "Output folder (created; rerun the same command to resume)", output=False)
    prompts: str = opt(
        "builtin:red_team",
        "Prompt file (.jsonl/.csv/.txt, HH transcripts) or builtin:red_team / builtin:helpful",
        output=False,
    )  # its content hash is pinned instead
    model: str = opt(
        "default",
        "Model spec: default (embedded SmolLM2-135M), gemma3-270m, a checkpoint folder, a hub id, or openai:MODEL@URL",
    )
    constitution: str = opt(
        "default", "Constitution file (native YAML/JSON, Anthropic or llm-swarm JSON) or 'default'", output=False
    )  # its fingerprint is pinned instead
    rounds: int = opt(4, "Sequential critique/revision rounds per response (paper: 4)", min=1)
    samples: int = opt(1, "Independent initial responses (each revised) per prompt", min=1)
    limit: int | None = opt(None, "Use only the first N prompts", output=False, min=1)
    split: str = opt(
        "train",
        "Prompt split: train (default; evaluations use eval), eval or all; a file without split fields is used whole",
    )
    seed: int = opt(0, "Seed for principle draws and sampling")
    temperature: float = opt(1.0, "Sampling temperature for every generation (paper: 1)")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1 = off)")
    max_new_tokens: int = opt(200, "Token budget for each response, critique and revision", min=1)
    few_shot: int | None = opt(
        None, "Number of the constitution's revision exemplars shown before each request (default: all)", min=0
    )
    no_critique: bool = opt(False, "Revise directly without a critique step (the paper's ablation)")
    sft_rounds: str = opt(
        "last", "Revisions in sft.jsonl: 'last', 'all' (one example per round), or N (round N only)", output=False
    )  # sft.jsonl is rebuilt from the records on every run
    batch_size: int = opt(
        16, "Conversations per model batch; also the number of prompts in flight", output=False, min=1
    )
    truncation: str = opt("error", "Prompts longer than the context: 'error' or 'left' (drop oldest turns)")
    prompt_format: str = opt("auto", GENERATION_FORMAT_HELP)


def run_chains(
    backend: Backend,
    constitution: Constitution,
    cfg: ReviseConfig,
    chains: list[dict],
    bar: tqdm,
) -> tuple[list[dict], list[dict]]:
    """Run the initial response and every critique/revision round for a chunk of chains.

    Returns (finished records, failures). A chain whose prompt outgrows the context is
    reported as a failure and dropped; the others go on.
    """
    exemplars = (
        constitution.revision_examples[: cfg.few_shot] if cfg.few_shot is not None else constitution.revision_examples
    )
    sampling = Sampling(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=STOP_STRINGS
    )
    failures: list[dict] = []

    def step(live: list[dict], name: str, build) -> list[dict]:
        """Generate one turn for every live chain; returns the chains still alive."""
        texts = generate_each(
            backend, [build(ch) for ch in live], sampling, [derive_seed(cfg.seed, ch["key"], name) for ch in live]
        )
        bar.update(len(live))
        ok = []
        for ch, t in zip(live, texts):
            if isinstance(t, Failed):
                failures.append(
                    {"key": ch["key"], "prompt_id": ch["prompt_id"], "step": name, "kind": t.kind, "error": t.error}
                )
            else:
                ch["_last_raw"] = t
                why = finish_reason(t)
                ch["_last_truncated"] = None if why is None else why == "length"
                ok.append(ch)
        return ok

    live = step(chains, "initial", lambda ch: ch["messages"])
    for ch in live:
        ch["initial_response"] = clean_text(ch.pop("_last_raw"))
        ch["initial_truncated"] = ch.pop("_last_truncated")
        ch["_current"] = ch["initial_response"]
        ch["rounds"] = []
    for r in range(1, cfg.rounds + 1):
        for ch in live:
            rng = random.Random(derive_seed(cfg.seed, ch["key"], "principle", r))
            ch["_principle"] = rng.choice(constitution.critique_revision)  # with replacement
        if not cfg.no_critique:
            live = step(
                live,
                f"critique{r}",
                lambda ch: critique_messages(ch["messages"], ch["_current"], ch["_principle"], exemplars, constitution),
            )
            for ch in live:
                ch["_critique"] = clean_text(ch.pop("_last_raw"))
                ch["_critique_truncated"] = ch.pop("_last_truncated")
        live = step(
            live,
            f"revision{r}",
            lambda ch: revision_messages(
                ch["messages"],
                ch["_current"],
                ch["_principle"],
                exemplars,
                constitution,
                None if cfg.no_critique else ch["_critique"],
            ),
        )
        for ch in live:
            raw = ch.pop("_last_raw")
            revision = clean_text(raw)
            ch["rounds"].append(
                {
                    "round": r,
                    "principle": ch["_principle"].id,
                    "critique": "" if cfg.no_critique else ch["_critique"],
                    "critique_truncated": None if cfg.no_critique else ch["_critique_truncated"],
                    "revision": revision,  # "" when empty: never the previous response under this round's name
                    "raw_revision": raw,
                    "truncated": ch.pop("_last_truncated"),
                    "empty_revision": not revision,  # the next round revises the previous response again
                    "unchanged": bool(revision) and revision == ch["_current"],
                    "current": revision or ch["_current"],  # the response the chain holds after this round
                }
            )
            if revision:
                ch["_current"] = revision
    done = []
    for ch in live:
        done.append({k: v for k, v in ch.items() if not k.startswith("_")})
    return done, failures


def sft_rows_all(records: list[dict], which: str) -> list[dict]:
    """The (record, round) targets ``which`` selects, empty revisions included (for counting)."""
    out = []
    for rec in records:
        rounds = rec["rounds"]
        if which == "all":
            out += rounds
        elif which == "last":
            out += rounds[-1:]
        else:
            out += [x for x in rounds if x["round"] == int(which)]
    return out


def sft_rows(records: list[dict], which: str) -> list[dict]:
    """TRL conversational SFT examples from finished records."""
    rows = []
    for rec in records:
        rounds = rec["rounds"]
        if not rounds:
            continue
        if which == "all":
            chosen = rounds
        elif which == "last":
            chosen = rounds[-1:]
        else:
            n = int(which)
            chosen = [x for x in rounds if x["round"] == n]
        for x in chosen:
            if not x["revision"].strip():
                continue  # an empty revision is no target (counted in the manifest)
            rows.append(
                {
                    "messages": list(rec["messages"]) + [{"role": "assistant", "content": x["revision"]}],
                    "prompt_id": rec["prompt_id"],
                    "round": x["round"],
                    "principle": x["principle"],
                    "truncated": x.get("truncated"),
                    "unchanged": x.get("unchanged", False),
                }
            )
    return rows


def main(cfg: ReviseConfig) -> Path:
    """Run the stage; returns the output folder."""
    if cfg.sft_rounds not in ("last", "all") and not (
        cfg.sft_rounds.isdigit() and 1 <= int(cfg.sft_rounds) <= cfg.rounds
    ):
        raise ValueError(
            f"--sft-rounds must be 'last', 'all' or a round number 1..{cfg.rounds}, got {cfg.sft_rounds!r}"
        )
    pfile = prompt_file(cfg.prompts)
    items = load_prompts(pfile, limit=cfg.limit, split=cfg.split)
    constitution = load_constitution(cfg.constitution)
    if not constitution.critique_revision:
        raise ValueError(f"{constitution.source}: the constitution has no critique/revision principles")
    settings = output_settings(cfg, prompts_sha256=file_sha256(pfile), constitution_sha256=constitution.fingerprint())
    with StageDir(cfg.out, "revise", settings) as out:
        records = out.records("records.jsonl")
        failures = out.failures()
        todo: list[dict[str, Any]] = [
            {
                "key": f"{it.id}/s{s}",
                "prompt_id": it.id,
                "sample": s,
                "category": it.category,
                "source": it.source,
                "messages": [dict(m) for m in it.messages],
            }
            for it in items
            for s in range(cfg.samples)
        ]
        todo = [ch for ch in todo if ch["key"] not in records]
        t0 = time.time()
        if todo:
            backend = load_backend(
                cfg.model, batch_size=cfg.batch_size, truncation=cfg.truncation, prompt_format=cfg.prompt_format
            )
            check_fits(backend, items, cfg.max_new_tokens)
            steps_per_chain = 1 + cfg.rounds * (1 if cfg.no_critique else 2)
            print(
                f"[revise] {len(todo)} responses to write ({len(records)} already done) with {backend.name}",
                file=sys.stderr,
            )
            with tqdm(total=len(todo) * steps_per_chain, desc="revise", unit="gen", dynamic_ncols=True) as bar:
                for start in range(0, len(todo), cfg.batch_size):
                    chunk = todo[start : start + cfg.batch_size]
                    done, failed = run_chains(backend, constitution, cfg, chunk, bar)
                    for rec in done:
                        rec.update(
                            model=backend.name,
                            seed=cfg.seed,
                            mode="no-critique" if cfg.no_critique else "critique",
                            constitution=constitution.fingerprint(),
                        )
                        records.append(rec)
                    for f in failed:
                        failures.append(f.pop("key"), f.pop("error"), **f)
                    bar.set_postfix(done=len(records), failed=len(failed))
        else:
            print(f"[revise] all {len(records)} responses already done in {cfg.out}", file=sys.stderr)
        wanted = {f"{it.id}/s{s}" for it in items for s in range(cfg.samples)}
        finished = [r for r in records if r["key"] in wanted]
        rows = sft_rows(finished, cfg.sft_rounds)
        out.write_jsonl("sft.jsonl", rows)
        missing = len(wanted) - len(finished)
        principle_counts: dict[str, int] = {}
        for r in finished:
            for x in r["rounds"]:
                principle_counts[x["principle"]] = principle_counts.get(x["principle"], 0) + 1
        manifest = out.finish(
            {
                "config": asdict(cfg),
                "inputs": {"prompts": str(pfile), "constitution": constitution.source},
                "counts": {
                    "prompts": len(items),
                    "records": len(finished),
                    "sft_examples": len(rows),
                    "failed": missing,
                    "empty_revisions": sum(x["empty_revision"] for r in finished for x in r["rounds"]),
                    "truncated_revisions": sum(bool(x.get("truncated")) for r in finished for x in r["rounds"]),
                    "unchanged_revisions": sum(bool(x.get("unchanged")) for r in finished for x in r["rounds"]),
                    "truncated_initial": sum(bool(r.get("initial_truncated")) for r in finished),
                    "sft_empty_skipped": len(sft_rows_all(finished, cfg.sft_rounds)) - len(rows),
                },
                "principle_counts": principle_counts,
                "prompt_ids": [it.id for it in items],
                "files": {"records": "records.jsonl", "sft": "sft.jsonl", "failures": "failures.jsonl"},
                "seconds": round(time.time() - t0, 1),
            }
        )
    print(
        f"[revise] {len(finished)} records, {len(rows)} SFT examples, {missing} failed -> {manifest.parent}",
        file=sys.stderr,
    )
    if missing:
        print(f"[revise] see {Path(cfg.out) / 'failures.jsonl'}; rerun the same command to retry them", file=sys.stderr)
    return Path(cfg.out)
