"""AI feedback (Bai et al. 2022, section 4.1): the multiple-choice question, soft labels, position bias.

The label stage (``cai label``), the HHH evaluation and the head-to-head judge all ask a
feedback model the same question about two responses::

    Consider the following conversation between a human and an assistant:
    Human: ...
    [a feedback principle, drawn at random per label]
    Options:
    (A) [response]
    (B) [response]
    The answer is: (

and normalise the log-probabilities of "A" and "B" into P(A). Here are the pieces, usable
from a notebook as from the stages::

    from constitutional_ai.feedback import FeedbackOptions, label_chunk
    labels = label_chunk(backend, [{"key": "p1", "messages": [...], "responses": [a, b]}],
                         constitution, FeedbackOptions(debias=True))

Few-shot exemplars precede the question, each with its own independently drawn principle;
with ``debias`` every pair is scored in both orders and averaged (Lee et al. 2023); with
``cot`` the model reasons first and each scoring's probability is clamped to ``clamp`` before
the average over orders, reasoning samples and principles (the paper clamps each CoT label;
clamping the average instead would let one confident order outvote a hesitant one).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Any

from .constitution import Constitution
from .metrics import mean
from .models import Backend, BackendError, LogprobsUnavailable, PromptTooLong, Sampling, derive_seed
from .models.base import RequestFailed
from .prompts import COT_STOP, FEEDBACK_FORMATS, feedback_messages, feedback_question, feedback_text

#: Completes the error raised when a labeller has no log-probabilities.
#: ``--prompt-format`` help, the same for every stage that asks the feedback question.
PROMPT_FORMAT_HELP = (
    "How the question reaches the model: 'text' (the paper's plain "
    "'Human: ... Assistant: ...' text ending 'The answer is: (', no chat template) "
    "or 'chat' (its chat template); CoT always uses chat"
)
LABEL_HINT = (
    "Soft labels need the answer log-probabilities. Use a backend that returns them "
    "(local transformers, or vLLM/SGLang's OpenAI server), or pass --hard-labels to record "
    "hard 0/1 labels instead (marked as such)."
)


@dataclass(frozen=True)
class FeedbackOptions:
    """How each pair is asked about (the label stage's flags of the same names)."""

    principles: int = 1
    debias: bool = True
    few_shot: int | None = None
    exemplar_pool: int = 8
    cot: bool = False
    clamp: tuple[float, float] = (0.4, 0.6)
    cot_samples: int = 1
    cot_max_new_tokens: int = 160
    cot_temperature: float = 1.0
    hard_labels: bool = False
    seed: int = 0
    #: "chat": the question as chat turns through the model's template; "text": the paper's
    #: plain-text prompt (see :func:`~constitutional_ai.prompts.feedback_text`). Only direct
    #: scoring can be plain text: chain-of-thought and hard labels make the model *write* a
    #: turn, so they always use the chat template (each label records the format it used).
    prompt_format: str = "chat"

    def __post_init__(self) -> None:
        if self.prompt_format not in FEEDBACK_FORMATS:
            raise ValueError(f"prompt format must be one of {', '.join(FEEDBACK_FORMATS)}, got {self.prompt_format!r}")

    @property
    def effective_format(self) -> str:
        """The format the scoring prompts are rendered in (see :attr:`prompt_format`)."""
        return "chat" if self.cot or self.hard_labels else self.prompt_format

    @classmethod
    def of(cls, cfg: Any, **overrides: Any) -> FeedbackOptions:
        """The options held by a stage config with fields of the same names."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        if "clamp" in values:
            values["clamp"] = tuple(values["clamp"])
        return cls(**{**values, **overrides})

    @property
    def per_pair(self) -> int:
        """Scoring prompts per pair: principles × orders × reasoning samples."""
        return self.principles * (2 if self.debias else 1) * (self.cot_samples if self.cot else 1)


def normalise(lp_a: float, lp_b: float) -> float:
    """P(A) from the two options' log-probabilities (softmax over just these two)."""
    m = max(lp_a, lp_b)
    ea, eb = math.exp(lp_a - m), math.exp(lp_b - m)
    return ea / (ea + eb)


def clamp(p: float, lo: float, hi: float) -> float:
    """``p`` limited to ``[lo, hi]``."""
    return min(hi, max(lo, p))


def feedback_exemplars(c: Constitution, cfg: FeedbackOptions) -> list:
    """The constitution's feedback exemplars for this mode: ``cot_only`` ones only with ``--cot``
    (the paper shows 5 exemplars before a plain question and 6 before a chain-of-thought one)."""
    return [e for e in c.feedback_examples if cfg.cot or not e.cot_only]


def draw_principles(c: Constitution, cfg: FeedbackOptions, key: str) -> list[tuple[str, list[str]]]:
    """For each of K principles: (principle id, [principle id of each few-shot exemplar]).

    Each few-shot exemplar draws its own principle, independently of the label's principle.
    The exemplar draws are made once per pair and shared by its K principles and both
    orders, so all of a pair's prompts begin with the same exemplars and conversation —
    a prefix the backend encodes once. With ``exemplar_pool`` N > 0 a pair's exemplar block
    is one of N blocks drawn once per run, so different pairs share it too and a backend
    with a prefix cache encodes each block once per run rather than once per pair.
    """
    n_all = len(feedback_exemplars(c, cfg))
    n_ex = n_all if cfg.few_shot is None else min(cfg.few_shot, n_all)
    if cfg.exemplar_pool > 0:
        # A pool of blocks drawn once per run (from the seed alone); the pair key picks one.
        pool = [
            [random.Random(derive_seed(cfg.seed, "pool", i, "exemplar", e)).choice(c.feedback).id for e in range(n_ex)]
            for i in range(cfg.exemplar_pool)
        ]
        shots = pool[random.Random(derive_seed(cfg.seed, key, "pool")).randrange(cfg.exemplar_pool)]
    else:
        shots = [random.Random(derive_seed(cfg.seed, key, "exemplar", e)).choice(c.feedback).id for e in range(n_ex)]
    return [
        (random.Random(derive_seed(cfg.seed, key, "principle", k)).choice(c.feedback).id, shots)
        for k in range(cfg.principles)
    ]


def scoring_units(rec: dict, c: Constitution, cfg: FeedbackOptions) -> list[dict]:
    """Every (principle, order, reasoning sample) question to ask about one pair."""
    a, b = rec["responses"]
    orders = [("AB", a, b), ("BA", b, a)] if cfg.debias else [("AB", a, b)]
    units = []
    for k, (pid, shots) in enumerate(draw_principles(c, cfg, rec["key"])):
        exemplars = []
        for ex, sp in zip(feedback_exemplars(c, cfg), shots):
            q = feedback_question(ex.messages, ex.response_a, ex.response_b, c.feedback_principle(sp).text)
            exemplars.append((q, ex.preferred, ex.reasoning))
        for order, first, second in orders:
            q = feedback_question(rec["messages"], first, second, c.feedback_principle(pid).text)
            for s in range(cfg.cot_samples if cfg.cot else 1):
                units.append(
                    {
                        "principle": pid,
                        "exemplar_principles": shots,
                        "order": order,
                        "sample": s,
                        "k": k,
                        "question": q,
                        "exemplars": exemplars,
                    }
                )
    return units


def label_chunk(
    backend: Backend, recs: list[dict], c: Constitution, cfg: FeedbackOptions, hint: str = LABEL_HINT
) -> list[dict]:
    """Label a chunk of pairs (``key``, ``messages``, ``responses``) in as few batched backend calls
    as possible. Returns one label record per pair, or ``{"key", "error", ...}`` for a pair the
    model answered with neither letter (hard labels). ``hint`` completes the error raised when
    the backend has no log-probabilities."""
    units = [(r, u) for r in recs for u in scoring_units(r, c, cfg)]
    reasonings = [""] * len(units)
    if cfg.cot:
        convs = [feedback_messages(u["question"], u["exemplars"], cot=True) for _, u in units]
        seeds = [derive_seed(cfg.seed, r["key"], "cot", u["k"], u["order"], u["sample"]) for r, u in units]
        sampling = Sampling(temperature=cfg.cot_temperature, max_new_tokens=cfg.cot_max_new_tokens, stop=COT_STOP)
        reasonings = backend.generate(convs, sampling, seeds=seeds)
    final = [
        feedback_messages(u["question"], u["exemplars"], cot=cfg.cot, reasoning=reasonings[i] if cfg.cot else None)
        for i, (_, u) in enumerate(units)
    ]
    if cfg.hard_labels:
        letters = backend.generate(final, Sampling(temperature=0.0, max_new_tokens=2), seeds=[0] * len(final))
        logprobs = [[] for _ in units]
        p_first = [
            1.0 if t.strip().upper().startswith("A") else 0.0 if t.strip().upper().startswith("B") else math.nan
            for t in letters
        ]
    else:
        if cfg.effective_format == "text":
            prompts = [feedback_text(u["question"], u["exemplars"]) for _, u in units]
        else:
            prompts = [backend.render(m) for m in final]
        try:
            logprobs = backend.score_choices(prompts, ["A", "B"])
        except LogprobsUnavailable as e:
            raise BackendError(f"{e}\n{hint}") from None
        # None: the server's capped top-k did not contain that option, so there is no label.
        p_first = [math.nan if None in lp else normalise(*lp) for lp in logprobs]
    out = []
    for r in recs:
        scores = []
        for i, (rr, u) in enumerate(units):
            if rr is not r:
                continue
            pa = p_first[i] if u["order"] == "AB" else 1.0 - p_first[i]  # P(response a is better)
            scores.append(
                {
                    "principle": u["principle"],
                    "exemplar_principles": u["exemplar_principles"],
                    "order": u["order"],
                    "sample": u["sample"],
                    "logprobs": logprobs[i],
                    "p_first": p_first[i],
                    "p_a": pa,
                    "reasoning": reasonings[i],
                }
            )
        if any(math.isnan(s["p_a"]) for s in scores):
            absent = any(None in s["logprobs"] for s in scores)
            why = (
                "an option was absent from the server's top-k log-probabilities"
                if absent
                else "the model's answer was neither (A) nor (B)"
            )
            out.append(
                {
                    "key": r["key"],
                    "error": why,
                    "answers": [None if math.isnan(s["p_first"]) else s["p_first"] for s in scores],
                }
            )
            continue
        p_raw = sum(s["p_a"] for s in scores) / len(scores)
        if cfg.cot:
            # Clamp each CoT label, then average (paper, section 4.1): AB 0.9, BA 0.45 gives 0.525.
            for s in scores:
                s["p_a_clamped"] = clamp(s["p_a"], *cfg.clamp)
            p = sum(s["p_a_clamped"] for s in scores) / len(scores)
        else:
            p = p_raw
        out.append(
            {
                "key": r["key"],
                "prompt_id": r["prompt_id"],
                "messages": r["messages"],
                "responses": r["responses"],
                "principles": sorted({s["principle"] for s in scores}),
                "scores": scores,
                "p_a_unclamped": p_raw,
                "p_a": p,
                "hard": cfg.hard_labels,
                "cot": cfg.cot,
                "prompt_format": cfg.effective_format,
                "model": backend.name,
                "seed": cfg.seed,
            }
        )
    return out


def label_each(
    backend: Backend, recs: list[dict], c: Constitution, cfg: FeedbackOptions, hint: str = LABEL_HINT
) -> list[dict]:
    """:func:`label_chunk` whose per-pair failures come back as values, as
    :func:`~constitutional_ai.generation.generate_each` does for generation: when the batched call
    fails because of one pair (a prompt too long for the context, a request that failed for good),
    the chunk is retried pair by pair and each such pair gets ``{"key", "error", "kind"}``
    (``kind`` is ``"too-long"`` or ``"request"``). Any other error propagates."""
    try:
        return label_chunk(backend, recs, c, cfg, hint)
    except (PromptTooLong, RequestFailed):
        pass
    out = []
    for r in recs:
        try:
            out.extend(label_chunk(backend, [r], c, cfg, hint))
        except PromptTooLong as e:
            out.append({"key": r["key"], "error": str(e), "kind": "too-long"})
        except RequestFailed as e:
            out.append({"key": r["key"], "error": str(e), "kind": "request"})
    return out


def preference_row(rec: dict) -> dict:
    """TRL conversational preference format, chosen = the response the label favours."""
    a, b = rec["responses"]
    p = rec["p_a"]
    chosen, rejected, pc = (a, b, p) if p >= 0.5 else (b, a, 1.0 - p)
    return {
        "prompt": rec["messages"],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": pc,
        "pair_id": rec["key"],
        "principles": rec["principles"],
        "hard": rec["hard"],
    }


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
    ab_singles = [s for s in singles if s["order"] == "AB"]
    return {
        "labels": len(records),
        "scorings": len(singles),
        "mean_p_first": mean([s["p_first"] for s in singles]),
        "first_slot_rate": mean([float(s["p_first"] > 0.5) for s in singles]),
        "slot_following_rate": follow / both if both else None,
        "single_order_agreement": agree / len(records) if records else None,
        "mean_confidence_single_order": mean([abs(s["p_a"] - 0.5) for s in ab_singles]),
        "mean_confidence": mean([abs(r["p_a"] - 0.5) for r in records]),
        "mean_p_chosen": mean([max(r["p_a"], 1 - r["p_a"]) for r in records]),
    }
