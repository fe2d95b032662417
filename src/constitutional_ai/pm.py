"""Preference-model scoring: load a PM, render conversations as it was trained on them, score them.

    from constitutional_ai.pm import load_pm, score_conversations
    model, tok = load_pm("runs/tiny/train-pm")
    scores = score_conversations(model, tok, [messages + [{"role": "assistant", "content": reply}]])

A conversation is rendered with the PM tokenizer's chat template exactly as ``cai train pm``
rendered its training pairs (see :func:`encode_conversation`), so scores are on the scale
the PM was trained on. Batches are right-padded; the sequence-classification head reads the
last non-pad token, so a response's score does not depend on what else shares its batch.
Used by ``cai score``, the RL reward, and the evaluations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .store import MANIFEST, SETTINGS, json_sha256, manifest_identity, read_manifest

Conversation = Sequence[dict]


def load_pm(path: str | Path, device: str | None = None):
    """Load a preference model and its tokenizer for scoring; returns ``(model, tokenizer)``.

    A folder written by ``cai train pm`` must be finished (have its manifest); a plain
    checkpoint from elsewhere (e.g. a hub reward model saved locally) is accepted as is.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if any((path / name).exists() for name in (MANIFEST, SETTINGS, ".lock")):
        read_manifest(path, stage="train-pm")  # ours: refuse an unfinished or foreign folder
    from .models.local import use_prompt_format

    tokenizer = AutoTokenizer.from_pretrained(path)
    use_prompt_format(tokenizer)  # a checkpoint without a chat template: the plain-text one
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path}: a preference model has one output (num_labels=1), this one has {model.config.num_labels}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        # The head reads the last non-pad token; without a pad id it cannot batch.
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.eval()
    from .models.fast import plan_linears

    plan_linears(model)  # on CPUs: the fastest kernels timed here, for scoring (gradients on: unchanged)
    return model, tokenizer


def encode_conversation(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of a full conversation, rendered as TRL's RewardTrainer renders one."""
    enc = tokenizer.apply_chat_template(list(conversation), tokenize=True, return_dict=True)
    return list(enc["input_ids"])


#: sequences sharing at least this many leading tokens have that prefix encoded once
MIN_SHARED_PREFIX = 32


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(sequences: Sequence[Sequence[int]], min_shared: int, max_group: int) -> list[tuple[list[int], int]]:
    """Groups of sequences (indices) that share a prefix of at least ``min_shared`` tokens, with
    the prefix length each group encodes once; every other sequence is a group of one with
    prefix 0. The prefix stops one token short of the shortest member, so each member keeps at
    least one token of its own (the one the head reads is then always computed in full)."""
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    groups: list[tuple[list[int], int]] = []
    k = 0
    while k < len(order):
        first = order[k]
        members, shared = [first], len(sequences[first]) - 1
        while k + len(members) < len(order) and len(members) < max_group:
            nxt = order[k + len(members)]
            common = min(shared, _lcp(sequences[first], sequences[nxt]), len(sequences[nxt]) - 1)
            if common < min_shared:
                break
            members.append(nxt)
            shared = common
        groups.append((members, shared if len(members) > 1 else 0))
        k += len(members)
    return groups


def _head(model):
    """(backbone, score head) of a ``*ForSequenceClassification`` model, or None if it has another shape."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "score", None)
    return (backbone, head) if backbone is not None and isinstance(head, torch.nn.Module) else None


@torch.inference_mode()
def score_ids(
    model,
    pad_token_id: int,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 16,
    min_shared: int | None = MIN_SHARED_PREFIX,
) -> list[float]:
    """PM scores of already-tokenized sequences, in input order.

    Sequences that share a long prefix — the responses to one conversation: a pair's chosen and
    rejected, RL's completions of one prompt — have it encoded once: the backbone runs on the
    prefix with a KV cache, then on each member's remaining tokens against that cache, and the
    score head reads each member's last token. Causal attention makes this the same computation
    as scoring each sequence in full (equal within float rounding, tested). ``min_shared=None``
    scores every sequence in full.
    """
    if not sequences:
        return []
    device = next(model.parameters()).device
    out = [0.0] * len(sequences)
    parts = _head(model) if min_shared is not None else None
    singles: list[int] = []
    if parts is None:
        singles = list(range(len(sequences)))
    else:
        for members, shared in prefix_groups(sequences, min_shared, batch_size):
            if shared == 0:
                singles += members
                continue
            scores = _score_group(parts, pad_token_id, [sequences[i] for i in members], shared, device)
            for i, v in zip(members, scores):
                out[i] = v
    # Batches of similar length waste little on padding; results go back in input order.
    order = sorted(singles, key=lambda i: len(sequences[i]))
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


def _score_group(parts, pad_token_id: int, seqs: list[Sequence[int]], shared: int, device) -> list[float]:
    """Scores of sequences sharing their first ``shared`` tokens, the prefix encoded once."""
    backbone, head = parts
    prefix = torch.tensor([list(seqs[0][:shared])], dtype=torch.long, device=device)
    cache = backbone(input_ids=prefix, use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(seqs))
    rest = [list(s[shared:]) for s in seqs]
    L = max(len(r) for r in rest)
    ids = torch.full((len(seqs), L), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), shared + L), dtype=torch.long)
    attn[:, :shared] = 1
    for b, r in enumerate(rest):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[b, shared : shared + len(r)] = 1
    positions = torch.arange(shared, shared + L).expand(len(seqs), L)
    hidden = backbone(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    last = torch.tensor([len(r) - 1 for r in rest], device=device)
    picked = hidden[torch.arange(len(seqs), device=device), last]
    return [float(v) for v in head(picked)[:, 0].float()]


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
        warnings.warn(
            f"{cut} conversation(s) longer than {limit} tokens were cut to their last {limit} tokens", stacklevel=2
        )
    return score_ids(model, tokenizer.pad_token_id, seqs, batch_size)


def pm_identity(path: str) -> str:
    """What identifies a PM for the settings of a stage that uses it: its manifest, or its weight files."""
    p = Path(path)
    if (p / MANIFEST).exists():
        return manifest_identity(read_manifest(p, stage="train-pm"))
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    return json_sha256([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
