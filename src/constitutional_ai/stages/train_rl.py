"""RL-CAI: reinforcement learning against the preference model with a KL penalty
(Bai et al. 2022, section 4).

    cai train rl --policy runs/sft --pm runs/pm --out runs/rl --max-steps 50

``--policy`` (usually the SL-CAI checkpoint of ``cai train sft``; ``default`` = the embedded
model) answers a mix of red-team and helpfulness prompts; the PM (a finished ``cai train pm``
folder) scores each answer; the policy is updated to raise that score while a KL penalty
keeps it close to where it started.

Algorithm: TRL no longer ships PPO. The default, ``RLOOTrainer``, is REINFORCE with a
leave-one-out baseline (``--num-generations`` answers per prompt, each judged against the
mean of its siblings): critic-free, and its reward is ``PM score − β · KL(policy ‖ start)``
summed over the answer's tokens — exactly the CAI objective, PM reward with a KL penalty
against the starting policy. ``--kl-coef`` is that β; its default is the paper's 0.001.
``--algorithm grpo`` runs TRL's ``GRPOTrainer`` instead, with a ``GRPOConfig`` built from
the same values and ``beta = --kl-coef`` (GRPO's own default is 0, i.e. no reference model);
GRPO adds the KL to the per-token loss rather than to the reward, and scales advantages by
the group's reward std. TRL-only fields take TRL's defaults.

Reward: a plain function given to TRL (``reward_funcs``) that scores prompt + answer with
:func:`score.score_conversations` — the code behind ``cai score``, so RL rewards are on
exactly the scale (same chat rendering, same tokens) the PM was trained and evaluated on.

Reward-hacking guards are measured and logged, not hidden and not silently penalised. A
second reward function, ``guards``, has weight ``--penalize-boilerplate`` (default 0, so it
changes nothing) and reports through TRL's ``log_metric`` per logged step:
  response_length   mean answer length in tokens (end-of-turn token not counted)
  empty_rate        answers that are empty or whitespace
  boilerplate_rate  answers containing one of ``--boilerplate-phrases`` (case-insensitive),
                    the refusals and stock phrases the paper saw RL-CAI overuse
  truncated_rate    answers cut at ``--max-completion-length`` (no end-of-turn token; TRL's
                    ``completions/clipped_ratio`` definition)
  short_rate / long_rate  answers under ``--min-length-tokens`` / over ``--max-length-tokens``
``--penalize-boilerplate X`` subtracts X from the reward of each answer with a boilerplate
phrase — a departure from the paper, which used the PM alone. ``reward`` below is always
the PM's score; ``reward_total`` is what the trainer optimised (before the KL term).

Output folder: the ``save_pretrained`` policy + tokenizer (a plain checkpoint for
``AutoModelForCausalLM`` and the local backend); ``log.jsonl``, one row per logged step:
``step, reward, reward_std`` (PM score mean/std), ``kl`` (TRL's mean per-token KL to the
reference; null when β = 0), ``response_length, empty_rate, boilerplate_rate,
truncated_rate, short_rate, long_rate`` (``long_rate`` null without --max-length-tokens),
``loss, reward_total, entropy`` (null when TRL does not log one); ``samples.jsonl``, a few
(prompt, completion, reward) rows from the first and last steps; ``manifest.json`` last.
Rerunning a finished command does nothing; changed settings are refused; an interrupted
run with intermediate checkpoints (``--save-strategy steps --save-steps N``) resumes from the
last one and keeps its history: ``log.jsonl`` keeps the rows up to that checkpoint and goes on
appending, and the first step's samples (kept in ``samples_first.jsonl`` as soon as they are
drawn) still open ``samples.jsonl``, so the log, the first/last metrics, the guard warnings and
the counts cover the whole run. Without checkpoints an interrupted run trains from the start.

Several processes: ``accelerate launch [--config_file launch/fsdp.yaml] -m constitutional_ai train rl ...``
(or ``torchrun``); every process trains, the main one owns the output folder (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, RLOOConfig

from ..config import opt, output_settings, training_config_dict
from ..data import DataError, PromptItem, load_prompts, prompt_file
from ..distributed import FINISHED, owned_folder, replicas, save_trained, world_size
from ..models import derive_seed
from ..models.local import resolve_model_path, use_prompt_format
from ..pm import load_pm, score_conversations
from ..store import MANIFEST, StageDir, dumps, file_sha256, last_checkpoint, manifest_identity, read_manifest

STAGE = "train-rl"
BOILERPLATE = [
    "I'm sorry",
    "I cannot",
    "I can't",
    "As an AI",
    "you are valid, valued, and cared for",
    "it's important to",
]
LOG_KEYS = [
    "step",
    "reward",
    "reward_std",
    "kl",
    "response_length",
    "empty_rate",
    "boilerplate_rate",
    "truncated_rate",
    "short_rate",
    "long_rate",
    "loss",
    "reward_total",
    "entropy",
]


@dataclass
class TrainRLConfig(RLOOConfig):
    """TRL's RLOOConfig (every TrainingArguments flag works) plus the RL-CAI inputs."""

    policy: str = opt(
        "default",
        "Policy to train: default (embedded SmolLM2-135M) or a checkpoint folder, usually `cai train sft` output",
        output=False,
    )  # pinned by its identity in the inputs
    pm: str | None = opt(None, "Preference model: a finished `cai train pm` folder", output=False)  # pinned likewise
    out: str = opt("runs/rl", "Output folder for the RL-CAI checkpoint and logs (also sets output_dir)", output=False)
    algorithm: str = opt("rloo", "rloo (KL penalty in the reward, the CAI objective) or grpo (KL in the loss)")
    kl_coef: float = opt(0.001, "KL penalty coefficient β against the starting policy (paper: 0.001); TRL's `beta`")
    prompts_red_team: str = opt(
        "builtin:red_team", "Red-team prompts (file or builtin:NAME)", output=False
    )  # hash pinned
    prompts_helpful: str = opt(
        "builtin:helpful", "Helpfulness prompts (file or builtin:NAME)", output=False
    )  # hash pinned
    helpful_fraction: float = opt(0.5, "Share of helpfulness prompts in the RL prompt mix (the paper trained on both)")
    limit_prompts: int | None = opt(None, "Use at most this many prompts in all (after mixing)")
    split: str = opt(
        "train",
        "Prompt split: train (default; evaluations use eval), eval or all; a file without split fields is used whole",
    )
    boilerplate_phrases: list[str] = opt(
        BOILERPLATE, "Phrases whose rate is logged as boilerplate_rate (case-insensitive)"
    )
    penalize_boilerplate: float = opt(
        0.0, "Subtract this from the reward of answers with a boilerplate phrase (0 = paper: PM only)"
    )
    min_length_tokens: int = opt(5, "Answers shorter than this many tokens count in short_rate")
    max_length_tokens: int | None = opt(
        None, "Answers longer than this many tokens count in long_rate (unset: not measured)"
    )
    pm_batch_size: int = opt(16, "Conversations per PM forward pass", output=False, min=1)
    num_samples: int = opt(
        4, "Completions kept in samples.jsonl from the first and from the last step", output=False, min=0
    )
    # CPU-friendly defaults for inherited TRL/transformers settings (all overridable).
    beta: float | None = opt(None, "TRL's name for --kl-coef; set --kl-coef instead")
    bf16: bool | None = opt(False, "bf16 mixed precision (TRL's default is on; off here: CPU fp32)")
    gradient_checkpointing: bool | None = opt(
        None, "Deprecated alias of --activation-checkpointing (off by default here)", nargs="?", const=True
    )
    report_to: None | str | list[str] = opt("none", "Integrations to log to ('none', 'wandb', 'tensorboard', ...)")
    save_strategy: str = opt(
        "no", "Intermediate checkpoints: 'no', 'steps' or 'epoch' (the final policy is always saved)"
    )
    logging_steps: float = opt(1, "Log every N optimizer steps")
    per_device_train_batch_size: int = opt(4, "Completions per device per step (a multiple of --num-generations)")
    num_generations: int | None = opt(4, "Completions per prompt (RLOO's leave-one-out baseline needs >= 2)")
    max_completion_length: int | None = opt(128, "Longest answer in tokens")
    temperature: float = opt(1.0, "Sampling temperature")
    num_train_epochs: float = opt(1.0, "Epochs over the prompt mix (--max-steps overrides)")
    disable_dropout: bool = opt(True, "No dropout, so policy and reference log-probs compare like with like")
    seed: int = opt(0, "Seed for the prompt mix, sampling and shuffling")

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = self.out
        if self.beta is not None and self.beta != self.kl_coef:
            raise ValueError(f"--beta {self.beta} differs from --kl-coef {self.kl_coef}: set --kl-coef only")
        self.beta = self.kl_coef
        if self.algorithm not in ("rloo", "grpo"):
            raise ValueError(f"--algorithm must be rloo or grpo, got {self.algorithm!r}")
        if self.reward_weights is not None and list(self.reward_weights) != [1.0, self.penalize_boilerplate]:
            raise ValueError("--reward-weights is set from --penalize-boilerplate (PM weight 1, guards weight X)")
        self.reward_weights = [1.0, self.penalize_boilerplate]
        if self.use_vllm:
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError(
                    "--use-vllm needs vLLM in this environment (pip install vllm, on a machine with a CUDA GPU); "
                    "without it, leave --use-vllm off and the policy generates through transformers"
                )
            if self.vllm_mode not in ("colocate", "server"):
                raise ValueError(f"--vllm-mode must be colocate or server, got {self.vllm_mode!r}")
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = False  # TRL turns it on by default; it only slows small CPU runs
        # The values as given, before TrainingArguments derives others from them: GRPOConfig is built from these.
        self._given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        super().__post_init__()


