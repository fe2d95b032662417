"""DPO-CAI: offline preference optimisation on soft AI labels or revision pairs — not the paper's route.

    cai train dpo --model runs/sft --labels runs/labels --helpful src/constitutional_ai/data/helpful_comparisons.jsonl \
        --helpful-ratio 0.5 --out runs/dpo
    cai train dpo --model runs/sft --revisions runs/revise --revision-pairs final --loss-type apo_zero \
        --out runs/dpo-apo

The paper trains a preference model and then runs online RL against it (``cai train pm``,
``cai train rl``). This stage is the offline alternative: TRL's ``DPOTrainer`` trains
``--model`` (usually the SL-CAI checkpoint) directly on preference pairs, with a frozen copy
of the same model as the reference. No PM and no samples from the policy: cheaper, but the
policy only ever learns from the pairs it is given. See docs/paper.md.

Inputs (any mix; at least one of --labels / --revisions):
  --labels DIR [DIR ...]     finished `cai label` folders; ``preferences.jsonl`` rows carry
                             ``p_chosen``, the debiased soft AI label.
  --revisions DIR [DIR ...]  finished `cai revise` folders; ``records.jsonl`` gives revision
                             pairs, each preferred (p = 1) to the response it revised:
                             ``--revision-pairs rounds`` = every round's revision over the one
                             before it (round 1 over the initial response); ``final`` = the last
                             revision over the initial response.
  --helpful FILE             helpfulness comparisons (HH transcripts or preference rows, as
                             ``cai train pm`` reads them; p = 1 unless the row has ``p_chosen``).
  --helpful-ratio R          share of the total loss weight on helpfulness pairs. Nothing is
                             discarded: every pair is trained, the two sides are weighted
                             (weights in the manifest, mean weight 1). Unset: all weights 1.

Loss (``--loss-type``), with Δ = [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]:
  sigmoid   soft-target DPO: p·ℓ(βΔ) + (1 − p)·ℓ(−βΔ), ℓ(x) = −log σ(x), p = the pair's
            P(chosen) — a per-example conservative DPO (cDPO with the AI label as its
            smoothing); p = 1 is plain DPO. ``--soft-labels false`` trains hard labels.
  apo_zero, apo_down   TRL's anchored preference losses (D'Oosterlinck et al. 2024), for
            pairs whose chosen side is known better (revision pairs); they have no soft form,
            so AI labels need ``--soft-labels false`` with them.
Each pair's loss is multiplied by its mix weight; the batch loss is the mean.

Pairs with an empty side or chosen == rejected are rejected (counted per source in the
manifest). With hard labels, p ≥ 0.5 → chosen (p < 0.5 swaps the sides) and p = 0.5 ties
carry no preference: they are counted and left out.

Output folder: the ``save_pretrained`` policy + tokenizer; ``log.jsonl``, one row per logged
step: ``step, loss, margin`` (mean β·Δ), ``accuracy`` (share of pairs with Δ > 0),
``reward_chosen, reward_rejected`` (mean β·log-ratios), ``kl`` (mean per-token
KL(π ‖ π_ref) over the vocabulary at every chosen and rejected completion token),
``learning_rate, grad_norm``; ``metrics.json`` (first/last logged step); ``manifest.json``
last. Resumes from the last Trainer checkpoint (``--save-strategy steps --save-steps N``);
a finished folder is left as it is.

Several processes: ``accelerate launch [--config_file launch/fsdp.yaml] -m constitutional_ai train dpo ...``
(or ``torchrun``); every process trains, the main one owns the output folder (docs/distributed.md).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from ..config import opt, output_settings, training_config_dict
from ..data import DataError, read_jsonl
from ..distributed import FINISHED, owned_folder, replicas, save_trained, world_size
from ..models.local import resolve_model_path, use_prompt_format
from ..preferences import load_label_folder, load_pairs, mix_weights
from ..store import (
    MANIFEST,
    StageDir,
    file_sha256,
    last_checkpoint,
    manifest_identity,
    read_manifest,
)

STAGE = "train-dpo"
LOSSES = ("sigmoid", "apo_zero", "apo_down")
LOG_KEYS = (
    "step",
    "loss",
    "margin",
    "accuracy",
    "reward_chosen",
    "reward_rejected",
    "kl",
    "learning_rate",
    "grad_norm",
)
EXTRA_COLUMNS = ("p_chosen", "weight")  # travel with each pair into the batch


# ----------------------------------------------------------------------------- losses
def soft_dpo_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, p: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-pair soft-target DPO loss ``p·ℓ(βΔ) + (1 − p)·ℓ(−βΔ)``, ``ℓ(x) = −log σ(x)``.

    ``Δ = chosen_logratio − rejected_logratio`` (log π − log π_ref of each side). The
    cross-entropy between the label (p, 1 − p) and the implicit-reward Bradley–Terry
    probability σ(βΔ): minimised at βΔ = logit(p), so an unsure label asks for a small margin.
    """
    d = beta * (chosen_logratio - rejected_logratio)
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d))


