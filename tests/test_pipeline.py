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


def test_launch_key_runs_training_steps_under_accelerate_launch(tmp_path, monkeypatch):
    from constitutional_ai import pipeline

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"out: {tmp_path / 'run'}\nlaunch: {ROOT / 'launch' / 'fsdp.yaml'}\n")
    r = load_recipe(recipe)
    assert r["launch"] == {"config": str(ROOT / "launch" / "fsdp.yaml"), "args": [], "stages": list(pipeline.TRAINING)}
    steps = {s.name: s for s in plan(r)}
    calls: list[list[str]] = []
    ok = lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)  # noqa: E731
    monkeypatch.setattr(pipeline.subprocess, "run", ok)
    steps["train-sft"].run(steps["train-sft"].config)
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / "fsdp.yaml")]
    assert cmd[-3:-1] == ["-m", "constitutional_ai.launched"]
    job = json.loads(Path(cmd[-1]).read_text())
    assert job["stage"] == "train-sft" and job["values"] == steps["train-sft"].values
    assert job["values"]["data"] == [str(tmp_path / "run" / "revise")]
    assert steps["revise"].run is not steps["train-sft"].run  # only training steps are launched
    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(pipeline.StepFailed, match="exited with status 3; rerun"):
        steps["train-pm"].run(steps["train-pm"].config)
    recipe.write_text(
        f"launch: {{config: {ROOT / 'launch' / 'ddp.yaml'}, args: [--num_processes, 2], stages: [train_pm]}}\n"
    )
    r = load_recipe(recipe)
    assert r["launch"]["args"] == ["--num_processes", "2"] and r["launch"]["stages"] == ["train-pm"]
    for bad, msg in [
        ("launch: nope.yaml", "no such file"),
        (f"launch: {{config: {ROOT / 'launch' / 'ddp.yaml'}, stages: [label]}}", "do not train"),
        (f"launch: {{config: {ROOT / 'launch' / 'ddp.yaml'}, nodes: 2}}", "unknown key"),
    ]:
        recipe.write_text(bad + "\n")
        with pytest.raises(RecipeError, match=msg):
            load_recipe(recipe)


def test_launched_job_rebuilds_the_validated_config(tmp_path, monkeypatch):
    from constitutional_ai import launched
    from constitutional_ai.stages import train_pm

    seen = []
    monkeypatch.setattr(train_pm, "main", seen.append)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"stage": "train-pm", "values": {"labels": ["l"], "max_steps": 7}, "where": "r.yaml"}))
    assert launched.run(str(job)) == 0
    assert isinstance(seen[0], train_pm.TrainPMConfig) and seen[0].max_steps == 7 and seen[0].labels == ["l"]
    job.write_text(json.dumps({"stage": "train-pm", "values": {"max_stepz": 7}, "where": "r.yaml: stages.train-pm"}))
    with pytest.raises(ValueError, match="r.yaml: stages.train-pm: unknown setting"):
        launched.run(str(job))


def test_shipped_launch_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((ROOT / "launch").rglob("*.yaml"))
    assert len(configs) == 8
    for path in configs:
        c = load_config_from_file(str(path))
        multi = path.parent.name == "multi-node"
        assert (c.num_machines, c.num_processes) == ((2, 16) if multi else (1, 8)), path
        assert c.mixed_precision == "bf16"
        kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[path.stem]
        assert str(c.distributed_type).endswith(kind), (path, c.distributed_type)
        if path.stem == "fsdp":
            assert c.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
            assert c.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        if path.stem.startswith("zero"):
            assert c.deepspeed_config["zero_stage"] == int(path.stem[-1])


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