def grpo_config(cfg: TrainRLConfig) -> GRPOConfig:
    """A GRPOConfig with every value of ``cfg`` that GRPO also has (β included); the rest GRPO's defaults."""
    names = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    return GRPOConfig(**{k: v for k, v in cfg._given.items() if k in names})


def generation_info(cfg: TrainRLConfig) -> dict:
    """How the policy's answers are generated during RL (recorded in the manifest)."""
    if not cfg.use_vllm:
        return {"engine": "transformers"}
    info = {"engine": "vllm", "vllm_mode": cfg.vllm_mode}
    if cfg.vllm_mode == "server":
        info["server"] = cfg.vllm_server_base_url or f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}"
    else:
        info["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        info["tensor_parallel_size"] = cfg.vllm_tensor_parallel_size
    return info


# ----------------------------------------------------------------------------- inputs
def mix_prompts(
    red: list[PromptItem], helpful: list[PromptItem], fraction: float, limit: int | None, seed: int
) -> list[dict]:
    """As many prompts as both sets allow with ``fraction`` of them helpful (≤ ``limit``), seeded and shuffled.

    Rows are TRL conversational prompts: ``{"prompt": messages, "prompt_id", "source"}``.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"--helpful-fraction must be in [0, 1], got {fraction}")
    total = math.floor(
        min(
            len(helpful) / fraction if fraction > 0 else math.inf,
            len(red) / (1 - fraction) if fraction < 1 else math.inf,
        )
    )
    if limit is not None:
        total = min(total, limit)
    n_help = min(round(total * fraction), len(helpful))
    n_red = min(total - n_help, len(red))
    if n_help + n_red == 0:
        raise DataError("no RL prompts: the prompt sets are empty or --limit-prompts is 0")
    rng = random.Random(derive_seed(seed, "rl-prompts"))
    picked = [("helpful", it) for it in rng.sample(helpful, n_help)] + [
        ("red_team", it) for it in rng.sample(red, n_red)
    ]
    rng.shuffle(picked)
    return [
        {"prompt": [dict(m) for m in it.messages], "prompt_id": f"{src}/{it.id}", "source": src} for src, it in picked
    ]


def describe_input(path: str, stage: str | None) -> dict:
    """Path plus the manifest identity of a stage folder (required when ``stage`` is given)."""
    p = Path(path)
    if stage is not None or (p / MANIFEST).exists():
        m = read_manifest(p, stage=stage)
        return {"path": str(p.resolve()), "stage": m.get("stage"), "manifest": manifest_identity(m)}
    return {"path": str(p.resolve()) if p.exists() else path}


# ----------------------------------------------------------------------------- guards
def guard_flags(
    texts: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    end_ids: set[int],
    phrases: Sequence[str],
    min_tokens: int,
    max_tokens: int | None,
) -> list[dict]:
    """Per answer: its length in tokens (end-of-turn excluded) and which guard flags it raises."""
    wanted = [p.casefold().replace("\u2019", "'") for p in phrases]
    out = []
    for text, ids in zip(texts, completion_ids, strict=True):
        ended = bool(ids) and ids[-1] in end_ids
        n = len(ids) - ended
        norm = text.casefold().replace("\u2019", "'")
        hit = next((p for p, w in zip(phrases, wanted) if w and w in norm), None)
        out.append(
            {
                "length": n,
                "empty": not text.strip(),
                "boilerplate": hit,
                "truncated": not ended,
                "short": n < min_tokens,
                "long": None if max_tokens is None else n > max_tokens,
            }
        )
    return out


def guard_rates(flags: Sequence[dict]) -> dict:
    """Means over answers: response_length and the rate of each flag (``long_rate`` None when unmeasured)."""
    n = len(flags)
    rate = lambda k: sum(bool(f[k]) for f in flags) / n  # noqa: E731
    return {
        "response_length": sum(f["length"] for f in flags) / n,
        "empty_rate": rate("empty"),
        "boilerplate_rate": rate("boilerplate"),
        "truncated_rate": rate("truncated"),
        "short_rate": rate("short"),
        "long_rate": None if flags[0]["long"] is None else rate("long"),
    }


class Rewards:
    """The two reward functions TRL calls each generation (``pm`` and ``guards``), and what they saw."""

    def __init__(
        self,
        pm_model,
        pm_tokenizer,
        cfg: TrainRLConfig,
        end_ids: set[int],
        first_path: Path | None = None,
        resumed_step: int = 0,
    ):
        self.pm_model, self.pm_tokenizer, self.cfg, self.end_ids = pm_model, pm_tokenizer, cfg, end_ids
        self.first: list[dict] | None = None
        self.first_path = first_path
        if first_path is not None and resumed_step and first_path.exists():
            # A resumed run: the first step's samples were drawn before the interruption.
            self.first = [json.loads(x) for x in first_path.read_text().splitlines() if x.strip()] or None
        self.last: list[dict] = []
        self.scored = 0

    def _flags(self, completions, completion_ids) -> list[dict]:
        c = self.cfg
        return guard_flags(
            [m[-1]["content"] for m in completions],
            completion_ids,
            self.end_ids,
            c.boilerplate_phrases,
            c.min_length_tokens,
            c.max_length_tokens,
        )

    def pm(self, prompts, completions, completion_ids, trainer_state=None, prompt_id=None, **_) -> list[float]:
        """PM score of each prompt + answer conversation (as `cai score` computes it)."""
        convs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
        scores = score_conversations(self.pm_model, self.pm_tokenizer, convs, self.cfg.pm_batch_size)
        self.scored += len(scores)
        step = trainer_state.global_step + 1 if trainer_state is not None else None
        flags = self._flags(completions, completion_ids)
        rows = [
            {
                "step": step,
                "prompt_id": prompt_id[i] if prompt_id else None,
                "prompt": list(prompts[i]),
                "completion": completions[i][-1]["content"],
                "reward": scores[i],
                **flags[i],
            }
            for i in range(min(self.cfg.num_samples, len(scores)))
        ]
        if self.first is None:
            self.first = rows
            if self.first_path is not None:
                write_rows(self.first_path, rows)
        self.last = rows
        return scores

    def guards(self, prompts, completions, completion_ids, log_metric=None, **_) -> list[float]:
        """Logs the guard metrics; returns −1 per boilerplate answer (weight --penalize-boilerplate, default 0)."""
        flags = self._flags(completions, completion_ids)
        if log_metric is not None:
            for k, v in guard_rates(flags).items():
                if v is not None:
                    log_metric(f"guards/{k}", v)
        return [-1.0 if f["boilerplate"] else 0.0 for f in flags]


def log_row(logs: dict, step: int) -> dict:
    """One log.jsonl row from a TRL log dict (see the module docstring); missing values are None."""
    g = lambda k: logs.get(k)  # noqa: E731
    row = {
        "step": step,
        "reward": g("rewards/pm/mean"),
        "reward_std": g("rewards/pm/std"),
        "kl": g("kl"),
        "loss": g("loss"),
        "reward_total": g("reward"),
        "entropy": g("entropy"),
    }
    row.update(
        {
            k: g(f"guards/{k}")
            for k in ("response_length", "empty_rate", "boilerplate_rate", "truncated_rate", "short_rate", "long_rate")
        }
    )
    return {k: row[k] for k in LOG_KEYS}


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` with these JSONL rows at once (written aside, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


class LogWriter(TrainerCallback):
    """Appends a log.jsonl row (flushed) and prints a guard line at every logged training step.

    ``resumed_step`` > 0 (a run resumed from ``checkpoint-N``): the rows of steps up to N are
    kept and the run appends after them; rows past N (steps the resumed run trains again) are
    dropped. Otherwise the log starts empty."""

    def __init__(self, path: Path | None, resumed_step: int = 0):
        self.path, self.rows = path, []
        if path is None:  # a process other than the main one: keeps nothing, writes nothing
            return
        if resumed_step and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    break  # a partial last line from a kill
                if row.get("step") is not None and row["step"] <= resumed_step:
                    self.rows.append(row)
        write_rows(path, self.rows)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.path is None or not logs or "rewards/pm/mean" not in logs:
            return
        row = log_row(logs, state.global_step)
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(dumps(row) + "\n")
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"[train rl] step {row['step']}: reward {fmt(row['reward'], '.3f')} kl {fmt(row['kl'], '.4f')} "
            f"len {fmt(row['response_length'], '.1f')} empty {fmt(row['empty_rate'], '.0%')} boilerplate "
            f"{fmt(row['boilerplate_rate'], '.0%')} truncated {fmt(row['truncated_rate'], '.0%')}",
            file=sys.stderr,
        )


def guard_warnings(first: dict, last: dict) -> list[str]:
    """Plain-language alarms comparing the first and last logged steps (reported, never acted on)."""
    out = []
    if last["boilerplate_rate"] is not None and last["boilerplate_rate"] > (first["boilerplate_rate"] or 0) + 0.2:
        out.append(f"boilerplate rate rose from {first['boilerplate_rate']:.0%} to {last['boilerplate_rate']:.0%}")
    if last["empty_rate"] is not None and last["empty_rate"] > (first["empty_rate"] or 0) + 0.1:
        out.append(f"empty answers rose from {first['empty_rate']:.0%} to {last['empty_rate']:.0%}")
    if (
        first["response_length"]
        and last["response_length"] is not None
        and last["response_length"] < 0.5 * first["response_length"]
    ):
        out.append(f"answers shrank from {first['response_length']:.1f} to {last['response_length']:.1f} tokens")
    if last["truncated_rate"] is not None and last["truncated_rate"] > (first["truncated_rate"] or 0) + 0.3:
        out.append(
            f"answers hitting the length cap rose from {first['truncated_rate']:.0%} to {last['truncated_rate']:.0%}"
        )
    return out


# ----------------------------------------------------------------------------- stage
def build_trainer(
    cfg: TrainRLConfig,
    rows: list[dict],
    policy_path: str,
    pm_model,
    pm_tokenizer,
    log: LogWriter,
    first_path: Path | None = None,
    resumed_step: int = 0,
):
    """The TRL trainer (RLOO or GRPO) over the prompt rows, with the PM and guard rewards; also returns ``Rewards``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer, RLOOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    use_prompt_format(tokenizer)  # a policy without a chat template is prompted with the plain-text one
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)  # fp32: bf16 decoding crawls on CPUs
    eos = model.generation_config.eos_token_id
    end_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    end_ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id}  # as TRL tells a finished answer from a cut one
    rewards = Rewards(pm_model, pm_tokenizer, cfg, end_ids, first_path, resumed_step)
    cls, args = (RLOOTrainer, cfg) if cfg.algorithm == "rloo" else (GRPOTrainer, grpo_config(cfg))
    trainer = cls(
        model=model,
        reward_funcs=[rewards.pm, rewards.guards],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[log],
    )
    return trainer, rewards


