"""Score responses with a preference model.

    cai score --pm runs/pm --input responses.jsonl --out scored.jsonl --batch-size 16

Each input row holds either ``messages`` (a conversation ending with the assistant response
to score) or ``prompt`` (a string or a list of messages) plus ``response`` (a string). The
output file has every input row, unchanged, plus ``"score"``: the PM's scalar reward for
that response (higher = preferred). The file is written atomically (temp file + rename).

Scoring is :func:`constitutional_ai.pm.score_conversations` (rendering as ``cai train pm`` did).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import opt, parse_config
from ..data import DataError, check_messages, read_jsonl
from ..metrics import mean
from ..pm import load_pm, score_conversations
from ..store import write_jsonl_atomic


@dataclass
class ScoreConfig:
    pm: str | None = opt(
        None,
        "Preference model folder (output of `cai train pm`, or any sequence-classification checkpoint with one label)",
    )
    input: str | None = opt(
        None, "JSONL rows with `messages` (ending with the assistant turn) or `prompt` + `response`"
    )
    out: str | None = opt(None, "Output JSONL: every input row plus `score`")
    batch_size: int = opt(16, "Conversations per forward pass", min=1)
    max_length: int | None = opt(
        None, "Longest input in tokens; longer conversations keep their last tokens; unset = the model's context"
    )


def row_conversation(row: dict, where: str) -> list[dict]:
    """The conversation to score from one input row (see the module docstring)."""
    if "messages" in row:
        conv = check_messages(row["messages"], where, "messages", last=None)
        if conv[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: field 'messages': must end with the assistant response to score "
                f"(last role is {conv[-1]['role']!r})"
            )
        return conv
    if "prompt" not in row or "response" not in row:
        raise DataError(f"{where}: needs `messages`, or `prompt` and `response`")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    else:
        prompt = check_messages(prompt, where, "prompt", last=None)
    if not isinstance(row["response"], str):
        raise DataError(f"{where}: field 'response': expected a string, got {type(row['response']).__name__}")
    return prompt + [{"role": "assistant", "content": row["response"]}]


def main(cfg: ScoreConfig) -> Path:
    """Score every row of ``cfg.input``; returns the output file."""
    for name in ("pm", "input", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    rows, convs = [], []
    for n, row in read_jsonl(cfg.input):
        convs.append(row_conversation(row, f"{cfg.input}:{n}"))
        rows.append(row)
    model, tokenizer = load_pm(cfg.pm)
    scores = score_conversations(model, tokenizer, convs, cfg.batch_size, cfg.max_length)
    write_jsonl_atomic(cfg.out, ({**row, "score": s} for row, s in zip(rows, scores)))
    m = mean(scores)
    print(
        f"[score] {len(scores)} rows scored with {cfg.pm}"
        + (f" (mean {m:.4f})" if m is not None else "")
        + f" -> {cfg.out}",
        file=sys.stderr,
    )
    return Path(cfg.out)


def cli(argv: list[str] | None = None) -> int:
    cfg = parse_config(ScoreConfig, argv, "cai score", __doc__.split("\n\n")[0])
    main(cfg)
    return 0
