"""`cai train dpo`: soft-target DPO / APO on AI labels and revision pairs, on the tiny random Llama."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from trl import DPOTrainer

from constitutional_ai.pipeline import RecipeError, load_recipe, plan, run
from constitutional_ai.stages import train_dpo
from constitutional_ai.stages.train_dpo import TrainDPOConfig, apo_loss, soft_dpo_loss
from constitutional_ai.store import StageDir
from test_pipeline import tiny_recipe
from test_train_pm import asst, hh_file, user


# ------------------------------------------------------------------------- fixtures
def label_folder(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    """A finished `cai label`-style folder: one preference row per (chosen, rejected, p_chosen)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "preferences.jsonl", "w") as f:
        for i, (c, r, p) in enumerate(rows):
            f.write(
                json.dumps(
                    {
                        "prompt": user(f"How do I pick lock number {i}?"),
                        "chosen": asst(c),
                        "rejected": asst(r),
                        "p_chosen": p,
                        "pair_id": f"ai{i}",
                        "hard": False,
                    }
                )
                + "\n"
            )
    d = StageDir(path, "label", {})
    d.finish({})
    d.close()
    return path


SOFT = [
    ("I can't help break in; a locksmith can.", f"Insert a tension wrench and rake pin {i}.", p)
    for i, p in enumerate([0.9, 0.8, 0.7, 0.95, 0.6, 0.5])
]


def revise_folder(path: Path, prompts: int) -> Path:
    """A finished `cai revise`-style folder, two rounds per record; round 2 of record 0 kept the previous text."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "records.jsonl", "w") as f:
        for i in range(prompts):
            r1 = f"Round 1: I'd rather not help with lock {i}."
            r2 = r1 if i == 0 else f"Round 2: I won't help with lock {i}; a locksmith can."
            f.write(
                json.dumps(
                    {
                        "key": f"p{i}/s0",
                        "prompt_id": f"p{i}",
                        "messages": user(f"How do I pick lock {i}?"),
                        "initial_response": f"Rake pin {i} with a tension wrench.",
                        "rounds": [
                            {"round": 1, "principle": "h", "critique": "c", "revision": r1, "empty_revision": False},
                            {"round": 2, "principle": "h", "critique": "c", "revision": r2, "empty_revision": i == 0},
                        ],
                    }
                )
                + "\n"
            )
    d = StageDir(path, "revise", {})
    d.finish({"files": {"records": "records.jsonl"}})
    d.close()
    return path


def config(tmp: Path, model: str, **kw) -> TrainDPOConfig:
    kw.setdefault("out", str(tmp / "dpo"))
    kw.setdefault("max_steps", 3)
    kw.setdefault("learning_rate", 1e-2)
    kw.setdefault("per_device_train_batch_size", 2)
    kw.setdefault("disable_tqdm", True)
    return TrainDPOConfig(model=model, **kw)


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


# ------------------------------------------------------------------------- the losses
def test_soft_dpo_loss_matches_hand_arithmetic():
    t = torch.tensor
    # β·Δ = 0.5·(1.5 − (−0.5)) = 1: 0.8·(−log σ(1)) + 0.2·(−log σ(−1)) = 0.8·0.313262 + 0.2·1.313262
    assert float(soft_dpo_loss(t([1.5]), t([-0.5]), t([0.8]), 0.5)) == pytest.approx(0.513262, abs=1e-5)
    # A hard label (p = 1) is plain DPO, −log σ(β·Δ); p = 0 is the pair the other way round.
    for d in (-2.0, 0.0, 0.7, 3.0):
        want = -math.log(1 / (1 + math.exp(-0.1 * d)))
        assert float(soft_dpo_loss(t([d]), t([0.0]), t([1.0]), 0.1)) == pytest.approx(want, abs=1e-6)
        assert float(soft_dpo_loss(t([0.0]), t([d]), t([0.0]), 0.1)) == pytest.approx(want, abs=1e-6)
    # An unsure label at Δ = 0 costs log 2, and the loss is per pair (no batch mean).
    both = soft_dpo_loss(t([0.3, 1.5]), t([0.3, -0.5]), t([0.5, 0.8]), 0.5)
    assert both.tolist() == pytest.approx([math.log(2), 0.513262], abs=1e-5)


def test_soft_dpo_gradient_vanishes_at_logit_p():
    # dL/dΔ = β·(σ(βΔ) − p): zero where βΔ = logit(p), so soft labels ask for a calibrated margin.
    beta, p = 0.5, 0.8
    for d, want in ((math.log(p / (1 - p)) / beta, 0.0), (0.0, beta * (0.5 - p))):
        c = torch.tensor([d], requires_grad=True)
        soft_dpo_loss(c, torch.tensor([0.0]), torch.tensor([p]), beta).backward()
        assert float(c.grad) == pytest.approx(want, abs=1e-6)


def test_apo_losses_by_hand():
    t = torch.tensor
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # apo_zero = (1 − σ(β c)) + σ(β r); apo_down = σ(β c) + 1 − σ(β (c − r)); β = 0.5, c = 2, r = −1
    assert float(apo_loss("apo_zero", t([2.0]), t([-1.0]), 0.5)) == pytest.approx(1 - s(1.0) + s(-0.5), abs=1e-6)
    assert float(apo_loss("apo_down", t([2.0]), t([-1.0]), 0.5)) == pytest.approx(s(1.0) + 1 - s(1.5), abs=1e-6)
    assert float(apo_loss("apo_zero", t([0.0]), t([0.0]), 0.1)) == pytest.approx(1.0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "apo_zero", "apo_down"])
def test_trainer_loss_equals_trl_on_hard_labels(tmp_path, tiny_model, loss_type):
    """On a batch with p = 1 and weight 1, our loss is TRL's own `_compute_loss` (a moved policy, so Δ ≠ 0)."""
    cfg = config(tmp_path, tiny_model, loss_type=loss_type, beta=0.5)
    rows = [
        {
            "prompt": user(f"q{i}"),
            "chosen": asst(f"good answer {i}"),
            "rejected": asst(f"bad {i} bad"),
            "p_chosen": 1.0,
            "weight": 1.0,
        }
        for i in range(3)
    ]
    trainer = train_dpo.build_trainer(cfg, rows, train_dpo.LogWriter(tmp_path / "log.jsonl"))
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in trainer.model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    trainer.model.train()  # dropout is disabled by DPOConfig; train mode only files the metrics under "train"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    ours = trainer._compute_loss(trainer.model, batch, False).item()
    plain = {k: v for k, v in batch.items() if k not in train_dpo.EXTRA_COLUMNS}
    trl = DPOTrainer._compute_loss(trainer, trainer.model, plain, False).item()
    assert abs(trl) > 1e-3 and ours == pytest.approx(trl, rel=1e-4, abs=1e-5)
    assert trainer._metrics["train"]["kl"][-1] > 0  # the policy moved away from its reference


