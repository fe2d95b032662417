"""RLAIF: soft preference labels from a feedback model (Bai et al. 2022, section 4.1).

    cai label --pairs runs/pairs --out runs/labels

For each response pair the feedback model sees the paper's multiple-choice question::

    Consider the following conversation between a human and an assistant:
    Human: ...
    [a feedback principle, drawn at random per label]
    Options:
    (A) [response]
    (B) [response]
    The answer is: (

and the log-probabilities of "A" and "B" as the next token are normalised into a soft label.
Few-shot exemplars precede the question, each with its own independently drawn principle.

Beyond the paper (Lee et al. 2023): with ``--debias`` (default) every pair is scored in both
orders and the two probabilities averaged, cancelling the position bias small labellers
have; the stage measures that bias and records both raw values. ``--principles K`` averages
over K principles per label. ``--cot`` lets the model reason first ("Let's think step by
step:") and scores the answer after its reasoning; those probabilities are clamped to
``--clamp 0.4 0.6`` as in the paper, and can be averaged over ``--cot-samples`` reasonings.

A backend that cannot return log-probabilities stops the stage; ``--hard-labels`` instead
asks the model for the letter and records 0/1 labels, marked ``"hard": true``.

Output: ``labels.jsonl`` (provenance: principle ids, every raw score per order), the TRL
conversational preference file ``preferences.jsonl`` (``prompt``, ``chosen``, ``rejected``,
``p_chosen``, ...), ``stats.json`` (position bias, label confidence), ``manifest.json``.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import opt, parse_config
from ..constitution import Constitution, load_constitution
from ..data import read_jsonl, write_jsonl_atomic
from ..models import BackendError, LogprobsUnavailable, Sampling, derive_seed, load_backend
from ..prompts import COT_STOP, feedback_messages, feedback_question
from ..store import StageDir, manifest_identity, read_manifest, write_json_atomic


@dataclass
class LabelConfig:
    pairs: str = opt("runs/pairs", "Input folder written by `cai sample-pairs`")
    out: str = opt("runs/labels", "Output folder (rerun the same command to resume)")
    model: str = opt("default", "Feedback model spec (needs log-probabilities unless --hard-labels)")
    constitution: str = opt("default", "Constitution file with feedback principles, or 'default'")
    principles: int = opt(1, "Principles per label, each drawn at random; their probabilities are averaged (paper: 1)")
    debias: bool = opt(True, "Score both option orders and average them (Lee et al. 2023); --no-debias for one order")
    few_shot: int | None = opt(None, "Feedback exemplars before each question (default: all in the constitution)")
    cot: bool = opt(False, "Chain-of-thought: the model reasons before the answer is scored")
    clamp: list[float] = opt([0.4, 0.6], "With --cot: clamp label probabilities to [LO, HI] (paper: 0.4 0.6)")
    cot_samples: int = opt(1, "With --cot: reasoning samples per scoring, probabilities averaged")
    cot_max_new_tokens: int = opt(160, "With --cot: token budget of each reasoning")
    cot_temperature: float = opt(1.0, "With --cot: sampling temperature of the reasoning")
    hard_labels: bool = opt(False, "For backends without log-probabilities: ask for the letter, record 0/1 labels")
    seed: int = opt(0, "Seed for principle draws and reasoning samples")
    limit: int | None = opt(None, "Label only the first N pairs")
    batch_size: int = opt(16, "Prompts per model batch")


def normalise(lp_a: float, lp_b: float) -> float:
    """P(A) from the two options' log-probabilities (softmax over just these two)."""
    m = max(lp_a, lp_b)
    ea, eb = math.exp(lp_a - m), math.exp(lp_b - m)
    return ea / (ea + eb)


def clamp(p: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, p))


def draw_principles(c: Constitution, cfg: LabelConfig, key: str) -> list[tuple[str, list[str]]]:
    """For each of K principles: (principle id, [principle id of each few-shot exemplar]).

    Each few-shot exemplar draws its own principle, independently of the label's principle.
    The exemplar draws are made once per pair and shared by its K principles and both
    orders, so all of a pair's prompts begin with the same exemplars and conversation —
    a prefix the backend encodes once.
    """
    n_ex = len(c.feedback_examples) if cfg.few_shot is None else min(cfg.few_shot, len(c.feedback_examples))
    shots = [random.Random(derive_seed(cfg.seed, key, "exemplar", e)).choice(c.feedback).id for e in range(n_ex)]
    return [(random.Random(derive_seed(cfg.seed, key, "principle", k)).choice(c.feedback).id, shots)
            for k in range(cfg.principles)]


