"""Preference model: soft-label Bradley–Terry on AI feedback + helpfulness comparisons
(Bai et al. 2022, section 4.1, the "hybrid" PM).

    cai train pm --labels runs/label --helpful hh.jsonl --helpful-ratio 0.5 --out runs/pm

Inputs:
  --labels DIR [DIR ...]  finished `cai label` folders; their ``preferences.jsonl`` rows are
                          TRL conversational preference pairs (``prompt``, ``chosen``,
                          ``rejected``) with ``p_chosen``, the feedback model's soft
                          probability that ``chosen`` is better.
  --helpful FILE          optional helpfulness comparisons: Anthropic HH rows (``chosen`` and
                          ``rejected`` transcripts; the turns before the last Assistant turn
                          are the prompt) or the preference format above (``p_chosen``
                          optional, default 1.0 = a hard human label).
  --helpful-ratio R       share of the training loss weight on helpfulness comparisons.
                          Nothing is discarded: every training pair is used and each side gets
                          a per-pair loss weight (mean weight 1) so that its share is R; the
                          weights and effective counts are in the manifest (``mix``).
                          Default: every pair weight 1.
  --helpful-mix subsample the old cap: cut the larger side (seeded) until helpfulness pairs are
                          R of the pairs; this discards data and is only done when asked.

The PM is ``AutoModelForSequenceClassification`` (one output) on top of ``--model``, trained
with TRL's ``RewardTrainer`` whose loss is replaced by the soft-target Bradley–Terry loss

    L = -[p · log σ(r_c − r_r) + (1 − p) · log σ(r_r − r_c)]

(p = 1 is TRL's standard loss), each pair's term multiplied by its mix weight before the batch
mean. ``p_chosen`` and ``weight`` travel with the tokenized pairs through the
dataloader (``SoftPreferenceCollator``) into ``compute_loss``. ``--soft-labels false`` trains
on hard labels (p ≥ 0.5 → 1) — the ablation; held-out targets stay the soft labels.

Held-out pairs (``--eval-fraction`` of the prompts of each source, chosen by ``--seed``) are
scored after training. ``metrics.json``:
  accuracy     fraction of held-out pairs with r_chosen > r_rejected (ties count as wrong)
  log_loss     mean soft-label loss L above on held-out pairs (nats; chance = log 2,
               floor = label_entropy, the mean binary entropy of the targets)
  ece          expected calibration error of q = σ(r_c − r_r) against the soft target p:
               10 equal-width bins on q; ECE = Σ_bins (n_bin / N) · |mean q − mean p|
  reliability  per bin: bin, lo, hi, count, mean_pred, mean_target
plus the same per source (``by_source``) and training time. ``heldout_scores.jsonl`` has
one row per held-out pair.

Output folder: the checkpoint (``save_pretrained`` model + tokenizer, ``pad_token_id`` set,
so TRL's RLOO/GRPO can use it as a reward model), ``metrics.json``,
``heldout_scores.jsonl``, and ``manifest.json`` written last. Rerunning a finished run
does nothing; an interrupted run with intermediate checkpoints (``--save-strategy steps``)
resumes from the last one.

Several processes: ``accelerate launch [--config_file launch/fsdp.yaml] -m constitutional_ai train pm ...``
(or ``torchrun``); every process trains, the main one owns the output folder (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from ..config import opt, output_settings, training_config_dict
from ..data import DataError
from ..distributed import FINISHED, owned_folder, replicas, save_trained, world_size
from ..metrics import calibration
from ..pm import encode_conversation, score_ids
from ..preferences import load_label_folder, load_pairs, mix_weights
from ..store import StageDir, file_sha256, last_checkpoint


# ----------------------------------------------------------------------------- losses
def soft_bt_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft-target Bradley–Terry loss, mean over the batch (each pair's term times ``weight``).

    ``-[p·log σ(r_c − r_r) + (1 − p)·log σ(r_r − r_c)]``: the cross-entropy between the label
    distribution (p, 1 − p) and the PM's P(chosen) = σ(r_c − r_r). Minimised at
    r_c − r_r = logit(p), so soft labels teach calibrated margins rather than "as large as
    possible".
    """
    d = r_chosen - r_rejected
    per = -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d))
    return (per if weight is None else per * weight).mean()