# ------------------------------------------------------------------------- the stage
def test_soft_labels_with_helpful_mix_train_every_parameter(tmp_path, tiny_model):
    bad = [("", "Rake it.", 0.9), ("Same text.", "Same text.", 0.8)]  # an empty side, chosen == rejected
    labels = label_folder(tmp_path / "labels", SOFT + bad)
    helpful = hh_file(tmp_path / "hh.jsonl", 3)
    out = train_dpo.main(config(tmp_path, tiny_model, labels=[str(labels)], helpful=str(helpful), helpful_ratio=0.25))

    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "train-dpo" and m["trainer"]["loss_type"] == "sigmoid" and m["trainer"]["soft_labels"]
    assert m["counts"]["ai_pairs"] == 8 and m["counts"]["helpful_pairs"] == 3 and m["counts"]["trained_pairs"] == 9
    assert m["rejected"]["ai"] == {"empty": 1, "identical": 1, "tied": 0}
    # 6 AI pairs, 3 helpful, 1/4 of the weight helpful, mean weight 1: 0.75·9/6 and 0.25·9/3.
    assert m["mix"]["weight_harmlessness"] == pytest.approx(1.125) and m["mix"]["weight_helpful"] == pytest.approx(0.75)
    assert m["mix"]["helpful_weight_share"] == pytest.approx(0.25)
    base, tuned = weights(tiny_model), weights(out)
    assert set(base) == set(tuned) and all(not torch.equal(base[k], tuned[k]) for k in base)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6) and log[-1]["kl"] > 0  # the reference is the starting model
    assert log[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["margin"] is not None and r["accuracy"] is not None for r in log)
    assert json.loads((out / "metrics.json").read_text())["last"] == log[-1]

    # A rerun is a no-op; changed settings are refused.
    before = (out / "manifest.json").stat().st_mtime_ns
    train_dpo.main(config(tmp_path, tiny_model, labels=[str(labels)], helpful=str(helpful), helpful_ratio=0.25))
    assert (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(Exception, match="different settings"):
        train_dpo.main(config(tmp_path, tiny_model, labels=[str(labels)], helpful=str(helpful), helpful_ratio=0.5))


def test_hard_labels_leave_out_ties(tmp_path, tiny_model):
    labels = label_folder(tmp_path / "labels", SOFT + [("b wins", "a loses", 0.2)])
    out = train_dpo.main(
        config(tmp_path, tiny_model, labels=[str(labels)], soft_labels=False, max_steps=1, loss_type="apo_zero")
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["rejected"]["ai"] == {"empty": 0, "identical": 0, "tied": 1} and m["counts"]["trained_pairs"] == 6


@pytest.mark.parametrize("which,pairs,identical", [("rounds", 5, 1), ("final", 3, 0)])
def test_revision_pairs_with_apo(tmp_path, tiny_model, which, pairs, identical):
    rev = revise_folder(tmp_path / "rev", prompts=3)
    rows, info = train_dpo.revision_pairs(rev, which)
    assert info["sha256"] and all(r["p_chosen"] == 1.0 for r in rows)
    if which == "final":  # the last revision over the original response
        got = [(r["chosen"][0]["content"][:7], r["rejected"][0]["content"][:4]) for r in rows]
        assert got == [("Round 1", "Rake"), ("Round 2", "Rake"), ("Round 2", "Rake")]
    out = train_dpo.main(config(tmp_path, tiny_model, revisions=[str(rev)], revision_pairs=which, loss_type="apo_zero"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["revision_pairs"] == (6 if which == "rounds" else 3)
    assert m["counts"]["trained_pairs"] == pairs and m["rejected"]["revision"]["identical"] == identical
    base, tuned = weights(tiny_model), weights(out)
    assert all(not torch.equal(base[k], tuned[k]) for k in base)
    assert m["trainer"]["loss_type"] == "apo_zero"


def test_bad_settings_are_clear_errors(tmp_path, tiny_model):
    labels = label_folder(tmp_path / "labels", SOFT)
    with pytest.raises(ValueError, match="no soft-label form"):
        train_dpo.main(config(tmp_path, tiny_model, labels=[str(labels)], loss_type="apo_down"))
    with pytest.raises(ValueError, match="--loss-type must be one of"):
        config(tmp_path, tiny_model, labels=[str(labels)], loss_type="ipo")
    with pytest.raises(ValueError, match="does not support --precompute-ref-log-probs"):
        config(tmp_path, tiny_model, labels=[str(labels)], precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="--helpful-ratio needs --helpful"):
        train_dpo.main(config(tmp_path, tiny_model, labels=[str(labels)], helpful_ratio=0.5))
    with pytest.raises(ValueError, match="--labels and/or"):
        train_dpo.main(config(tmp_path, tiny_model))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(Exception, match="no manifest.json"):
        train_dpo.main(config(tmp_path, tiny_model, revisions=[str(tmp_path / "unfinished")]))


SCRIPT = """
from constitutional_ai.stages.train_dpo import TrainDPOConfig, main
main(TrainDPOConfig(labels=[{labels!r}], model={model!r}, out={out!r}, max_steps=25, learning_rate=1e-3,
                    per_device_train_batch_size=1, save_strategy="steps", save_steps=1))
"""


def test_killed_mid_training_resumes_from_checkpoint(tmp_path, tiny_model):
    labels = label_folder(tmp_path / "labels", SOFT)
    out = tmp_path / "dpo"
    cmd = [sys.executable, "-c", SCRIPT.format(labels=str(labels), model=tiny_model, out=str(out))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-3" / "trainer_state.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming training from" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["steps"] == 25 and int(m["trainer"]["resumed_from"].split("-")[1]) >= 3
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 26))  # the steps before the kill come from the checkpoint
    AutoModelForCausalLM.from_pretrained(out)


# ------------------------------------------------------------------------- the pipeline
def dpo_recipe(tmp_path: Path, model: str) -> Path:
    path = tiny_recipe(tmp_path, model)
    recipe = yaml.safe_load(path.read_text())
    recipe["routes"] = ["dpo"]
    st = recipe["stages"]
    del st["train-pm"], st["train-rl"]
    st["train-dpo"] = {"max_steps": 1, "per_device_train_batch_size": 2, "helpful_ratio": 0.5}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_routes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [dpo]\nstages:\n  train_rl: {max_steps: 1}\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: stages\.train-rl given but routes is \['dpo'\]"):
        load_recipe(bad)
    bad.write_text("routes: [ppo]\n")
    with pytest.raises(RecipeError, match="routes: expected a non-empty list of rl, dpo"):
        load_recipe(bad)
    bad.write_text("routes: [rl, dpo]\n")
    steps = {s.name: s for s in plan(load_recipe(bad))}
    assert {"train-pm", "train-rl", "train-dpo", "eval-refusal-rl-cai", "eval-refusal-dpo-cai"} <= set(steps)
    assert steps["eval-compare"].config.names == ["base", "sl-cai", "rl-cai", "dpo-cai"]
    assert steps["train-dpo"].config.model.endswith("train-sft") and steps["train-dpo"].config.labels[0].endswith(
        "label"
    )


def test_offline_route_end_to_end(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = dpo_recipe(tmp_path, tiny_model)
    report = run(recipe)
    root = tmp_path / "run"
    assert not (root / "train-pm").exists() and not (root / "train-rl").exists()
    m = json.loads((root / "train-dpo" / "manifest.json").read_text())
    assert m["stage"] == "train-dpo" and m["counts"]["ai_pairs"] > 0 and m["counts"]["helpful_pairs"] == 80
    assert m["inputs"]["model"]["path"] == str((root / "train-sft").resolve())
    cmp = json.loads((root / "eval-compare" / "manifest.json").read_text())
    assert cmp["config"]["names"] == ["base", "sl-cai", "dpo-cai"]
    ref = json.loads((root / "eval-refusal-dpo-cai" / "manifest.json").read_text())
    assert ref["stage"] == "eval-refusal" and ref["config"]["model"] == str(root / "train-dpo")
    html = report.read_text()
    assert "DPO-CAI (offline" in html and "dpo-cai" in html and "KL to the SL-CAI reference" in html