def scoring_units(rec: dict, c: Constitution, cfg: LabelConfig) -> list[dict]:
    """Every (principle, order, reasoning sample) question to ask about one pair."""
    a, b = rec["responses"]
    orders = [("AB", a, b), ("BA", b, a)] if cfg.debias else [("AB", a, b)]
    units = []
    for k, (pid, shots) in enumerate(draw_principles(c, cfg, rec["key"])):
        exemplars = []
        for ex, sp in zip(c.feedback_examples, shots):
            q = feedback_question(ex.messages, ex.response_a, ex.response_b, c.feedback_principle(sp).text)
            exemplars.append((q, ex.preferred, ex.reasoning))
        for order, first, second in orders:
            q = feedback_question(rec["messages"], first, second, c.feedback_principle(pid).text)
            for s in range(cfg.cot_samples if cfg.cot else 1):
                units.append({"principle": pid, "exemplar_principles": shots, "order": order, "sample": s,
                              "k": k, "question": q, "exemplars": exemplars})
    return units


def label_chunk(backend, recs: list[dict], c: Constitution, cfg: LabelConfig) -> list[dict]:
    """Score a chunk of pairs in as few batched backend calls as possible."""
    units = [(r, u) for r in recs for u in scoring_units(r, c, cfg)]
    reasonings = [""] * len(units)
    if cfg.cot:
        convs = [feedback_messages(u["question"], u["exemplars"], cot=True) for _, u in units]
        seeds = [derive_seed(cfg.seed, r["key"], "cot", u["k"], u["order"], u["sample"]) for r, u in units]
        sampling = Sampling(temperature=cfg.cot_temperature, max_new_tokens=cfg.cot_max_new_tokens, stop=COT_STOP)
        reasonings = backend.generate(convs, sampling, seeds=seeds)
    final = [feedback_messages(u["question"], u["exemplars"], cot=cfg.cot, reasoning=reasonings[i] if cfg.cot else None)
             for i, (_, u) in enumerate(units)]
    if cfg.hard_labels:
        letters = backend.generate(final, Sampling(temperature=0.0, max_new_tokens=2), seeds=[0] * len(final))
        logprobs = [[] for _ in units]
        p_first = [1.0 if t.strip().upper().startswith("A") else 0.0 if t.strip().upper().startswith("B") else math.nan
                   for t in letters]
    else:
        try:
            logprobs = backend.score_choices([backend.render(m) for m in final], ["A", "B"])
        except LogprobsUnavailable as e:
            raise BackendError(
                f"{e}\nSoft labels need the answer log-probabilities. Use a backend that returns them "
                "(local transformers, or vLLM/SGLang's OpenAI server), or pass --hard-labels to record "
                "hard 0/1 labels instead (marked as such)."
            ) from None
        # None: the server's capped top-k did not contain that option, so there is no label.
        p_first = [math.nan if None in lp else normalise(*lp) for lp in logprobs]
    out = []
    for r in recs:
        scores = []
        for i, (rr, u) in enumerate(units):
            if rr is not r:
                continue
            pa = p_first[i] if u["order"] == "AB" else 1.0 - p_first[i]  # P(response a is better)
            scores.append({"principle": u["principle"], "exemplar_principles": u["exemplar_principles"],
                           "order": u["order"], "sample": u["sample"], "logprobs": logprobs[i],
                           "p_first": p_first[i], "p_a": pa, "reasoning": reasonings[i]})
        if any(math.isnan(s["p_a"]) for s in scores):
            absent = any(None in s["logprobs"] for s in scores)
            why = "an option was absent from the server's top-k log-probabilities" if absent else \
                "the model's answer was neither (A) nor (B)"
            out.append({"key": r["key"], "error": why,
                        "answers": [s["p_first"] for s in scores]})
            continue
        p_raw = sum(s["p_a"] for s in scores) / len(scores)
        p = clamp(p_raw, *cfg.clamp) if cfg.cot else p_raw
        out.append({"key": r["key"], "prompt_id": r["prompt_id"], "messages": r["messages"],
                    "responses": r["responses"], "principles": sorted({s["principle"] for s in scores}),
                    "scores": scores, "p_a_unclamped": p_raw, "p_a": p, "hard": cfg.hard_labels,
                    "cot": cfg.cot, "model": backend.name, "seed": cfg.seed})
    return out


def preference_row(rec: dict) -> dict:
    """TRL conversational preference format, chosen = the response the label favours."""
    a, b = rec["responses"]
    p = rec["p_a"]
    chosen, rejected, pc = (a, b, p) if p >= 0.5 else (b, a, 1.0 - p)
    return {"prompt": rec["messages"], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": pc,
            "pair_id": rec["key"], "principles": rec["principles"], "hard": rec["hard"]}


