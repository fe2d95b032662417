"""An interrupted training run continues from its last Trainer checkpoint when rerun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

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


# ---------------------------------------------------------------------------------------------
# Resume equals an uninterrupted run (in the style of torchtune's resume tests): a run stopped
# right after its step-2 checkpoint, then rerun, ends like a run of the same seed that never
# stopped. Tolerance: 1e-5 relative on losses, log values and parameters (same CPU, same
# arithmetic; only summation order in restored optimiser state could differ).

TOL = 1e-5


class Interrupted(RuntimeError):
    pass


class StopAfterSave(TrainerCallback):
    """Raises once the checkpoint of ``step`` is on disk, as a kill right after it would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise Interrupted(f"stopped after checkpoint-{self.step}")


def interrupt(monkeypatch, module, step: int) -> None:
    """Make ``module.build_trainer`` add :class:`StopAfterSave` to the trainer it builds."""
    real = module.build_trainer

    def build(*a, **k):
        built = real(*a, **k)
        trainer = built[0] if isinstance(built, tuple) else built
        trainer.add_callback(StopAfterSave(step))
        return built

    monkeypatch.setattr(module, "build_trainer", build)


def same_params(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=TOL, atol=TOL, msg=k)


def resumed_and_straight(tmp_path, monkeypatch, module, make_cfg):
    straight = make_cfg(tmp_path / "straight")
    module.main(straight)
    with monkeypatch.context() as mp:
        interrupt(mp, module, 2)
        with pytest.raises(Interrupted):
            module.main(make_cfg(tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    module.main(make_cfg(tmp_path / "resumed"))
    return tmp_path / "straight", tmp_path / "resumed"


def test_sft_resume_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):
    from constitutional_ai.stages import train_sft

    rev = make_revise_folder(tmp_path / "rev", prompts=8)

    def cfg(out):
        return train_sft.TrainSFTConfig(
            data=[str(rev)],
            model=tiny_model,
            out=str(out),
            max_steps=4,
            helpful_ratio=0.0,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=1,
            learning_rate=1e-3,
        )

    a, b = resumed_and_straight(tmp_path, monkeypatch, train_sft, cfg)
    ma, mb = (json.loads((p / "manifest.json").read_text())["train"] for p in (a, b))
    assert mb["resumed_from"] == "checkpoint-2" and ma["steps"] == mb["steps"] == 4
    assert [h["step"] for h in mb["log_history"]] == [1, 2, 3, 4]
    assert [h["loss"] for h in mb["log_history"]] == pytest.approx([h["loss"] for h in ma["log_history"]], rel=TOL)
    same_params(AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b))


def test_pm_resume_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):
    from constitutional_ai.stages import train_pm
    from test_train_pm import label_folder

    labels = label_folder(tmp_path / "label", [0.55 + 0.02 * i for i in range(16)])

    def cfg(out):
        return train_pm.TrainPMConfig(
            labels=[str(labels)],
            model=tiny_model,
            out=str(out),
            max_steps=4,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=1,
            learning_rate=1e-2,
            eval_fraction=0.25,
            disable_tqdm=True,
        )

    a, b = resumed_and_straight(tmp_path, monkeypatch, train_pm, cfg)
    ha, hb = (json.loads((p / "metrics.json").read_text())["train"]["log_history"] for p in (a, b))
    la, lb = ([h["loss"] for h in x if "loss" in h] for x in (ha, hb))
    assert len(lb) == 4 and lb == pytest.approx(la, rel=TOL)
    sa, sb = ([json.loads(x) for x in (p / "heldout_scores.jsonl").read_text().splitlines()] for p in (a, b))
    assert [s["r_chosen"] for s in sb] == pytest.approx([s["r_chosen"] for s in sa], rel=TOL, abs=TOL)
    same_params(
        AutoModelForSequenceClassification.from_pretrained(a), AutoModelForSequenceClassification.from_pretrained(b)
    )


def test_rl_resume_keeps_its_history_and_equals_uninterrupted(tmp_path, tiny_model, monkeypatch):
    from constitutional_ai.stages import train_rl
    from test_train_rl import config as rl_config
    from test_train_rl import make_pm

    pm = make_pm(tmp_path / "pm", tiny_model)

    def cfg(out):
        return rl_config(tmp_path, tiny_model, pm, out=str(out), max_steps=4, save_strategy="steps", save_steps=1)

    a, b = resumed_and_straight(tmp_path, monkeypatch, train_rl, cfg)
    ra, rb = ([json.loads(x) for x in (p / "log.jsonl").read_text().splitlines()] for p in (a, b))
    assert [r["step"] for r in rb] == [1, 2, 3, 4]  # the rows before the resume are kept
    for x, y in zip(ra, rb):
        for k in ("reward", "kl", "loss", "response_length", "truncated_rate"):
            assert y[k] == pytest.approx(x[k], rel=TOL, abs=TOL), (k, x, y)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert mb["counts"]["logged_steps"] == 4 and mb["counts"]["resumed_from_step"] == 2
    for which in ("first", "last"):
        x, y = ma["metrics"][which], mb["metrics"][which]
        assert x.keys() == y.keys() and x["step"] == y["step"] and x["long_rate"] is y["long_rate"] is None
        assert {k: v for k, v in y.items() if v is not None} == pytest.approx(
            {k: v for k, v in x.items() if v is not None}, rel=TOL, abs=TOL
        )
    sa, sb = ([json.loads(x) for x in (p / "samples.jsonl").read_text().splitlines()] for p in (a, b))
    assert [s["step"] for s in sb] == [s["step"] for s in sa] and sb[0]["step"] == 1  # first-step samples survive
    assert [s["completion"] for s in sb] == [s["completion"] for s in sa]
    same_params(AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b))
