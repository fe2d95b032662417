"""SL-CAI: finetune on the revisions, mixed with helpful samples (Bai et al. 2022, section 3).

    cai train sft --data runs/revise --out runs/sft --max-steps 20

Reads one or more ``cai revise`` output folders (their ``sft.jsonl``), mixes in helpfulness
examples so the model stays helpful, and finetunes ``--model`` with TRL's ``SFTTrainer``.

Helpfulness mix: ``--helpful-ratio R`` is the fraction of the final training set that is
helpfulness data, so N revisions get ``round(N * R / (1 - R))`` helpful examples (0 = none).
They come from ``--helpful-data FILE`` (JSONL, ``messages`` ending in an assistant turn) or,
without it, are sampled from ``--helpful-model`` on the ``--helpful-prompts`` set and kept in
``helpful.jsonl`` (appended per batch; a rerun reuses them). The paper samples them from its
helpful RLHF model: give the helpful (instruct) model there when ``--model`` is a pretrained
base model; without it they come from ``--model`` itself. Any model spec works (a server too),
since it only generates.

Prompt format (``--prompt-format``): ``auto`` trains a model with a chat template through that
template, and a model without one (a pretrained base such as ``gemma3-270m``) on the paper's
plain "Human: ... Assistant: ..." text — the tokenizer gets that plain-text template, ending the
trained reply with its end-of-text token, and the checkpoint keeps it, so later stages render it
the same way. The helpful model is prompted in its own ``auto`` format (or the one forced here).

Clean targets: a revision or helpful reply cut at the token budget (``truncated``, from the
backend's finish reason) is excluded by default, since training it with an end-of-turn token
would teach the model to stop mid-sentence; ``--keep-truncated`` keeps them. Empty revisions
never reach ``sft.jsonl`` and empty helpful replies are not trained. The manifest counts every
exclusion and why (``counts.excluded``); unchanged ("no problem found") revisions are kept and
counted.

Loss: only the final assistant turn (the revision or the helpful reply, with its end-of-turn
token) is trained. Each conversation becomes TRL's conversational prompt/completion format
(``prompt`` = all turns before the reply, ``completion`` = [reply]) with
``completion_only_loss``; TRL's ``assistant_only_loss`` would need ``{% generation %}``
markers that SmolLM2's (and most) chat templates lack.

``--lora`` trains LoRA adapters on the attention projections and merges them afterwards, so
the output is always a plain checkpoint that later stages load like any other.

Output folder: the ``save_pretrained`` model + tokenizer, ``helpful.jsonl`` (when sampled),
``settings.json``, and ``manifest.json`` last. Rerunning a finished command does nothing; an
interrupted training with intermediate checkpoints (``--save-strategy steps``) resumes from the
last one (the helpful samples are kept either way).

Several processes: ``accelerate launch [--config_file launch/fsdp.yaml] -m constitutional_ai train sft ...``
(or ``torchrun``); every process trains, the main one owns the output folder (docs/distributed.md).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from ..config import opt, output_settings, training_config_dict
from ..data import DataError, load_prompts, prompt_file, read_jsonl
from ..distributed import FINISHED, owned_folder, replicas, save_trained, world_size
from ..generation import Failed, generate_each
from ..models import Sampling, derive_seed, load_backend
from ..models.base import finish_reason
from ..models.local import resolve_model_path, use_prompt_format
from ..prompts import STOP_STRINGS, clean_text
from ..store import StageDir, file_sha256, last_checkpoint, read_manifest

STAGE = "train-sft"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # Llama/Qwen/Mistral-style attention names


@dataclass
class TrainSFTConfig(SFTConfig):
    """TRL's SFTConfig (every TrainingArguments flag works) plus the SL-CAI inputs."""

    data: list[str] = opt(
        [], "One or more `cai revise` output folders (their sft.jsonl is the revision data)", output=False
    )  # their sft.jsonl hashes are pinned instead
    model: str = opt(
        "default",
        "Model to finetune: default (embedded SmolLM2-135M), gemma3-270m (a pretrained base), a checkpoint folder "
        "or a hub id",
    )
    out: str = opt("runs/sft", "Output folder for the finetuned checkpoint (also sets output_dir)", output=False)
    rounds_upto: int | None = opt(
        None, "Keep only revisions of rounds <= N (SL-CAI-n; needs `cai revise --sft-rounds all`)"
    )
    helpful_ratio: float = opt(0.5, "Fraction of the training set that is helpfulness data (0 = revisions only)")
    helpful_data: str | None = opt(
        None,
        "JSONL of helpful conversations (`messages` ending in an assistant turn); default: sample them from "
        "--helpful-model",
        output=False,
    )  # its hash is pinned instead
    helpful_model: str | None = opt(
        None,
        "Model that samples the helpful replies (any model spec; paper: the helpful model that wrote the "
        "revisions); default: --model",
    )
    prompt_format: str = opt(
        "auto",
        "How conversations are rendered for training and helpful sampling: 'auto' (the chat template, or "
        "the paper's plain 'Human: ... Assistant: ...' text for a model without one), 'chat' or 'text'",
    )
    helpful_prompts: str = opt(
        "builtin:helpful", "Prompts to sample helpful replies for when --helpful-data is not given"
    )
    split: str = opt("train", "Split of --helpful-prompts: train (default; evaluations use eval), eval or all")
    helpful_temperature: float = opt(1.0, "Sampling temperature for helpful replies")
    helpful_max_new_tokens: int = opt(200, "Token budget of each sampled helpful reply", min=1)
    helpful_batch_size: int = opt(16, "Prompts per generation batch when sampling helpful replies", output=False, min=1)
    keep_truncated: bool = opt(False, "Also train targets cut at the token budget (excluded by default)")
    lora: bool = opt(False, "Train LoRA adapters (then merge them into a plain checkpoint) instead of all weights")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA scaling alpha")
    # TRL/transformers fields whose defaults suit CAI on a CPU better (override with flags).
    learning_rate: float | None = opt(None, "Peak learning rate (default: 2e-5, or 2e-4 with --lora)")
    per_device_train_batch_size: int = opt(4, "Examples per training step per device")
    num_train_epochs: float = opt(1.0, "Epochs over the mixed data (--max-steps overrides)")
    max_length: int | None = opt(1024, "Truncate examples to this many tokens")
    seed: int = opt(0, "Seed for the helpful-data choice and sampling, shuffling and initialisation")
    bf16: bool | None = opt(False, "bf16 mixed precision (use on GPUs; slow on most CPUs)")
    gradient_checkpointing: bool | None = opt(None, "Deprecated alias of --activation-checkpointing")
    completion_only_loss: bool | None = opt(True, "Train only the final assistant reply (prompt tokens get label -100)")
    logging_steps: float = opt(1, "Log the loss every N steps")
    save_strategy: str = opt("no", "Intermediate Trainer checkpoints ('no': only the final model is saved)")

    def __post_init__(self):
        self.output_dir = self.out
        if self.learning_rate is None:
            self.learning_rate = 2e-4 if self.lora else 2e-5
        super().__post_init__()


