"""Score responses with a preference model.

    cai score --pm runs/pm --input responses.jsonl --out scored.jsonl --batch-size 16

Each input row holds either ``messages`` (a conversation ending with the assistant response
to score) or ``prompt`` (a string or a list of messages) plus ``response`` (a string). The
output file has every input row, unchanged, plus ``"score"``: the PM's scalar reward for
that response (higher = preferred). The file is written atomically (temp file + rename).

A conversation is rendered with the PM tokenizer's chat template exactly as ``cai train pm``
rendered its training pairs (see :func:`encode_conversation`), so scores are on the scale
the PM was trained on. Batches are right-padded; the sequence-classification head reads the
last non-pad token, so a response's score does not depend on what else shares its batch.

``load_pm`` and ``score_conversations`` are the API other stages (RL reward, evaluation) use.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import opt, parse_config
from ..data import DataError, check_messages, read_jsonl, write_jsonl_atomic
from ..store import MANIFEST, SETTINGS, read_manifest

Conversation = Sequence[dict]


@dataclass
class ScoreConfig:
    pm: str | None = opt(None, "Preference model folder (output of `cai train pm`, or any sequence-classification checkpoint with one label)")
    input: str | None = opt(None, "JSONL rows with `messages` (ending with the assistant turn) or `prompt` + `response`")
    out: str | None = opt(None, "Output JSONL: every input row plus `score`")
    batch_size: int = opt(16, "Conversations per forward pass")
    max_length: int | None = opt(None, "Longest input in tokens; longer conversations keep their last tokens; unset = the model's context")


def load_pm(path: str | Path, device: str | None = None):
    """Load a preference model and its tokenizer for scoring; returns ``(model, tokenizer)``.

    A folder written by ``cai train pm`` must be finished (have its manifest); a plain
    checkpoint from elsewhere (e.g. a hub reward model saved locally) is accepted as is.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if (path / MANIFEST).exists() or (path / SETTINGS).exists():
        read_manifest(path, stage="train-pm")  # ours: refuse an unfinished or foreign folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a preference model has one output (num_labels=1), this one has {model.config.num_labels}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        # The head reads the last non-pad token; without a pad id it cannot batch.
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.eval()
    return model, tokenizer


def encode_conversation(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of a full conversation, rendered as TRL's RewardTrainer renders one."""
    enc = tokenizer.apply_chat_template(list(conversation), tokenize=True, return_dict=True)
    return list(enc["input_ids"])


@torch.inference_mode()
def score_ids(model, pad_token_id: int, sequences: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
    """PM scores of already-tokenized sequences, in input order."""
    if not sequences:
        return []
    device = next(model.parameters()).device
    # Batches of similar length waste little on padding; results go back in input order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        L = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), L), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(idx), L), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            attn[b, : len(sequences[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        for b, i in enumerate(idx):
            out[i] = float(logits[b, 0].float())
    return out


def score_conversations(
    model, tokenizer, conversations: Sequence[Conversation], batch_size: int = 16, max_length: int | None = None
) -> list[float]:
    """PM score of each conversation (each ends with the assistant response being judged).

    Conversations longer than ``max_length`` tokens (default: the model's context) keep
    their last tokens — the response and the end of the prompt — with a warning.
    """
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    seqs, cut = [], 0
    for conv in conversations:
        ids = encode_conversation(tokenizer, conv)
        if limit and len(ids) > limit:
            ids, cut = ids[-limit:], cut + 1
        seqs.append(ids)
    if cut:
        warnings.warn(f"{cut} conversation(s) longer than {limit} tokens were cut to their last {limit} tokens")
    return score_ids(model, tokenizer.pad_token_id, seqs, batch_size)


def row_conversation(row: dict, where: str) -> list[dict]:
    """The conversation to score from one input row (see the module docstring)."""
    if "messages" in row:
        conv = check_messages(row["messages"], where, "messages", last=None)
        if conv[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages': must end with the assistant response to score (last role is {conv[-1]['role']!r})")
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
    if cfg.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    rows, convs = [], []
    for n, row in read_jsonl(cfg.input):
        convs.append(row_conversation(row, f"{cfg.input}:{n}"))
        rows.append(row)
    model, tokenizer = load_pm(cfg.pm)
    scores = score_conversations(model, tokenizer, convs, cfg.batch_size, cfg.max_length)
    write_jsonl_atomic(cfg.out, ({**row, "score": s} for row, s in zip(rows, scores)))
    mean = sum(scores) / len(scores) if scores else float("nan")
    print(f"[score] {len(scores)} rows scored with {cfg.pm} (mean {mean:.4f}) -> {cfg.out}", file=sys.stderr)
    return Path(cfg.out)


def cli(argv: list[str] | None = None) -> int:
    cfg = parse_config(ScoreConfig, argv, "cai score", __doc__.split("\n\n")[0])
    main(cfg)
    return 0
