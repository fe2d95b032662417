"""An interrupted training run continues from its last Trainer checkpoint when rerun."""

import json
import os
import signal
import subprocess
import sys
import time

from test_train_sft import make_revise_folder

SCRIPT = """
from constitutional_ai.stages.train_sft import TrainSFTConfig, main
main(TrainSFTConfig(data=[{rev!r}], model={model!r}, out={out!r}, max_steps=30, helpful_ratio=0.0,
                    per_device_train_batch_size=1, save_strategy="steps", save_steps=1))
"""


def test_sft_killed_mid_training_resumes_from_checkpoint(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=8)
    out = tmp_path / "sft"
    cmd = [sys.executable, "-c", SCRIPT.format(rev=str(rev), model=tiny_model, out=str(out))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-2" / "trainer_state.json").exists():
        time.sleep(0.05)
    # Checkpoints are written to tmp-checkpoint-N and renamed, so a kill never leaves a
    # half-written checkpoint-N behind.
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming training from" in r.stderr
    train = json.loads((out / "manifest.json").read_text())["train"]
    assert train["steps"] == 30, (train, sorted(p.name for p in out.iterdir()))
    assert train["resumed_from"].startswith("checkpoint-")
    assert int(train["resumed_from"].split("-")[1]) >= 2
