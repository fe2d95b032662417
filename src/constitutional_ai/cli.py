"""``cai`` — a thin dispatcher to the stage modules (each has its own ``--help``)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

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
a hub id, openai:MODEL@http://host:port/v1 for any OpenAI-compatible server, or
ray:N*SPEC / ray:SPEC,SPEC,... to shard the work over Ray workers (docs/engines.md).

Options for every command that talks to model servers (anywhere on the line):
  --no-cache        neither read nor write the request cache ($CAI_CACHE_DIR/requests.sqlite)
  --concurrency N   requests in flight per server (default 8)
"""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {c:<{width}}  {d}" for c, (_, _, d) in COMMANDS.items()))


def server_flags(argv: list[str]) -> list[str]:
    """Take ``--no-cache`` and ``--concurrency N`` out of ``argv`` and set them for every backend of
    this process (and its children, e.g. Ray workers) through the environment."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--no-cache":
            os.environ["CAI_REQUEST_CACHE"] = "off"
        elif a == "--concurrency" or a.startswith("--concurrency="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if "=" in a else 1
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"cai: --concurrency needs a positive integer, got {value!r}")
            os.environ["CAI_CONCURRENCY"] = value
        else:
            out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"cai {__version__}")
        return 0
    argv = server_flags(argv)
    if not argv:
        print(usage())
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd in BY_NAME:  # `cai train-sft` = `cai train sft`
        cmd = BY_NAME[cmd].command
    elif cmd in GROUPS:
        if not rest or rest[0] in ("-h", "--help"):
            kinds = [(c, d) for c, (_, _, d) in COMMANDS.items() if c.startswith(cmd + " ")]
            print(
                f"usage: cai {cmd} <kind> [options]   (cai {cmd} <kind> --help)\n\nkinds:\n"
                + "\n".join(f"  {c.split(' ', 1)[1]:<8}  {d}" for c, d in kinds)
            )
            return 0 if rest else 2
        cmd, rest = f"{cmd} {rest[0]}", rest[1:]
    if cmd not in COMMANDS:
        print(f"cai: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    quiet_libraries()
    module, func, _ = COMMANDS[cmd]
    fn = BY_NAME[func].cli if func in BY_NAME else getattr(importlib.import_module(module), func)
    return guarded(f"cai {cmd}", lambda: fn(rest))


def quiet_libraries() -> None:
    """No progress bars or info chatter from transformers; no tokenizer thread pools in workers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def guarded(label: str, fn: Callable[[], int | None]) -> int:
    """Run a command: our own errors print as one line (exit 2), Ctrl-C says how to resume (130)."""
    from .distributed import die_with_launcher

    die_with_launcher()  # under accelerate launch / torchrun: die with the launcher, never linger
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("\ncai: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        # Our own errors (and bad values/paths) carry file/line/field; a traceback would
        # only bury them. Anything else is a bug and keeps its traceback.
        ours = type(e).__module__.startswith("constitutional_ai") or isinstance(e, (ValueError, FileNotFoundError))
        if not ours or os.environ.get("CAI_DEBUG"):
            raise
        print(f"{label}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