def check_conversation(messages, where: str) -> list[dict]:
    """A list of role/content messages whose last turn is the assistant reply to train."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: field 'messages': expected a list of at least two turns")
    out = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("content"), str)
            or m.get("role") not in ("system", "user", "assistant")
        ):
            raise DataError(
                f"{where}: field 'messages[{i}]': expected {{'role': system|user|assistant, 'content': str}}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise DataError(f"{where}: field 'messages': the last turn must be a non-empty assistant reply")
    return out


def load_revisions(cfg: TrainSFTConfig) -> tuple[list[list[dict]], list[dict]]:
    """Revision conversations from every --data folder, and a description of each input
    (with what was excluded and why: ``truncated``, and the ``empty`` ones revise left out)."""
    if not cfg.data:
        raise ValueError("give at least one `cai revise` output folder with --data")
    convs, inputs = [], []
    for folder in cfg.data:
        manifest = read_manifest(folder, stage="revise")
        sft = Path(folder) / manifest.get("files", {}).get("sft", "sft.jsonl")
        kept, truncated, unchanged = 0, 0, 0
        for n, row in read_jsonl(sft):
            if cfg.rounds_upto is not None and row.get("round", 1) > cfg.rounds_upto:
                continue
            conv = check_conversation(row.get("messages"), f"{sft}:{n}")
            if row.get("truncated") and not cfg.keep_truncated:
                truncated += 1
                continue
            convs.append(conv)
            kept += 1
            unchanged += bool(row.get("unchanged"))
        counts = manifest.get("counts", {})
        inputs.append(
            {
                "folder": str(folder),
                "manifest_sha256": file_sha256(Path(folder) / "manifest.json"),
                "sft_sha256": file_sha256(sft),
                "sft_rounds": manifest.get("config", {}).get("sft_rounds"),
                "examples": kept,
                "unchanged": unchanged,
                "excluded": {"truncated": truncated, "empty": counts.get("sft_empty_skipped")},
            }
        )
    cut = sum(i["excluded"]["truncated"] for i in inputs)
    if not convs and cut:
        raise DataError(
            f"all {cut} revision examples in {', '.join(cfg.data)} were cut at the token budget "
            "(truncated) and are excluded: raise `cai revise --max-new-tokens`, or pass --keep-truncated"
        )
    if not convs:
        hint = " (rows per round exist only with `cai revise --sft-rounds all`)" if cfg.rounds_upto is not None else ""
        raise DataError(f"no revision examples in {', '.join(cfg.data)}{hint}")
    return convs, inputs


def helpful_from_file(cfg: TrainSFTConfig, n: int) -> list[list[dict]]:
    """A seeded random choice of ``n`` conversations from --helpful-data."""
    rows = [check_conversation(r.get("messages"), f"{cfg.helpful_data}:{k}") for k, r in read_jsonl(cfg.helpful_data)]
    if len(rows) < n:
        raise DataError(
            f"{cfg.helpful_data}: {len(rows)} conversations, but --helpful-ratio {cfg.helpful_ratio} "
            f"needs {n}; give more or lower the ratio"
        )
    return random.Random(derive_seed(cfg.seed, "helpful-pick")).sample(rows, n)


def helpful_sampled(cfg: TrainSFTConfig, n: int, out: StageDir) -> tuple[list[list[dict]], int, int, list[str]]:
    """``n`` replies of --helpful-model (default: --model) to the helpful prompts, kept in helpful.jsonl;
    returns them, the empty count, the truncated count (excluded unless --keep-truncated) and the prompt
    ids used.

    Prompts are taken in a seeded shuffled order (so categories mix) and reused with a new
    sample index when ``n`` exceeds the set. Each reply's seed depends only on its key.
    """
    items = load_prompts(cfg.helpful_prompts, split=cfg.split)
    random.Random(derive_seed(cfg.seed, "helpful-order")).shuffle(items)
    wanted = [
        (items[i % len(items)], i // len(items), f"{items[i % len(items)].id}/s{i // len(items)}") for i in range(n)
    ]
    records = out.records("helpful.jsonl")
    failures = out.failures()
    todo = [w for w in wanted if w[2] not in records]
    if todo:
        backend = load_backend(
            cfg.helpful_model or cfg.model, batch_size=cfg.helpful_batch_size, prompt_format=cfg.prompt_format
        )
        sampling = Sampling(
            temperature=cfg.helpful_temperature, max_new_tokens=cfg.helpful_max_new_tokens, stop=STOP_STRINGS
        )
        print(
            f"[train sft] sampling {len(todo)} helpful replies ({len(wanted) - len(todo)} already done) "
            f"with {backend.name}",
            file=sys.stderr,
        )
        for start in range(0, len(todo), cfg.helpful_batch_size):
            batch = todo[start : start + cfg.helpful_batch_size]
            seeds = [derive_seed(cfg.seed, it.id, "helpful", s) for it, s, _ in batch]
            texts = generate_each(backend, [list(it.messages) for it, _, _ in batch], sampling, seeds)
            for (it, s, key), raw, seed in zip(batch, texts, seeds):
                if isinstance(raw, Failed):
                    failures.append(key, raw.error, prompt_id=it.id, kind=raw.kind)
                    continue
                why = finish_reason(raw)
                records.append(
                    {
                        "key": key,
                        "prompt_id": it.id,
                        "sample": s,
                        "response": clean_text(raw),
                        "raw": raw,
                        "truncated": None if why is None else why == "length",
                        "messages": [dict(m) for m in it.messages],
                        "model": backend.name,
                        "seed": seed,
                    }
                )
        del backend  # free it before the model to train is loaded
    convs, empty, truncated = [], 0, 0
    for _, _, key in wanted:
        rec = records.records.get(key)
        if rec is None:
            continue  # failed (counted from failures.jsonl); retried on the next run
        if not rec["response"].strip():
            empty += 1  # an empty reply teaches nothing; it is counted, not trained
        elif rec.get("truncated") and not cfg.keep_truncated:
            truncated += 1
        else:
            convs.append(rec["messages"] + [{"role": "assistant", "content": rec["response"]}])
    return convs, empty, truncated, sorted({it.id for it, _, _ in wanted})


def to_prompt_completion(conv: list[dict]) -> dict:
    """TRL conversational prompt/completion format: only the completion is trained."""
    return {"prompt": conv[:-1], "completion": conv[-1:]}


def build_trainer(cfg: TrainSFTConfig, convs: list[list[dict]]) -> tuple[SFTTrainer, int | None]:
    """Load the model and tokenizer and set up TRL's SFTTrainer. Also returns how many examples
    TRL dropped because truncation to --max-length left no reply token to train (None when packing)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_prompt_format(tokenizer, cfg.prompt_format)  # the plain-text template for a model without one
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
    rows = [to_prompt_completion(c) for c in convs]
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if cfg.packing:
        return trainer, None
    if len(trainer.train_dataset) == 0:
        raise DataError(f"every example's prompt fills --max-length {cfg.max_length}: nothing left to train")
    return trainer, len(rows) - len(trainer.train_dataset)