def position_stats(records: list[dict]) -> dict:
    """How much the labeller follows the slot rather than the content.

    ``first_slot_rate``: share of single-order scorings whose verdict is (A) (0.5 = no bias).
    ``slot_following_rate``: share of (pair, principle, sample) scored in both orders whose
    verdict picks the same slot both times, i.e. contradicts itself (0 = consistent).
    ``single_order_agreement``: share of labels where the first order alone agrees with the
    final (debiased) label.
    """
    singles = [s for r in records for s in r["scores"]]
    both, follow, agree = 0, 0, 0
    for r in records:
        by = {}
        for s in r["scores"]:
            by.setdefault((s["principle"], s["sample"], tuple(s["exemplar_principles"])), {})[s["order"]] = s
        for d in by.values():
            if "AB" in d and "BA" in d:
                both += 1
                follow += (d["AB"]["p_first"] > 0.5) == (d["BA"]["p_first"] > 0.5)
        ab = [s["p_a"] for s in r["scores"] if s["order"] == "AB"]
        agree += (sum(ab) / len(ab) > 0.5) == (r["p_a"] > 0.5)
    n = max(1, len(records))
    return {
        "labels": len(records),
        "scorings": len(singles),
        "mean_p_first": sum(s["p_first"] for s in singles) / max(1, len(singles)),
        "first_slot_rate": sum(s["p_first"] > 0.5 for s in singles) / max(1, len(singles)),
        "slot_following_rate": follow / both if both else None,
        "single_order_agreement": agree / n,
        "mean_confidence_single_order": sum(abs(s["p_a"] - 0.5) for s in singles if s["order"] == "AB")
        / max(1, sum(s["order"] == "AB" for s in singles)),
        "mean_confidence": sum(abs(r["p_a"] - 0.5) for r in records) / n,
        "mean_p_chosen": sum(max(r["p_a"], 1 - r["p_a"]) for r in records) / n,
    }


def main(cfg: LabelConfig) -> Path:
    if len(cfg.clamp) != 2 or not 0 <= cfg.clamp[0] <= cfg.clamp[1] <= 1:
        raise ValueError(f"--clamp needs LO HI with 0 <= LO <= HI <= 1, got {cfg.clamp}")
    if cfg.principles < 1 or cfg.cot_samples < 1:
        raise ValueError("--principles and --cot-samples must be at least 1")
    pm = read_manifest(cfg.pairs, stage="sample-pairs")
    c = load_constitution(cfg.constitution)
    if not c.feedback:
        raise ValueError(f"{c.source}: the constitution has no feedback principles; the label stage needs them")
    pairs = [r for _, r in read_jsonl(Path(cfg.pairs) / "pairs.jsonl")][: cfg.limit]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "limit", "batch_size", "pairs")}
    settings.update(constitution_sha256=c.fingerprint(), pairs_identity=manifest_identity(pm))
    out = StageDir(cfg.out, "label", settings)
    try:
        labels = out.records("labels.jsonl")
        failures = out.records("failures.jsonl")
        todo = [r for r in pairs if r["key"] not in labels]
        t0 = time.time()
        if todo:
            out.reopen()
            backend = load_backend(cfg.model, batch_size=cfg.batch_size)
            per_pair = cfg.principles * (2 if cfg.debias else 1) * (cfg.cot_samples if cfg.cot else 1)
            print(f"[label] {len(todo)} pairs to label ({len(labels)} done), {per_pair} scorings each, with {backend.name}",
                  file=sys.stderr)
            chunk_pairs = max(1, cfg.batch_size // per_pair)
            with tqdm(total=len(todo), desc="label", unit="pair", dynamic_ncols=True) as bar:
                for start in range(0, len(todo), chunk_pairs):
                    for rec in label_chunk(backend, todo[start : start + chunk_pairs], c, cfg):
                        if "error" in rec:
                            failures.append({**rec, "key": f"{rec['key']}@{time.time_ns()}"})
                        else:
                            labels.append(rec)
                    bar.update(len(todo[start : start + chunk_pairs]))
        wanted = {r["key"] for r in pairs}
        done = [r for r in labels if r["key"] in wanted]
        write_jsonl_atomic(Path(cfg.out) / "preferences.jsonl", [preference_row(r) for r in done])
        stats = position_stats(done)
        write_json_atomic(Path(cfg.out) / "stats.json", stats)
        manifest = out.finish({
            "config": asdict(cfg),
            "inputs": {"pairs": cfg.pairs, "constitution": c.source},
            "counts": {"pairs": len(pairs), "labels": len(done), "failed": len(pairs) - len(done)},
            "stats": stats,
            "files": {"labels": "labels.jsonl", "preferences": "preferences.jsonl", "stats": "stats.json"},
            "seconds": round(time.time() - t0, 1),
        })
    finally:
        out.close()
    sf = stats["slot_following_rate"]
    print(f"[label] {len(done)} labels; position bias: first-slot rate {stats['first_slot_rate']:.2f}"
          + (f", verdict follows the slot in {sf:.0%} of both-order checks" if sf is not None else "")
          + f" -> {manifest.parent}", file=sys.stderr)
    return Path(cfg.out)


def cli(argv: list[str] | None = None) -> int:
    main(parse_config(LabelConfig, argv, "cai label", __doc__.split("\n\n")[0]))
    return 0