# ----------------------------------------------------------------------------- config
@dataclass
class TrainPMConfig(RewardConfig):
    labels: list[str] = opt(
        [], "Finished `cai label` output folder(s)", output=False
    )  # their hashes are pinned instead
    out: str = opt(
        "runs/pm", "Output folder: PM checkpoint, metrics.json, heldout_scores.jsonl, manifest.json", output=False
    )
    model: str = opt("default", "Base model: default (embedded SmolLM2-135M), a checkpoint folder or a hub id")
    helpful: str | None = opt(
        None, "Helpfulness comparisons (JSONL): HH `chosen`/`rejected` transcripts or preference rows", output=False
    )  # its hash is pinned instead
    helpful_ratio: float | None = opt(
        None,
        "Share of the loss weight on helpfulness comparisons (every pair kept, sides weighted); unset = weight 1 each",
    )
    helpful_mix: str = opt(
        "weight",
        "How --helpful-ratio is reached: 'weight' (keeps every pair) or 'subsample' "
        "(cuts the larger side: discards data)",
    )
    eval_fraction: float = opt(0.1, "Fraction of each source's prompts held out for accuracy and calibration")
    soft_labels: bool = opt(True, "Train on the soft AI labels; false = hard labels (p >= 0.5 -> 1), the ablation")
    # CPU-friendly defaults for inherited TRL/transformers settings (all overridable).
    bf16: bool | None = opt(False, "bf16 mixed precision (TRL's default is on; off here for CPU fp32)")
    gradient_checkpointing: bool | None = opt(
        None, "Deprecated alias of --activation-checkpointing (off by default here)", nargs="?", const=True
    )
    report_to: None | str | list[str] = opt("none", "Integrations to log to ('none', 'wandb', 'tensorboard', ...)")
    save_strategy: str = opt("no", "Intermediate checkpoints: 'no', 'steps' or 'epoch' (the final PM is always saved)")
    logging_steps: float = opt(1, "Log every N optimizer steps")
    per_device_train_batch_size: int = opt(4, "Preference pairs per device per step")
    num_train_epochs: float = opt(1.0, "Epochs over the training pairs")
    max_length: int | None = opt(512, "Pairs whose chosen or rejected conversation is longer (tokens) are dropped")

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = self.out
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = False  # TRL turns it on by default; it only slows small CPU runs
        super().__post_init__()


# ----------------------------------------------------------------------------- data
def mix(ai: list[dict], helpful: list[dict], ratio: float | None, seed: int) -> tuple[list[dict], list[dict]]:
    """Subsample the larger side so that helpful / (ai + helpful) ≈ ratio (order kept): the
    ``--helpful-mix subsample`` cap, which discards data; the default weights instead."""
    if ratio is None:
        return ai, helpful
    if ratio == 0:
        return ai, []
    if ratio == 1:
        return [], helpful

    def sample(rows: list[dict], k: int, tag: str) -> list[dict]:
        keep = sorted(random.Random(f"{seed}:{tag}").sample(range(len(rows)), k))
        return [rows[i] for i in keep]

    want_helpful = ratio * len(ai) / (1 - ratio)
    if want_helpful <= len(helpful):
        return ai, sample(helpful, round(want_helpful), "helpful")
    return sample(ai, round(len(helpful) * (1 - ratio) / ratio), "ai"), helpful