def main(cfg: TrainSFTConfig) -> Path:
    """Run the stage; returns the output folder (the checkpoint)."""
    if not 0 <= cfg.helpful_ratio < 1:
        raise ValueError(f"--helpful-ratio must be in [0, 1), got {cfg.helpful_ratio}")
    t0 = time.time()
    revisions, inputs = load_revisions(cfg)
    n_help = round(len(revisions) * cfg.helpful_ratio / (1 - cfg.helpful_ratio))
    helpful_hash = None
    if n_help and cfg.helpful_data is not None:
        helpful_hash = file_sha256(cfg.helpful_data)
    elif n_help:
        helpful_hash = file_sha256(prompt_file(cfg.helpful_prompts))
    settings = output_settings(cfg, data_sha256=[i["sft_sha256"] for i in inputs], helpful_data_sha256=helpful_hash)
    if cfg.helpful_data is not None:  # sampling settings are moot with a file
        for k in ("helpful_prompts", "helpful_temperature", "helpful_max_new_tokens", "split", "helpful_model"):
            settings.pop(k)

    def prepare(out: StageDir) -> dict:
        """On the main process: the helpful replies (sampled once, kept in the folder) and the checkpoint to resume."""
        prep = {"helpful": [], "empty": 0, "truncated": 0, "ids": []}
        if n_help and cfg.helpful_data is not None:
            prep["helpful"] = helpful_from_file(cfg, n_help)
        elif n_help:
            prep["helpful"], prep["empty"], prep["truncated"], prep["ids"] = helpful_sampled(cfg, n_help, out)
        out.begin()
        prep["resumed"] = last_checkpoint(cfg.out)
        return prep

    with owned_folder(cfg, STAGE, settings, prepare) as (out, prep):
        if prep == FINISHED:  # said by the main process
            return Path(cfg.out)
        helpful, resumed = prep["helpful"], prep["resumed"]
        trainer, dropped = build_trainer(cfg, revisions + helpful)
        if out is not None:
            print(
                f"[train sft] {len(revisions)} revisions + {len(helpful)} helpful examples "
                f"({'LoRA' if cfg.lora else 'full'} finetuning of {cfg.model}"
                + (f", {world_size()} processes" if world_size() > 1 else "")
                + ")",
                file=sys.stderr,
            )
        result = trainer.train(resume_from_checkpoint=resumed)
        # LoRA adapters are merged: later stages load a plain checkpoint and need no peft.
        save_trained(trainer, cfg.out, merge_lora=cfg.lora, base=resolve_model_path(cfg.model))
        processes = replicas(trainer)
        if out is None:
            return Path(cfg.out)  # the main process writes the manifest
        empty, helpful_truncated, helpful_ids = prep["empty"], prep["truncated"], prep["ids"]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        steps = trainer.state.global_step
        out.finish(
            {
                "config": training_config_dict(cfg),
                "inputs": {
                    "data": inputs,
                    "helpful_data": cfg.helpful_data,
                    "helpful_prompts": None if cfg.helpful_data or not n_help else cfg.helpful_prompts,
                    "helpful_model": None if cfg.helpful_data or not n_help else cfg.helpful_model or cfg.model,
                    "model": resolve_model_path(cfg.model),
                },
                "counts": {
                    "revision_examples": len(revisions),
                    "helpful_examples": len(helpful),
                    "helpful_target": n_help,
                    "helpful_empty": empty,
                    "helpful_failed": (
                        n_help - len(helpful) - empty - helpful_truncated if n_help and cfg.helpful_data is None else 0
                    ),
                    "excluded": {
                        "revision_truncated": sum(i["excluded"]["truncated"] for i in inputs),
                        "revision_empty": sum(i["excluded"]["empty"] or 0 for i in inputs),
                        "helpful_truncated": helpful_truncated,
                        "helpful_empty": empty,
                    },
                    "revision_unchanged": sum(i["unchanged"] for i in inputs),
                    "dropped_too_long": dropped,
                    "trained_examples": len(trainer.train_dataset) if dropped is not None else None,
                },
                "train": {
                    "steps": steps,
                    "resumed_from": resumed and Path(resumed).name,
                    "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None,
                    "train_loss": result.training_loss,
                    "seconds_per_step": round(result.metrics["train_runtime"] / max(steps, 1), 3),
                    "log_history": [
                        {"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h
                    ],
                },
                "processes": processes,
                "files": {
                    "checkpoint": ".",
                    "helpful": "helpful.jsonl" if n_help and cfg.helpful_data is None else None,
                },
                "prompt_ids": helpful_ids,  # the revisions' prompts are in the revise folders' manifests
                "seconds": round(time.time() - t0, 1),
            }
        )
    loss = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "no loss logged"
    print(f"[train sft] {steps} steps, {loss}; checkpoint -> {cfg.out}", file=sys.stderr)
    return Path(cfg.out)