def apo_loss(kind: str, chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair APO loss as TRL defines it (eqs. 7 and 8 of D'Oosterlinck et al. 2024).

    ``apo_zero`` raises the chosen likelihood and lowers the rejected one; ``apo_down`` lowers
    both, the rejected more. The test suite checks these against TRL's own implementation.
    """
    if kind == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_logratio)) + torch.sigmoid(beta * rejected_logratio)
    if kind == "apo_down":
        return torch.sigmoid(beta * chosen_logratio) + (1 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio)))
    raise ValueError(f"unknown APO loss {kind!r}")


# ----------------------------------------------------------------------------- config
@dataclass
class TrainDPOConfig(DPOConfig):
    """TRL's DPOConfig (every TrainingArguments/DPO flag this stage supports works) plus the CAI inputs."""

    model: str = opt("default", "Policy to train, also the frozen reference: usually the `cai train sft` checkpoint")
    labels: list[str] = opt(
        [], "Finished `cai label` folder(s): soft AI-feedback preference pairs", output=False
    )  # pinned by their identity in the inputs
    revisions: list[str] = opt(
        [], "Finished `cai revise` folder(s): revision preferred to the response it revised", output=False
    )  # pinned likewise
    revision_pairs: str = opt(
        "rounds",
        "'rounds': each round's revision over the previous response; 'final': the last revision over the original",
    )
    helpful: str | None = opt(
        None, "Helpfulness comparisons (JSONL): HH `chosen`/`rejected` transcripts or preference rows", output=False
    )  # its hash is pinned instead
    helpful_ratio: float | None = opt(
        None, "Share of the loss weight on helpfulness pairs (0 < R < 1; nothing is discarded); unset = weight 1 each"
    )
    soft_labels: bool = opt(
        True, "Use each pair's p_chosen as its target; false = hard labels (p >= 0.5 -> chosen, ties left out)"
    )
    loss_type: list[str] = opt(
        ["sigmoid"], "sigmoid (soft-target DPO; plain DPO on hard labels), apo_zero or apo_down (APO, hard labels)"
    )
    out: str = opt(
        "runs/dpo",
        "Output folder: DPO checkpoint, log.jsonl, metrics.json, manifest.json (also sets output_dir)",
        output=False,
    )
    # CPU-friendly defaults for inherited TRL/transformers settings (all overridable).
    bf16: bool | None = opt(False, "bf16 mixed precision (TRL's default is on; off here for CPU fp32)")
    gradient_checkpointing: bool | None = opt(
        None, "Deprecated alias of --activation-checkpointing (off by default)", nargs="?", const=True
    )
    report_to: None | str | list[str] = opt("none", "Integrations to log to ('none', 'wandb', 'tensorboard', ...)")
    save_strategy: str = opt(
        "no", "Intermediate checkpoints: 'no', 'steps' or 'epoch' (the final policy is always saved)"
    )
    logging_steps: float = opt(1, "Log every N optimizer steps")
    per_device_train_batch_size: int = opt(4, "Preference pairs per device per step")
    num_train_epochs: float = opt(1.0, "Epochs over the pairs (--max-steps overrides)")
    max_length: int | None = opt(512, "Truncate prompt + completion to this many tokens (TRL's keep_start)")
    seed: int = opt(0, "Seed for shuffling and initialisation")

    def __post_init__(self):
        self.output_dir = self.out
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = False  # TRL turns it on by default; it only slows small CPU runs
        super().__post_init__()
        if len(self.loss_type) != 1 or self.loss_type[0] not in LOSSES:
            raise ValueError(f"--loss-type must be one of {', '.join(LOSSES)}, got {self.loss_type}")
        unsupported = {
            "precompute_ref_log_probs": self.precompute_ref_log_probs,
            "padding_free": self.padding_free,
            "use_weighting": self.use_weighting,
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "loss_weights": self.loss_weights is not None,
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(
                f"cai train dpo does not support --{', --'.join(b.replace('_', '-') for b in bad)} "
                "(its loss needs both models' full distributions every step, for the logged KL)"
            )
        if self.revision_pairs not in ("rounds", "final"):
            raise ValueError(f"--revision-pairs must be 'rounds' or 'final', got {self.revision_pairs!r}")
        if self.helpful_ratio is not None and not 0 < self.helpful_ratio < 1:
            raise ValueError(
                f"--helpful-ratio must be in (0, 1) (leave out --helpful to train without it), got {self.helpful_ratio}"
            )


# ----------------------------------------------------------------------------- data
def revision_pairs(folder: str | Path, which: str) -> tuple[list[dict], dict]:
    """Preference pairs from a finished `cai revise` folder (see the module docstring), and its provenance."""
    manifest = read_manifest(folder, stage="revise")
    f = Path(folder) / (manifest.get("files") or {}).get("records", "records.jsonl")
    rows = []
    for n, rec in read_jsonl(f):
        where = f"{f}:{n}"
        for k in ("messages", "initial_response", "rounds"):
            if k not in rec:
                raise DataError(f"{where}: field '{k}': missing (not a `cai revise` record)")
        rounds = rec["rounds"]
        if not rounds:
            continue
        steps = [
            (x["round"], x["revision"], rounds[i - 1]["revision"] if i else rec["initial_response"])
            for i, x in enumerate(rounds)
        ]
        if which == "final":
            steps = [(rounds[-1]["round"], rounds[-1]["revision"], rec["initial_response"])]
        for r, better, worse in steps:
            rows.append(
                {
                    "id": f"{rec.get('key', where)}/r{r}",
                    "source": "revision",
                    "where": where,
                    "prompt": rec["messages"],
                    "chosen": [{"role": "assistant", "content": better}],
                    "rejected": [{"role": "assistant", "content": worse}],
                    "p_chosen": 1.0,
                    "round": r,
                }
            )
    return rows, {"path": str(Path(folder).resolve()), "sha256": file_sha256(f)}


def screen(rows: list[dict], soft: bool) -> tuple[list[dict], dict]:
    """Drop pairs that cannot teach a preference, counting why; harden labels when ``soft`` is false."""
    kept, why = [], {"empty": 0, "identical": 0, "tied": 0}
    for r in rows:
        c, j = r["chosen"][-1]["content"].strip(), r["rejected"][-1]["content"].strip()
        if not c or not j:
            why["empty"] += 1
        elif c == j:
            why["identical"] += 1
        elif not soft and r["p_chosen"] == 0.5:
            why["tied"] += 1
        elif not soft:
            flip = r["p_chosen"] < 0.5
            kept.append(
                {
                    **r,
                    "chosen": r["rejected"] if flip else r["chosen"],
                    "rejected": r["chosen"] if flip else r["rejected"],
                    "p_chosen": 1.0,
                }
            )
        else:
            kept.append(r)
    return kept, why


# ----------------------------------------------------------------------------- trainer
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's DPO collator (chosen rows, then rejected rows, right-padded) + ``p_chosen`` and ``weight``."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        for k in EXTRA_COLUMNS:
            batch[k] = torch.tensor([float(e[k]) for e in examples], dtype=torch.float32)
        return batch


class SoftDPOTrainer(DPOTrainer):
    """``DPOTrainer`` with a per-pair soft target and weight, and the exact per-token KL to the reference.

    TRL's loss is a batch mean with no per-pair target (its ``label_smoothing`` is one number
    for the whole run, and its ``sigmoid`` loss ignores it), so ``_compute_loss`` is replaced.
    TRL still tokenizes the pairs, builds the reference model, optimises, logs and saves.
    """

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        cols = self._signature_columns
        self._signature_columns = [*cols, *(c for c in EXTRA_COLUMNS if c not in cols)]

    def _logps_and_dist(self, model, inputs: dict, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs per sequence, and the log-distributions at completion positions."""
        ids, mask = inputs["input_ids"], inputs["completion_mask"][:, -keep + 1 :]
        logits = model(
            input_ids=ids, attention_mask=inputs["attention_mask"], logits_to_keep=keep, use_cache=False
        ).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
        tok = logp.gather(-1, ids[:, -keep + 1 :].unsqueeze(-1)).squeeze(-1)
        return (tok * mask).sum(1), logp

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs:
            raise NotImplementedError("cai train dpo computes no logits for compute_metrics")
        mode = "train" if self.model.training else "eval"
        p, w = inputs["p_chosen"], inputs["weight"]
        cmask = inputs["completion_mask"]
        # Logits only from the first completion token on (prompts are padded on the right, so they start the rows).
        keep = cmask.size(1) - int(cmask.argmax(1).min()) + 1
        logps, logp = self._logps_and_dist(model, inputs, keep)
        with torch.no_grad():
            ref_logps, ref_logp = self._logps_and_dist(self.ref_model, inputs, keep)
            m = cmask[:, -keep + 1 :].float()
            # KL ≥ 0 exactly; while π ≈ π_ref float32 rounding can dip below it, which is noise, not signal.
            per_pos = (logp.exp() * (logp - ref_logp)).sum(-1).clamp_min(0)
            kl = (per_pos * m).sum() / m.sum().clamp_min(1)
        c, r = (logps - ref_logps).chunk(2)  # chosen and rejected log-ratios
        kind = self.loss_types[0]
        per_pair = soft_dpo_loss(c, r, p, self.beta) if kind == "sigmoid" else apo_loss(kind, c, r, self.beta)
        loss = (w * per_pair).mean()

        rc, rr = self.beta * c.detach(), self.beta * r.detach()
        g = self.accelerator.gather_for_metrics
        for k, v in {
            "rewards/chosen": rc,
            "rewards/rejected": rr,
            "rewards/margins": rc - rr,
            "rewards/accuracies": (rc > rr).float(),
            "logps/chosen": logps.detach().chunk(2)[0],
            "logps/rejected": logps.detach().chunk(2)[1],
            "kl": kl,
            "p_chosen": p,
        }.items():
            self._metrics[mode][k].append(g(v).mean().item())
        return loss


def log_row(logs: dict, step: int) -> dict:
    """One log.jsonl row from a Trainer log dict; missing values are None."""
    names = {
        "margin": "rewards/margins",
        "accuracy": "rewards/accuracies",
        "reward_chosen": "rewards/chosen",
        "reward_rejected": "rewards/rejected",
    }
    return {"step": step, **{k: logs.get(names.get(k, k)) for k in LOG_KEYS if k != "step"}}


class LogWriter(TrainerCallback):
    """Appends a log.jsonl row (flushed) and prints a line at every logged training step."""

    def __init__(self, path: Path | None):
        self.path = path  # None on processes other than the main one: nothing is written

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.path is None or not logs or "rewards/margins" not in logs:
            return
        row = log_row(logs, state.global_step)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[train dpo] step {row['step']}: loss {row['loss']:.4f} margin {row['margin']:.4f} "
            f"accuracy {row['accuracy']:.2f} kl {row['kl']:.2e}",
            file=sys.stderr,
        )


def build_trainer(cfg: TrainDPOConfig, rows: list[dict], log: LogWriter) -> SoftDPOTrainer:
    """Policy, frozen reference (the same checkpoint), tokenizer and the trainer over the pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_prompt_format(tokenizer)  # a policy without a chat template: the plain-text one
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected", *EXTRA_COLUMNS)} for r in rows])
    collator = WeightedPreferenceCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=cfg.max_length,
        truncation_mode=cfg.truncation_mode,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )
    return SoftDPOTrainer(
        model=model,
        ref_model=ref,
        args=cfg,
        data_collator=collator,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[log],
    )


# ----------------------------------------------------------------------------- stage
def load_inputs(cfg: TrainDPOConfig) -> tuple[dict[str, list[dict]], dict]:
    """Pairs per source (``ai``, ``revision``, ``helpful``) and the inputs' provenance."""
    if not cfg.labels and not cfg.revisions:
        raise ValueError("give `cai label` folder(s) with --labels and/or `cai revise` folder(s) with --revisions")
    if cfg.helpful_ratio is not None and not cfg.helpful:
        raise ValueError("--helpful-ratio needs --helpful FILE")
    pairs: dict[str, list[dict]] = {"ai": [], "revision": [], "helpful": []}
    inputs: dict[str, Any] = {"labels": [], "revisions": [], "helpful": None}
    for folder in cfg.labels:
        rows, info = load_label_folder(folder)
        pairs["ai"] += rows
        inputs["labels"].append(info)
    for folder in cfg.revisions:
        rows, info = revision_pairs(folder, cfg.revision_pairs)
        pairs["revision"] += rows
        inputs["revisions"].append(info)
    if cfg.helpful:
        pairs["helpful"] = load_pairs(cfg.helpful, "helpful", 1.0)
        inputs["helpful"] = {"path": str(Path(cfg.helpful).resolve()), "sha256": file_sha256(cfg.helpful)}
    path = resolve_model_path(cfg.model)
    model = {"path": str(Path(path).resolve()) if Path(path).exists() else path}
    if (Path(path) / MANIFEST).exists():
        model["manifest"] = manifest_identity(read_manifest(path))
    inputs["model"] = model
    return pairs, inputs


def main(cfg: TrainDPOConfig) -> Path:
    """Train (or find already trained) the DPO-CAI policy; returns the output folder."""
    t0 = time.time()
    pairs, inputs = load_inputs(cfg)
    soft_pairs = any(r["p_chosen"] != 1.0 for rows in pairs.values() for r in rows)
    if cfg.loss_type[0] != "sigmoid" and cfg.soft_labels and soft_pairs:
        raise ValueError(
            f"--loss-type {cfg.loss_type[0]} has no soft-label form and some pairs have p_chosen < 1: "
            "add --soft-labels false (hard labels) or use --loss-type sigmoid"
        )

    def prepare(out: StageDir) -> dict:
        """On the main process: screened and weighted pairs, and the checkpoint to resume."""
        screened, rejected = {}, {}
        for src, rows in pairs.items():
            screened[src], rejected[src] = screen(rows, cfg.soft_labels)
        n_help = len(screened["helpful"])
        n_other = len(screened["ai"]) + len(screened["revision"])
        w_other, w_help = mix_weights(n_other, n_help, cfg.helpful_ratio)
        train = [
            {**r, "weight": w_help if src == "helpful" else w_other} for src, rows in screened.items() for r in rows
        ]
        if not train:
            raise DataError(f"no preference pairs left to train on (rejected: {rejected})")
        why = {f"{src}/{k}": v for src, w in rejected.items() for k, v in w.items() if v} or "none"
        print(
            f"[train dpo] {len(screened['ai'])} AI-label + {len(screened['revision'])} revision + {n_help} "
            f"helpfulness pairs (weights {w_other:.3g} / {w_help:.3g}), loss {cfg.loss_type[0]}, beta {cfg.beta}; "
            f"rejected {why}" + (f"; {world_size()} processes" if world_size() > 1 else ""),
            file=sys.stderr,
        )
        out.begin()
        resumed = last_checkpoint(cfg.out)
        if not resumed:
            (Path(cfg.out) / "log.jsonl").write_text("")  # a fresh start; on resume it is rewritten below
        return {
            "train": train,
            "rejected": rejected,
            "n_help": n_help,
            "n_other": n_other,
            "weights": (w_other, w_help),
            "resumed": resumed,
        }

    with owned_folder(cfg, STAGE, output_settings(cfg, inputs=inputs), prepare) as (out, prep):
        if prep == FINISHED:  # said by the main process
            return Path(cfg.out)
        train, rejected, resumed = prep["train"], prep["rejected"], prep["resumed"]
        n_help, n_other, (w_other, w_help) = prep["n_help"], prep["n_other"], prep["weights"]
        trainer = build_trainer(cfg, train, LogWriter(Path(cfg.out) / "log.jsonl" if out is not None else None))
        result = trainer.train(resume_from_checkpoint=resumed)
        save_trained(trainer, cfg.out)
        processes = replicas(trainer)
        if out is None:
            return Path(cfg.out)  # the main process writes the log, metrics and manifest
        # The Trainer's history (restored from the checkpoint on resume) is the authoritative log.
        log = [log_row(h, h["step"]) for h in trainer.state.log_history if "rewards/margins" in h]
        out.write_jsonl("log.jsonl", log)
        steps = trainer.state.global_step
        first, last = (log[0], log[-1]) if log else ({}, {})
        metrics = {
            "first": first,
            "last": last,
            "train_loss": result.training_loss,
            "steps": steps,
            "seconds_per_step": round(result.metrics["train_runtime"] / max(steps, 1), 3),
        }
        out.write_json("metrics.json", metrics)
        counts = {
            "ai_pairs": len(pairs["ai"]),
            "revision_pairs": len(pairs["revision"]),
            "helpful_pairs": len(pairs["helpful"]),
            **{f"{src}_rejected_{k}": v for src, w in rejected.items() for k, v in w.items() if v},
            "trained_pairs": len(train),
            "too_long_dropped": len(train) - len(trainer.train_dataset),
            "steps": steps,
        }
        out.finish(
            {
                "config": training_config_dict(cfg),
                "inputs": inputs,
                "counts": counts,
                "rejected": rejected,
                "mix": {
                    "helpful_ratio": cfg.helpful_ratio,
                    "weight_harmlessness": w_other,
                    "weight_helpful": w_help,
                    "harmlessness_pairs": n_other,
                    "helpful_pairs": n_help,
                    "helpful_weight_share": w_help * n_help / (w_help * n_help + w_other * n_other),
                },
                "trainer": {
                    "class": type(trainer).__name__,
                    "loss_type": cfg.loss_type[0],
                    "beta": cfg.beta,
                    "soft_labels": cfg.soft_labels,
                    "resumed_from": resumed and Path(resumed).name,
                },
                "metrics": metrics,
                "processes": processes,
                "files": {"checkpoint": ".", "log": "log.jsonl", "metrics": "metrics.json"},
                "seconds": round(time.time() - t0, 1),
            }
        )
    print(
        f"[train dpo] {steps} steps; margin {first.get('margin')} -> {last.get('margin')}, kl {last.get('kl')}; "
        f"checkpoint -> {cfg.out}",
        file=sys.stderr,
    )
    return Path(cfg.out)
