"""``cai`` — a thin dispatcher to the stage modules (each has its own ``--help``)."""

from __future__ import annotations

import importlib
import os
import sys

from .stages import BY_NAME, STAGES

# command -> (module, function or stage name, one-line description). The stages come from the
# one stage table; modules load lazily so `cai --help` is instant and a stage's heavy imports happen
# only when it runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    **{s.command: ("constitutional_ai.stages", s.name, s.summary) for s in STAGES},
    "score": ("constitutional_ai.stages.score", "cli", "score responses with a preference model"),
    "report": ("constitutional_ai.report", "cli", "self-contained HTML report of a run folder"),
    "run": ("constitutional_ai.pipeline", "cli", "the whole pipeline from a YAML recipe, resumable"),
    "constitution": ("constitutional_ai.constitution", "cli_main", "validate, show or convert a constitution file"),
}
#: Words that take a second word: `cai train sft`, `cai eval hhh`.
GROUPS = ("train", "eval")

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
    if cmd in BY_NAME:  # `cai train-sft` = `cai train sft`
        cmd = BY_NAME[cmd].command
    elif cmd in GROUPS:
        if not rest or rest[0] in ("-h", "--help"):
            kinds = [(c, d) for c, (_, _, d) in COMMANDS.items() if c.startswith(cmd + " ")]
            print(f"usage: cai {cmd} <kind> [options]   (cai {cmd} <kind> --help)\n\nkinds:\n"
                  + "\n".join(f"  {c.split(' ', 1)[1]:<8}  {d}" for c, d in kinds))
            return 0 if rest else 2
        cmd, rest = f"{cmd} {rest[0]}", rest[1:]
    if cmd not in COMMANDS:
        print(f"cai: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    module, func, _ = COMMANDS[cmd]
    fn = BY_NAME[func].cli if func in BY_NAME else getattr(importlib.import_module(module), func)
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
