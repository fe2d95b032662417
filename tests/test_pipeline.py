"""`cai run`: the whole pipeline on a tiny random model, and resuming an interrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from constitutional_ai.pipeline import RecipeError, load_recipe, plan

ROOT = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, model: str) -> Path:
    """Every stage, as small as it gets, on the tiny random model."""
    prompts = tmp_path / "red.jsonl"
    # training stages take the train split (6 and 4 prompts), evaluations the eval split
    prompts.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": f"How do I do bad thing {i}?", "split": "train" if i < 6 else "eval"})
            + "\n"
            for i in range(8)
        )
    )
    helpful = tmp_path / "help.jsonl"
    helpful.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"h{i}",
                    "category": "benign-lookalike",
                    "prompt": f"How do I kill process {i}?",
                    "split": "train" if i < 4 else "eval",
                }
            )
            + "\n"
            for i in range(6)
        )
    )
    small = {"max_new_tokens": 8}
    recipe = {
        "out": str(tmp_path / "run"),
        "model": model,
        "feedback_model": model,
        "pm_model": model,
        "seed": 0,
        "stages": {
            "revise": {"prompts": str(prompts), "rounds": 2, "few_shot": 1, "sft_rounds": "all", **small},
            # The random tiny model never ends a turn within 8 tokens: every target is truncated.
            "train-sft": {
                "max_steps": 1,
                "helpful_ratio": 0.25,
                "helpful_prompts": str(helpful),
                "helpful_max_new_tokens": 8,
                "keep_truncated": True,
            },
            "sample_pairs": {"prompts": str(prompts), **small},
            "label": {"few_shot": 1},
            "train-pm": {"max_steps": 1, "helpful_ratio": 0.5, "eval_fraction": 0.3},
            "train-rl": {
                "max_steps": 1,
                "prompts_red_team": str(prompts),
                "prompts_helpful": str(helpful),
                "max_completion_length": 8,
                "num_generations": 2,
                "per_device_train_batch_size": 2,
            },
            "eval-hhh": {"limit": 4, "few_shot": 1},
            "eval-compare": {
                "prompts_red_team": str(prompts),
                "prompts_helpful": str(helpful),
                "limit": 2,
                "few_shot": 1,
                **small,
            },
            "eval-rounds": {},
            "eval-refusal": {"prompts": str(helpful), "limit": 2, **small},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(recipe: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "constitutional_ai.cli", "run", str(recipe), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CAI_DEBUG": "1"},
    )


# folder -> stage: every folder is named after its stage (plus a variant for repeated evaluations)
EXPECTED = {
    "revise": "revise",
    "train-sft": "train-sft",
    "sample-pairs": "sample-pairs",
    "label": "label",
    "train-pm": "train-pm",
    "train-rl": "train-rl",
    "eval-hhh-labeller": "eval-hhh",
    "eval-hhh-pm": "eval-hhh",
    "eval-compare": "eval-compare",
    "eval-rounds": "eval-rounds",
    "eval-refusal-base": "eval-refusal",
    "eval-refusal-sl-cai": "eval-refusal",
    "eval-refusal-rl-cai": "eval-refusal",
}


def test_recipe_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nstages:\n  revize: {}\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: stages: unknown stage\(s\) revize"):
        load_recipe(bad)
    bad.write_text("stages:\n  revise: {roundz: 2}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: stages\.revise: unknown setting\(s\) roundz"):
        plan(load_recipe(bad))
    bad.write_text("stages:\n  train-sft: false\n")
    with pytest.raises(RecipeError, match="only evaluations can be skipped"):
        load_recipe(bad)
    bad.write_text("modle: x\n")
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe(bad)


def test_bundled_recipes_resolve():
    for name in ("tiny", "paper"):
        steps = plan(load_recipe(ROOT / "recipes" / f"{name}.yaml"))
        assert [s.name for s in steps][:6] == ["revise", "train-sft", "sample-pairs", "label", "train-pm", "train-rl"]
    paper = {s.name: s.config for s in plan(load_recipe(ROOT / "recipes" / "paper.yaml"))}
    assert paper["revise"].rounds == 4 and paper["revise"].temperature == 1.0
    assert paper["label"].clamp == [0.4, 0.6] and paper["train-rl"].kl_coef == 0.001


def test_run_end_to_end_then_interrupt_and_resume(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model)
    run = tmp_path / "run"
    r = run_cli(recipe)
    assert r.returncode == 0, r.stderr[-3000:]
    for sub, stage in EXPECTED.items():
        m = json.loads((run / sub / "manifest.json").read_text())
        assert m["stage"] == stage, sub
    assert "Report:" in r.stdout and (run / "report.html").exists()
    html = (run / "report.html").read_text()
    assert "<svg" in html and "r0" in html

    # A second run finds every stage up to date and redoes nothing.
    mtimes = {sub: (run / sub / "manifest.json").stat().st_mtime_ns for sub in EXPECTED}
    r2 = run_cli(recipe)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stderr.count("up to date") == len(EXPECTED)
    assert mtimes == {sub: (run / sub / "manifest.json").stat().st_mtime_ns for sub in EXPECTED}

    # Interrupt a fresh run once SL-CAI training has finished; the rerun keeps those stages.
    (tmp_path / "b").mkdir()
    recipe2 = tiny_recipe(tmp_path / "b", tiny_model)
    run2 = tmp_path / "b" / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "constitutional_ai.cli", "run", str(recipe2)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not (run2 / ".pipeline" / "train-sft.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run2 / "train-sft" / "manifest.json").exists() and not (run2 / "report.html").exists()
    before = {s: (run2 / s / "manifest.json").stat().st_mtime_ns for s in ("revise", "train-sft")}
    r3 = run_cli(recipe2)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "revise: up to date" in r3.stderr and "train-sft: up to date" in r3.stderr
    assert before == {s: (run2 / s / "manifest.json").stat().st_mtime_ns for s in ("revise", "train-sft")}
    for sub, stage in EXPECTED.items():
        assert json.loads((run2 / sub / "manifest.json").read_text())["stage"] == stage
    # Same seeds, same records: the interrupted run's revise output equals the first run's.
    assert (run2 / "revise" / "records.jsonl").read_text() == (run / "revise" / "records.jsonl").read_text().replace(
        str(tmp_path / "red.jsonl"), str(tmp_path / "b" / "red.jsonl")
    )


def test_sl_cai_models_default_to_the_recipe_model_and_can_be_separated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: helpful-weights\nmodel_server: openai:m@http://127.0.0.1:1/v1\n")
    steps = {s.name: s.config for s in plan(load_recipe(path))}
    assert steps["revise"].model == "openai:m@http://127.0.0.1:1/v1"  # data: the served helpful model
    assert steps["train-sft"].model == "helpful-weights"  # finetuned: its weights
    assert steps["train-sft"].helpful_model == "openai:m@http://127.0.0.1:1/v1"  # helpful replies: the data model
    assert steps["eval-compare"].models[0] == "openai:m@http://127.0.0.1:1/v1"  # the "base" row

    path.write_text("model: default\nsft_model: some/base-model\ndata_model: writer\nhelpful_model: helper\n")
    steps = {s.name: s.config for s in plan(load_recipe(path))}
    assert steps["revise"].model == "writer" and steps["train-sft"].model == "some/base-model"
    assert steps["train-sft"].helpful_model == "helper"
    assert steps["eval-compare"].models[0] == "default" and steps["sample-pairs"].model.endswith("train-sft")

    path.write_text("sft_model: openai:m@http://127.0.0.1:1/v1\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: sft_model: .* is an endpoint"):
        load_recipe(path)
    path.write_text("helpful_model: [a, b]\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: helpful_model: expected a model spec"):
        load_recipe(path)


def test_base_recipe_finetunes_the_pretrained_gemma_on_data_from_the_instruct_model():
    steps = {s.name: s.config for s in plan(load_recipe(ROOT / "recipes" / "base.yaml"))}
    assert steps["revise"].model == "default" and steps["revise"].prompt_format == "auto"
    assert steps["train-sft"].model == "gemma3-270m" and steps["train-sft"].helpful_model == "default"
    assert steps["eval-compare"].models[0] == "default"
    tiny = {s.name: s.config for s in plan(load_recipe(ROOT / "recipes" / "tiny.yaml"))}
    assert tiny["revise"].model == tiny["train-sft"].model == tiny["train-sft"].helpful_model == "default"
