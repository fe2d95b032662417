"""``cai`` — a thin dispatcher to the stage modules (each has its own ``--help``)."""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module, function, one-line description). Modules load lazily so `cai --help`
# is instant and a stage's heavy imports happen only when it runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "revise": ("constitutional_ai.stages.revise", "cli", "SL-CAI data: critique and revise responses to red-team prompts"),
    "train sft": ("constitutional_ai.stages.train_sft", "cli", "SL-CAI: finetune on revisions (+ helpful samples) with TRL's SFTTrainer"),
    "sample-pairs": ("constitutional_ai.stages.sample_pairs", "cli", "two independent responses per prompt from a policy model"),
    "label": ("constitutional_ai.stages.label", "cli", "RLAIF: soft preference labels from a feedback model (multiple choice)"),
    "train pm": ("constitutional_ai.stages.train_pm", "cli", "preference model on soft AI labels (+ helpfulness comparisons)"),
    "score": ("constitutional_ai.stages.score", "cli", "score responses with a preference model"),
    "train rl": ("constitutional_ai.stages.train_rl", "cli", "RL-CAI: RLOO (or GRPO) against the PM with a KL penalty"),
    "train dpo": ("constitutional_ai.stages.train_dpo", "cli",
                  "DPO-CAI, offline (not the paper's route): DPO on soft AI labels or revision pairs"),
    "eval": ("constitutional_ai.stages.evaluate", "cli", "evaluations: hhh | compare | rounds | refusal"),
    "report": ("constitutional_ai.report", "cli", "self-contained HTML report of a run folder"),
    "run": ("constitutional_ai.pipeline", "cli", "the whole pipeline from a YAML recipe, resumable"),
    "constitution": ("constitutional_ai.constitution", "cli_main", "validate, show or convert a constitution file"),
}

USAGE = """usage: cai <command> [options]    (cai <command> --help for details)

Constitutional AI (Bai et al. 2022) on your own models.

commands:
{commands}

Model specs (--model): 'default' (embedded SmolLM2-135M-Instruct, CPU), a checkpoint folder,
a hub id, or openai:MODEL@http://host:port/v1 for any OpenAI-compatible server.
"""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {c:<{width}}  {d}" for c, (_, _, d) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"cai {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train" and rest and rest[0] in ("sft", "pm", "rl", "dpo"):
        cmd, rest = f"train {rest[0]}", rest[1:]
    if cmd not in COMMANDS:
        print(f"cai: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    module, func, _ = COMMANDS[cmd]
    fn = getattr(importlib.import_module(module), func)
    try:
        return int(fn(rest) or 0)
    except KeyboardInterrupt:
        print("\ncai: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        # Our own errors (and bad values/paths) carry file/line/field; a traceback would
        # only bury them. Anything else is a bug and keeps its traceback.
        ours = type(e).__module__.startswith("constitutional_ai") or isinstance(e, (ValueError, FileNotFoundError))
        if not ours or os.environ.get("CAI_DEBUG"):
            raise
        print(f"cai {cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
