"""Every `cai` command answers --help, and the dispatcher reports unknown commands."""

import pytest

from constitutional_ai.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    try:
        code = main(command.split() + ["--help"])
    except SystemExit as e:  # argparse-style commands exit after printing help
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage:" in out.lower() and len(out) > 200


@pytest.mark.parametrize("kind", ["hhh", "compare", "rounds", "refusal"])
def test_eval_kinds_have_help(kind, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", kind, "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_top_level_help_and_unknown_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_server_flags_anywhere_on_the_line(monkeypatch):
    from constitutional_ai.cli import server_flags

    # set first so that monkeypatch restores both variables after the test
    monkeypatch.setenv("CAI_REQUEST_CACHE", "unset")
    monkeypatch.setenv("CAI_CONCURRENCY", "1")
    assert server_flags(["label", "--no-cache", "--pairs", "p", "--concurrency", "32"]) == ["label", "--pairs", "p"]
    import os

    assert os.environ["CAI_REQUEST_CACHE"] == "off" and os.environ["CAI_CONCURRENCY"] == "32"
    from constitutional_ai.models.openai import OpenAIBackend

    assert OpenAIBackend("m", "http://127.0.0.1:9/v1").concurrency == 32
    with pytest.raises(SystemExit, match="positive integer"):
        server_flags(["label", "--concurrency=0"])
