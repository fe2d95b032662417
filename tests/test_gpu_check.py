"""`benchmarks/gpu_check.py` end to end on CPU with its tiny preset: the path the GPU check takes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_the_three_stages_on_cpu_and_reports_them(tmp_path):
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--steps", "1"]
    r = subprocess.run(
        [*cmd, "--out", str(out), "--keep", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    assert [s["stage"] for s in res["stages"]] == ["train-sft", "train-pm", "train-rl"]
    for s in res["stages"]:
        assert s["ok"], s.get("traceback")
        assert s["steps"] == 1
        assert s["seconds_per_step"] > 0 and s["wall_seconds"] > 0
        assert len(s["step_seconds"]) == 1 and s["steady_seconds_per_step"] is None  # one step: no steady state
        assert s["peak_gpu_allocated_gib"] is None and s["peak_rss_gib"] > 0
    assert res["vllm"]["status"] == "skipped" and "CUDA" in res["vllm"]["reason"]
    assert res["settings"]["bf16"] is False  # off on CPU unless asked
    assert res["host"]["device"] == "cpu" and res["host"]["gpu"] is None
    assert res["versions"]["trl"] and res["versions"]["torch"]
    assert res["model"]["architecture"] == "LlamaForCausalLM" and res["model"]["parameters"] > 0
    # The stages really trained on what the script wrote, in the project's formats.
    work = tmp_path / "work"
    sft = json.loads((work / "sft" / "manifest.json").read_text())
    assert sft["counts"]["revision_examples"] == 2 and sft["counts"]["helpful_examples"] == 0
    rl = json.loads((work / "rl" / "manifest.json").read_text())
    assert rl["counts"]["completions_scored"] == 2
    assert "| train-rl | 1 |" in r.stdout and "vLLM RL run skipped" in r.stdout
