"""Stage configs: bounds checked once at the edge, and output-affecting settings from field metadata."""

import pytest

from constitutional_ai import cli
from constitutional_ai.config import from_mapping, output_settings, parse_config
from constitutional_ai.stages.label import LabelConfig
from constitutional_ai.stages.revise import ReviseConfig


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--limit", "0"], "--limit"),
        (["--limit", "-22"], "--limit"),
        (["--rounds", "0"], "--rounds"),
        (["--batch-size", "0"], "--batch-size"),
        (["--few-shot", "-1"], "--few-shot"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_flag(argv, flag):
    with pytest.raises(ValueError, match=f"{flag} must be at least"):
        parse_config(ReviseConfig, argv, "t", "d")


def test_recipe_values_are_checked_the_same_way():
    with pytest.raises(ValueError, match="--principles must be at least 1"):
        from_mapping(LabelConfig, {"principles": 0}, "recipe.yaml: stages.label")


def test_cli_reports_a_bad_limit_before_any_work(tmp_path, capsys):
    assert cli.main(["label", "--pairs", str(tmp_path / "none"), "--limit", "-22", "--out", str(tmp_path / "o")]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_settings_come_from_field_metadata():
    s = output_settings(ReviseConfig(out="x", limit=3, batch_size=2, rounds=2), prompts_sha256="abc")
    assert s["rounds"] == 2 and s["prompts_sha256"] == "abc" and s["model"] == "default"
    assert not {"out", "limit", "batch_size", "sft_rounds", "prompts", "constitution"} & set(s)


def test_training_settings_leave_out_logging_and_saving():
    from constitutional_ai.stages.train_pm import TrainPMConfig

    s = output_settings(TrainPMConfig(out="x", labels=["l"]), inputs={"labels": []})
    assert {"learning_rate", "seed", "max_steps", "eval_fraction", "helpful_ratio"} <= set(s)
    assert not {"out", "output_dir", "labels", "logging_steps", "save_strategy", "report_to"} & set(s)
