"""The stages of the method, one module each, and their one name.

A stage's name (``train-sft``) is its manifest's ``stage``, its recipe key under ``stages:``,
the default name of its folder in a ``cai run``, and — with the first dash read as a space
for the ``train`` and ``eval`` groups — its command (``cai train sft``; ``cai train-sft``
works too). The CLI, the pipeline and the report all read this table.

A stage module never imports another stage module: what two stages share lives in the
library modules beside ``stages/`` (``feedback``, ``pm``, ``metrics``, ``generation`` ...).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stage:
    """One stage: its name, its module (with ``main(config)``), its config class, and what it does."""

    name: str
    module: str
    config: str
    summary: str

    @property
    def command(self) -> str:
        group, _, rest = self.name.partition("-")
        return f"{group} {rest}" if group in ("train", "eval") and rest else self.name

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def cli(self, argv: list[str] | None = None) -> int:
        """``cai <command> ARGS``: parse the flags (and ``--config``) into the config, run ``main``."""
        from ..config import parse_config

        mod = self.load()
        mod.main(
            parse_config(getattr(mod, self.config), argv, f"cai {self.command}", (mod.__doc__ or "").split("\n\n")[0])
        )
        return 0


STAGES: tuple[Stage, ...] = (
    Stage("redteam", "redteam", "RedteamConfig", "new red-team prompts by few-shot generation from seed prompts"),
    Stage("revise", "revise", "ReviseConfig", "SL-CAI data: critique and revise responses to red-team prompts"),
    Stage(
        "train-sft",
        "train_sft",
        "TrainSFTConfig",
        "SL-CAI: finetune on revisions (+ helpful samples) with TRL's SFTTrainer",
    ),
    Stage(
        "sample-pairs", "sample_pairs", "SamplePairsConfig", "two independent responses per prompt from a policy model"
    ),
    Stage("label", "label", "LabelConfig", "RLAIF: soft preference labels from a feedback model (multiple choice)"),
    Stage("train-pm", "train_pm", "TrainPMConfig", "preference model on soft AI labels (+ helpfulness comparisons)"),
    Stage("train-rl", "train_rl", "TrainRLConfig", "RL-CAI: RLOO (or GRPO) against the PM with a KL penalty"),
    Stage(
        "train-dpo",
        "train_dpo",
        "TrainDPOConfig",
        "offline route (not the paper's): DPO on soft AI labels or revision pairs",
    ),
    Stage(
        "eval-hhh",
        "eval_hhh",
        "HHHConfig",
        "HHH binary multiple choice accuracy and calibration (feedback model or PM)",
    ),
    Stage(
        "eval-compare",
        "eval_compare",
        "CompareConfig",
        "head-to-head: models answer the same prompts, a judge compares them; Elo",
    ),
    Stage("eval-rounds", "eval_rounds", "RoundsConfig", "PM score of the initial response and of each revision round"),
    Stage("eval-refusal", "eval_refusal", "RefusalConfig", "refusal rate on benign prompts that look risky"),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
