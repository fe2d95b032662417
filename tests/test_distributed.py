"""Training stages on two processes: ``accelerate launch --num_processes 2`` on CPU (gloo).

Each launch starts two real training processes through accelerate's launcher (torchrun's
elastic agent) with the shipped ``launch/ddp.yaml``. What is checked: both processes trained
the same model (a digest of each one's parameters, recorded in the manifest), the folder was
written by one process only and loads with ``from_pretrained``, the result equals a
one-process run with the same global batch (within ``TOL``), a main-process error stops the
other process instead of leaving it waiting, and a ``kill -9`` of the launcher followed by a
rerun finishes with nothing duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from constitutional_ai.pipeline import launch_command
from constitutional_ai.stages import train_pm, train_sft
from test_train_pm import label_folder
from test_train_sft import make_revise_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: max |Δ| of any parameter between the 2-process and the 1-process run, with the same global
#: batch: the two differ only in the order gradients are summed (per-process means averaged by
#: all-reduce vs one mean over the batch), so they agree to float32 rounding, amplified a little
#: by Adam's division by sqrt(v) where a gradient is near zero (measured: below 1e-5 on an AMD
#: CPU, 1.5e-5 for the PM on an Intel Xeon, whose MKL kernels round differently).
TOL = 5e-5
#: training must move some weight by more than this, far beyond ``TOL``
MOVED = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",  # two processes on a small CPU
        PYTHONPATH=str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", ""),
        TOKENIZERS_PARALLELISM="false",
    )
    return e


def launch(*cai_args: str) -> list[str]:
    """``accelerate launch`` of ``cai ARGS`` on 2 CPU processes with the shipped DDP config."""
    cmd = launch_command(
        {
            "config": str(ROOT / "launch" / "ddp.yaml"),
            "args": ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())],
        },
        Path("JOB"),
    )
    i = cmd.index("-m", 3)  # the module after the launcher's options: run `cai` instead of a job file
    return cmd[:i] + ["-m", "constitutional_ai", *cai_args]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_processes(manifest: dict) -> None:
    p = manifest["processes"]
    assert p["world_size"] == 2 and p["distributed_type"] == "MULTI_CPU", p
    assert len(p["parameters_sha256"]) == 2 and p["replicas_identical"] is True, p


SFT = ["--max-steps", "3", "--learning-rate", "1e-3", "--helpful-ratio", "0", "--seed", "0", "--disable-tqdm", "true"]


def test_train_sft_on_two_processes_equals_one_process(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=12)
    out2 = tmp_path / "sft2"
    r = run(
        launch(
            "train", "sft", "--data", str(rev), "--model", tiny_model, "--out", str(out2),
            "--per-device-train-batch-size", "2", *SFT,
        )
    )  # fmt: skip
    manifest = json.loads((out2 / "manifest.json").read_text())
    check_processes(manifest)
    assert manifest["train"]["steps"] == 3
    # Written once: only the main process announces the data and writes the folder; the other waited.
    assert r.stderr.count("[train sft] 12 revisions") == 1, r.stderr[-3000:]
    assert "rank 1: waiting for the main process" in r.stderr
    names = {p.name for p in out2.iterdir()}
    assert {"manifest.json", "settings.json", "model.safetensors", "config.json", "tokenizer.json"} <= names
    assert not names & {"training_args.bin", ".adapter"} and not any(n.startswith("checkpoint-") for n in names)
    two = state(AutoModelForCausalLM.from_pretrained(out2))

    # One process, the same global batch (4 = 2 processes x 2).
    cfg = train_sft.TrainSFTConfig(
        data=[str(rev)], model=tiny_model, out=str(tmp_path / "sft1"), per_device_train_batch_size=4,
        max_steps=3, learning_rate=1e-3, helpful_ratio=0.0, seed=0, disable_tqdm=True,
    )  # fmt: skip
    train_sft.main(cfg)
    one = state(AutoModelForCausalLM.from_pretrained(tmp_path / "sft1"))
    start = state(AutoModelForCausalLM.from_pretrained(tiny_model))
    assert max_diff(one, start) > MOVED  # training moved the weights well beyond the tolerance
    assert max_diff(two, one) < TOL
    single = json.loads((tmp_path / "sft1" / "manifest.json").read_text())
    assert single["processes"]["world_size"] == 1
    for a, b in zip(manifest["train"]["log_history"], single["train"]["log_history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_train_pm_on_two_processes_equals_one_process(tmp_path, tiny_model):
    labels = label_folder(tmp_path / "label", [0.9, 0.8, 0.7, 0.6, 0.95, 0.85, 0.75, 0.65] * 2)
    args = ["--labels", str(labels), "--model", tiny_model, "--max-steps", "3", "--learning-rate", "1e-2"]
    args += ["--eval-fraction", "0.25", "--seed", "0", "--disable-tqdm", "true"]
    run(launch("train", "pm", *args, "--out", str(tmp_path / "pm2"), "--per-device-train-batch-size", "2"))
    manifest = json.loads((tmp_path / "pm2" / "manifest.json").read_text())
    check_processes(manifest)
    heldout = (tmp_path / "pm2" / "heldout_scores.jsonl").read_text().splitlines()
    assert len(heldout) == manifest["counts"]["heldout"] > 0  # scored once, by the main process
    two = state(AutoModelForSequenceClassification.from_pretrained(tmp_path / "pm2"))

    cfg = train_pm.TrainPMConfig(
        labels=[str(labels)], model=tiny_model, out=str(tmp_path / "pm1"), max_steps=3, learning_rate=1e-2,
        eval_fraction=0.25, seed=0, disable_tqdm=True, per_device_train_batch_size=4,
    )  # fmt: skip
    train_pm.main(cfg)
    one = state(AutoModelForSequenceClassification.from_pretrained(tmp_path / "pm1"))
    assert max_diff(two, one) < TOL
    single = json.loads((tmp_path / "pm1" / "manifest.json").read_text())
    assert manifest["metrics"]["accuracy"] == single["metrics"]["accuracy"]
    assert manifest["metrics"]["log_loss"] == pytest.approx(single["metrics"]["log_loss"], abs=1e-5)


def test_main_process_error_stops_the_other_process(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=4)
    out = tmp_path / "sft"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"stage": "train-sft", "max_steps": 99}))
    cmd = launch("train", "sft", "--data", str(rev), "--model", tiny_model, "--out", str(out), *SFT)
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode != 0
    assert "holds output made with different settings" in r.stderr
    assert "the main process stopped before training" in r.stderr  # rank 1 was told, not left waiting
    assert time.time() - t0 < 240


def worker_pids(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (the run's output folder)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_launcher_then_rerun_resumes_with_nothing_duplicated(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=8)
    out = tmp_path / "sft"
    cmd = launch(
        "train", "sft", "--data", str(rev), "--model", tiny_model, "--out", str(out), "--max-steps", "40",
        "--per-device-train-batch-size", "1", "--helpful-ratio", "0.5", "--helpful-max-new-tokens", "8",
        "--save-strategy", "steps", "--save-steps", "1", "--learning-rate", "1e-3", "--disable-tqdm", "true",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
    deadline = time.time() + 400
    while time.time() < deadline and not (out / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None, "the launch ended before it could be interrupted"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only: its trainers must not outlive it
    proc.wait()
    deadline = time.time() + 30
    while worker_pids(str(out)) and time.time() < deadline:
        time.sleep(0.2)
    assert not worker_pids(str(out)), "training processes outlived the killed launcher"
    assert not (out / "manifest.json").exists()
    helpful_before = (out / "helpful.jsonl").read_text().splitlines()

    r = run(cmd)
    assert "resuming training from" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    check_processes(manifest)
    assert manifest["train"]["steps"] == 40
    assert int(manifest["train"]["resumed_from"].split("-")[1]) >= 3
    helpful = [json.loads(x) for x in (out / "helpful.jsonl").read_text().splitlines()]
    keys = [h["key"] for h in helpful]
    assert len(keys) == len(set(keys)) == manifest["counts"]["helpful_target"] == 8  # sampled once, kept
    assert (out / "helpful.jsonl").read_text().splitlines()[: len(helpful_before)] == helpful_before
    AutoModelForCausalLM.from_pretrained(out)


def test_train_rl_and_dpo_on_two_processes(tmp_path, tiny_model):
    from test_train_rl import make_pm, prompt_files

    pm = make_pm(tmp_path / "pm", tiny_model)
    red, helpful = prompt_files(tmp_path)
    r = run(
        launch(
            "train", "rl", "--policy", tiny_model, "--pm", str(pm), "--out", str(tmp_path / "rl"),
            "--prompts-red-team", str(red), "--prompts-helpful", str(helpful), "--max-steps", "2",
            "--max-completion-length", "8", "--per-device-train-batch-size", "2", "--num-generations", "2",
            "--learning-rate", "1e-2", "--disable-tqdm", "true",
        )
    )  # fmt: skip
    rl = json.loads((tmp_path / "rl" / "manifest.json").read_text())
    check_processes(rl)
    assert rl["counts"]["steps"] == 2 and rl["trainer"]["generation"] == {"engine": "transformers"}
    # Each step scores the completions of both processes; only the main process logs them, once per step.
    assert rl["counts"]["completions_scored"] == 2 * 2 * 2
    assert [row["step"] for row in map(json.loads, (tmp_path / "rl" / "log.jsonl").read_text().splitlines())] == [1, 2]
    assert r.stderr.count("[train rl] step 1:") == 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "rl")

    labels = label_folder(tmp_path / "label", [0.9, 0.8, 0.7, 0.6, 0.95, 0.85, 0.75, 0.65])
    run(
        launch(
            "train", "dpo", "--labels", str(labels), "--model", tiny_model, "--out", str(tmp_path / "dpo"),
            "--max-steps", "2", "--per-device-train-batch-size", "2", "--learning-rate", "1e-2",
            "--disable-tqdm", "true",
        )
    )  # fmt: skip
    dpo = json.loads((tmp_path / "dpo" / "manifest.json").read_text())
    check_processes(dpo)
    assert dpo["counts"]["steps"] == 2
    assert len((tmp_path / "dpo" / "log.jsonl").read_text().splitlines()) == 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")


def test_cai_run_launches_its_training_steps_on_two_processes(tmp_path, tiny_model):
    import yaml

    from test_pipeline import run_cli, tiny_recipe

    path = tiny_recipe(tmp_path, tiny_model)
    recipe = yaml.safe_load(path.read_text())
    recipe["launch"] = {
        "config": str(ROOT / "launch" / "ddp.yaml"),
        "args": ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())],
        "stages": ["train-sft", "train-pm"],
    }
    path.write_text(yaml.safe_dump(recipe))
    only = "revise,train-sft,sample-pairs,label,train-pm"
    r = run_cli(path, "--only", only)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    for step in ("train-sft", "train-pm"):
        check_processes(json.loads((run / step / "manifest.json").read_text()))
        job = json.loads((run / ".pipeline" / f"{step}.job.json").read_text())
        assert job["stage"] == step and job["values"]["out"] == str(run / step)
    assert "accelerate.commands.launch --config_file" in r.stderr
    again = run_cli(path, "--only", only)
    assert again.returncode == 0 and again.stderr.count(": up to date") >= 5, again.stderr[-3000:]
    assert "accelerate.commands.launch" not in again.stderr