def main(cfg: TrainRLConfig) -> Path:
    """Train (or find already trained) the RL-CAI policy; returns the output folder."""
    if not cfg.pm:
        raise ValueError("--pm: give a finished `cai train pm` folder")
    t0 = time.time()
    policy_path = resolve_model_path(cfg.policy)
    inputs = {
        "policy": describe_input(policy_path, None),
        "pm": describe_input(cfg.pm, "train-pm"),
        "prompts": {
            "red_team": cfg.prompts_red_team,
            "red_team_sha256": file_sha256(prompt_file(cfg.prompts_red_team)),
            "helpful": cfg.prompts_helpful,
            "helpful_sha256": file_sha256(prompt_file(cfg.prompts_helpful)),
        },
    }
    red = load_prompts(cfg.prompts_red_team, split=cfg.split)
    helpful = load_prompts(cfg.prompts_helpful, split=cfg.split)
    rows = mix_prompts(red, helpful, cfg.helpful_fraction, cfg.limit_prompts, cfg.seed)

    def prepare(out: StageDir) -> dict:
        out.begin()
        resumed = last_checkpoint(cfg.out)
        return {"resumed": resumed, "step": int(Path(resumed).name.rsplit("-", 1)[1]) if resumed else 0}

    with owned_folder(cfg, STAGE, output_settings(cfg, inputs=inputs), prepare) as (out, prep):
        if prep == FINISHED:  # said by the main process
            return Path(cfg.out)
        resumed, resumed_step = prep["resumed"], prep["step"]
        pm_model, pm_tokenizer = load_pm(cfg.pm, device=str(cfg.device))
        # Only the main process writes the log and the first samples (``None``: not written here).
        log = LogWriter(Path(cfg.out) / "log.jsonl" if out is not None else None, resumed_step)
        first_path = Path(cfg.out) / "samples_first.jsonl" if out is not None else None
        trainer, rewards = build_trainer(cfg, rows, policy_path, pm_model, pm_tokenizer, log, first_path, resumed_step)
        n_help = sum(r["source"] == "helpful" for r in rows)
        if out is not None:
            print(
                f"[train rl] {cfg.algorithm.upper()} of {cfg.policy} against {cfg.pm}: {len(rows) - n_help} red-team "
                f"+ {n_help} helpful prompts, beta {trainer.beta}"
                + (f", {world_size()} processes" if world_size() > 1 else ""),
                file=sys.stderr,
            )
        result = trainer.train(resume_from_checkpoint=resumed)
        save_trained(trainer, cfg.out)
        processes = replicas(trainer)
        scored = sum(gather_object([rewards.scored]))  # each process scores its own completions
        if out is None:
            return Path(cfg.out)  # the main process writes samples, log and manifest
        samples = (rewards.first or []) + (rewards.last if rewards.last is not rewards.first else [])
        out.write_jsonl("samples.jsonl", samples)
        steps = trainer.state.global_step
        first, last = (log.rows[0], log.rows[-1]) if log.rows else ({}, {})
        warnings = guard_warnings(first, last) if log.rows else []
        for w in warnings:
            print(f"[train rl] guard: {w} (see log.jsonl and samples.jsonl)", file=sys.stderr)
        config = training_config_dict(cfg)
        out.finish(
            {
                "config": config,
                "trainer": {
                    "class": type(trainer).__name__,
                    "beta": trainer.beta,
                    "reward_funcs": trainer.reward_func_names,
                    "reward_weights": trainer.reward_weights.tolist(),
                    "generation": generation_info(cfg),
                },
                "inputs": {**inputs, "policy_path": policy_path},
                "counts": {
                    "prompts": len(rows),
                    "red_team_prompts": len(rows) - n_help,
                    "helpful_prompts": n_help,
                    "completions_scored": scored,
                    "steps": steps,
                    "logged_steps": len(log.rows),
                    "resumed_from_step": resumed_step or None,
                },
                "metrics": {
                    "first": first,
                    "last": last,
                    "guard_warnings": warnings,
                    "train_loss": result.training_loss,
                    "seconds_per_step": round(result.metrics["train_runtime"] / max(steps, 1), 3),
                },
                "files": {
                    "checkpoint": ".",
                    "log": "log.jsonl",
                    "samples": "samples.jsonl",
                    "samples_first": "samples_first.jsonl",
                },
                "processes": processes,
                "prompt_ids": [r["prompt_id"].split("/", 1)[1] for r in rows],
                "seconds": round(time.time() - t0, 1),
            }
        )
    print(
        f"[train rl] {steps} steps; reward {first.get('reward')} -> {last.get('reward')}; checkpoint -> {cfg.out}",
        file=sys.stderr,
    )
    return Path(cfg.out)