def split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the distinct prompts (≥ 1 when possible), seeded.

    Splitting by prompt keeps two pairs about the same prompt on the same side.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["prompt"], sort_keys=True), []).append(r)
    keys = list(groups)
    if fraction <= 0 or len(keys) < 2:
        return rows, []
    random.Random(f"{seed}:heldout").shuffle(keys)
    held = set(keys[: min(len(keys) - 1, max(1, round(fraction * len(keys))))])
    train = [r for r in rows if json.dumps(r["prompt"], sort_keys=True) not in held]
    return train, [r for r in rows if json.dumps(r["prompt"], sort_keys=True) in held]


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int | None) -> tuple[list[dict], int]:
    """Add ``chosen_ids``/``rejected_ids`` (rendered as TRL renders conversations); drop too long."""
    kept, dropped = [], 0
    for r in rows:
        c = encode_conversation(tokenizer, r["prompt"] + r["chosen"])
        j = encode_conversation(tokenizer, r["prompt"] + r["rejected"])
        if max_length is not None and max(len(c), len(j)) > max_length:
            dropped += 1
            continue
        kept.append({**r, "chosen_ids": c, "rejected_ids": j})
    return kept, dropped


# ----------------------------------------------------------------------------- trainer
class SoftPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator (chosen rows, then rejected rows, right-padded) + ``p_chosen``
    and the per-pair mix ``weight`` (1 when absent)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples], dtype=torch.float32)
        batch["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples], dtype=torch.float32)
        return batch


class SoftRewardTrainer(RewardTrainer):
    """``RewardTrainer`` with the soft-target Bradley–Terry loss.

    ``p_chosen`` must survive ``remove_unused_columns`` (it is added to the signature
    columns) and reach the batch (``SoftPreferenceCollator``); here it is taken out of the
    batch before the model sees it. The parent still runs the forward pass and logs its
    reward/accuracy/margin metrics; only the loss is replaced.
    """

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in ("p_chosen", "weight") if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p, w = inputs.pop("p_chosen", None), inputs.pop("weight", None)
        if p is None:
            raise RuntimeError("the batch has no p_chosen: use SoftPreferenceCollator and keep the p_chosen column")
        _, outputs = super().compute_loss(model, inputs, return_outputs=True)
        r_chosen, r_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = soft_bt_loss(r_chosen, r_rejected, p.to(r_chosen.dtype), None if w is None else w.to(r_chosen.dtype))
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_chosen + r_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def load_tokenizer(cfg: TrainPMConfig):
    from transformers import AutoTokenizer

    from ..models.local import resolve_model_path, use_prompt_format

    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
    use_prompt_format(tok)  # a base model without a chat template: the plain-text one (saved with the PM)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: TrainPMConfig, tokenizer):
    """The base model with a fresh one-output head (seeded, so runs are reproducible)."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from ..models.local import resolve_model_path

    set_seed(cfg.seed)
    with suppress_seqcls_warning():  # the new score head / dropped lm_head are expected
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(cfg.model), num_labels=1, dtype=torch.float32
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_trainer(cfg: TrainPMConfig, model, tokenizer, train_rows: list[dict]) -> SoftRewardTrainer:
    """A trainer over tokenized pairs (``chosen_ids``, ``rejected_ids``, ``p_chosen``)."""
    from datasets import Dataset

    hard = not cfg.soft_labels
    data = Dataset.from_list(
        [
            {
                "chosen_ids": r["chosen_ids"],
                "rejected_ids": r["rejected_ids"],
                "p_chosen": (1.0 if r["p_chosen"] >= 0.5 else 0.0) if hard else r["p_chosen"],
                "weight": float(r.get("weight", 1.0)),
            }
            for r in train_rows
        ]
    )
    collator = SoftPreferenceCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of)
    return SoftRewardTrainer(
        model=model, args=cfg, data_collator=collator, train_dataset=data, processing_class=tokenizer
    )


# ----------------------------------------------------------------------------- evaluation
def evaluate_pairs(model, pad_token_id: int, rows: list[dict], batch_size: int) -> tuple[dict, list[dict]]:
    """Held-out accuracy, soft log-loss and calibration (see the module docstring)."""
    model.eval()
    # Scored together, so a pair's two sequences share the encoding of its prompt.
    seqs = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    both = score_ids(model, pad_token_id, seqs, batch_size)
    r_c, r_r = both[: len(rows)], both[len(rows) :]
    per = []
    for r, c, j in zip(rows, r_c, r_r):
        q = 1 / (1 + math.exp(-(c - j)))
        per.append(
            {
                "id": r["id"],
                "source": r["source"],
                "where": r["where"],
                "r_chosen": c,
                "r_rejected": j,
                "pred_p_chosen": q,
                "p_chosen": r["p_chosen"],
                "correct": c > j,
            }
        )

    def summary(items: list[dict]) -> dict:
        c = torch.tensor([x["r_chosen"] for x in items], dtype=torch.float64)
        j = torch.tensor([x["r_rejected"] for x in items], dtype=torch.float64)
        p = torch.tensor([x["p_chosen"] for x in items], dtype=torch.float64)
        cal = calibration([x["pred_p_chosen"] for x in items], p.tolist())
        entropy = -(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log()).mean()
        return {
            "n": len(items),
            "accuracy": float((c > j).double().mean()),
            "log_loss": float(soft_bt_loss(c, j, p)),
            "label_entropy": float(entropy),
            "chance_log_loss": math.log(2),
            "mean_margin": float((c - j).mean()),
            "ece": cal["ece"],
            "reliability": cal["reliability"],
        }

    metrics = summary(per)
    metrics["by_source"] = {
        s: summary([x for x in per if x["source"] == s]) for s in sorted({x["source"] for x in per})
    }
    return metrics, per


def weigh(train_rows: list[dict], cfg: TrainPMConfig) -> dict:
    """Set each training pair's mix ``weight`` (in place) and return what the manifest records:
    the effective counts per side, the two weights and the helpfulness share of the weight."""
    n_help = sum(r["source"] == "helpful" for r in train_rows)
    n_ai = len(train_rows) - n_help
    ratio = cfg.helpful_ratio if cfg.helpful_mix == "weight" else None  # subsample: the ratio is in the counts
    if ratio is None or (ratio == 0 and not n_help):
        w_ai, w_help = 1.0, 1.0
    else:
        w_ai, w_help = mix_weights(n_ai, n_help, ratio)
    for r in train_rows:
        r["weight"] = w_help if r["source"] == "helpful" else w_ai
    total = w_ai * n_ai + w_help * n_help
    return {
        "mode": cfg.helpful_mix,
        "helpful_ratio": cfg.helpful_ratio,
        "train_ai": n_ai,
        "train_helpful": n_help,
        "weight_ai": w_ai,
        "weight_helpful": w_help,
        "helpful_weight_share": w_help * n_help / total if total else None,
    }


# ----------------------------------------------------------------------------- stage
def main(cfg: TrainPMConfig) -> Path:
    """Train (or find already trained) the PM; returns the output folder."""
    if not cfg.labels:
        raise ValueError("--labels: give at least one `cai label` output folder")
    if cfg.helpful_ratio is not None and not 0 <= cfg.helpful_ratio <= 1:
        raise ValueError(f"--helpful-ratio must be in [0, 1], got {cfg.helpful_ratio}")
    if cfg.helpful_ratio and not cfg.helpful:
        raise ValueError("--helpful-ratio > 0 needs --helpful FILE")
    if cfg.helpful_mix not in ("weight", "subsample"):
        raise ValueError(f"--helpful-mix must be 'weight' or 'subsample', got {cfg.helpful_mix!r}")
    if not 0 <= cfg.eval_fraction < 1:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")
    ai, label_inputs = [], []
    for folder in cfg.labels:
        rows, info = load_label_folder(folder)
        ai += rows
        label_inputs.append(info)
    helpful = load_pairs(cfg.helpful, "helpful", 1.0) if cfg.helpful else []
    inputs = {
        "labels": label_inputs,
        "helpful": {"path": str(Path(cfg.helpful).resolve()), "sha256": file_sha256(cfg.helpful)}
        if cfg.helpful
        else None,
    }

    def prepare(out: StageDir) -> dict:
        """On the main process: the mix, tokenized pairs, train/held-out split and the checkpoint to resume."""
        if cfg.helpful_mix == "subsample":
            ai_used, helpful_used = mix(ai, helpful, cfg.helpful_ratio, cfg.seed)
        else:
            ai_used, helpful_used = ai, helpful
        tokenizer = load_tokenizer(cfg)
        train_rows, heldout, dropped = [], [], 0
        for part in (ai_used, helpful_used):
            kept, d = tokenize_pairs(part, tokenizer, cfg.max_length)
            tr, ho = split(kept, cfg.eval_fraction, cfg.seed)
            train_rows, heldout, dropped = train_rows + tr, heldout + ho, dropped + d
        if not train_rows:
            raise DataError("no training pairs left (all inputs empty, held out, or longer than --max-length)")
        mix_info = weigh(train_rows, cfg)
        print(
            f"[train-pm] {len(ai_used)} AI-feedback + {len(helpful_used)} helpfulness pairs; "
            f"{len(train_rows)} train (weights AI {mix_info['weight_ai']:.3g}, "
            f"helpful {mix_info['weight_helpful']:.3g}), "
            f"{len(heldout)} held out, {dropped} too long"
            + (f"; {world_size()} processes" if world_size() > 1 else ""),
            file=sys.stderr,
        )
        out.begin()
        return {
            "n_ai_used": len(ai_used),
            "n_helpful_used": len(helpful_used),
            "train": train_rows,
            "heldout": heldout,
            "dropped": dropped,
            "mix": mix_info,
            "resumed": last_checkpoint(cfg.out),
        }

    with owned_folder(cfg, "train-pm", output_settings(cfg, inputs=inputs), prepare) as (out, prep):
        if prep == FINISHED:  # said by the main process
            return Path(cfg.out)
        train_rows, heldout, dropped, mix_info = prep["train"], prep["heldout"], prep["dropped"], prep["mix"]
        tokenizer = load_tokenizer(cfg)
        model = load_model(cfg, tokenizer)
        trainer = build_trainer(cfg, model, tokenizer, train_rows)
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=prep["resumed"])
        seconds = time.time() - t0
        save_trained(trainer, cfg.out)  # model + tokenizer; config carries pad_token_id
        processes = replicas(trainer)
        if out is None:
            return Path(cfg.out)  # the main process scores the held-out pairs and writes the manifest
        steps = trainer.state.global_step
        metrics: dict[str, Any] = {}
        per: list[dict] = []
        if heldout:
            scorer = trainer.accelerator.unwrap_model(trainer.model)
            if world_size() > 1:  # sharded or not, the saved checkpoint is the whole trained model
                from transformers import AutoModelForSequenceClassification

                scorer = AutoModelForSequenceClassification.from_pretrained(cfg.out, dtype=torch.float32)
                scorer.to(trainer.accelerator.device)
            metrics, per = evaluate_pairs(scorer, tokenizer.pad_token_id, heldout, cfg.per_device_eval_batch_size)
        metrics["train"] = {
            "steps": steps,
            "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(steps, 1), 3),
            "train_loss": result.training_loss,
            "soft_labels": cfg.soft_labels,
            "log_history": trainer.state.log_history,
        }
        out.write_json("metrics.json", metrics)
        out.write_jsonl("heldout_scores.jsonl", per)
        summary = {k: metrics[k] for k in ("accuracy", "log_loss", "label_entropy", "ece") if k in metrics}
        manifest = out.finish(
            {
                "config": training_config_dict(cfg),
                "inputs": inputs,
                "counts": {
                    "ai_labels": len(ai),
                    "helpful": len(helpful),
                    "ai_used": prep["n_ai_used"],
                    "helpful_used": prep["n_helpful_used"],
                    "too_long": dropped,
                    "train": len(train_rows),
                    "heldout": len(heldout),
                },
                "mix": mix_info,
                "metrics": {**summary, "train_steps": steps, "seconds_per_step": metrics["train"]["seconds_per_step"]},
                "processes": processes,
                "files": {"model": ".", "metrics": "metrics.json", "heldout": "heldout_scores.jsonl"},
            }
        )
    print(
        f"[train-pm] {steps} steps in {seconds:.0f} s; held-out "
        + (f"accuracy {metrics['accuracy']:.3f}, ECE {metrics['ece']:.3f}" if heldout else "set empty")
        + f" -> {manifest.parent}",
        file=sys.stderr,
    )
    return Path(cfg.out)
