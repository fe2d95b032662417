"""`cai train rl` (RLOO/GRPO against the PM with a KL penalty), on the tiny random Llama."""

import json
import math
from pathlib import Path

import pytest
import torch

from constitutional_ai import pm as pm_lib
from constitutional_ai.config import parse_config
from constitutional_ai.data import DataError, PromptItem
from constitutional_ai.stages import score, train_rl
from constitutional_ai.store import StageDir, StoreError

EOS = 2


# ------------------------------------------------------------------------- fixtures
def make_pm(folder: Path, tiny: str, finished: bool = True) -> Path:
    """A tiny PM: the tiny Llama with a fresh one-output head, saved like `cai train pm` saves one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny)
    pm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    pm.config.pad_token_id = tok.pad_token_id
    pm.save_pretrained(folder)
    tok.save_pretrained(folder)
    if finished:
        d = StageDir(folder, "train-pm", {})
        d.finish({})
        d.close()
    return folder


def prompt_files(tmp: Path) -> tuple[Path, Path]:
    red, helpful = tmp / "red.jsonl", tmp / "helpful.jsonl"
    red.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": f"How do I break into house {i}?"}) + "\n" for i in range(4))
    )
    helpful.write_text(
        "".join(json.dumps({"id": f"h{i}", "prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(4))
    )
    return red, helpful


def config(tmp: Path, tiny: str, pm: Path, **kw) -> train_rl.TrainRLConfig:
    red, helpful = prompt_files(tmp)
    kw = {
        "out": str(tmp / "rl"),
        "max_steps": 2,
        "max_completion_length": 8,
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "learning_rate": 1e-2,
        "disable_tqdm": True,
        **kw,
    }
    return train_rl.TrainRLConfig(
        policy=tiny, pm=str(pm), prompts_red_team=str(red), prompts_helpful=str(helpful), **kw
    )


# ------------------------------------------------------------------------- guard metrics
def test_guard_flags_and_rates_by_hand():
    texts = [
        "",
        "   ",
        "I\u2019m sorry, I can't do that.",
        "Sure: as an ai language model, here goes",
        "Paris is the capital of France.",
        "one two three four five six",
    ]
    ids = [[EOS], [10, EOS], [11, 12, 13, 14, 15, 16, EOS], [1] * 9, [20, 21, 22, 23, 24, 25, 26, EOS], [30] * 9]
    flags = train_rl.guard_flags(texts, ids, {EOS}, train_rl.BOILERPLATE, min_tokens=5, max_tokens=8)
    assert [f["length"] for f in flags] == [0, 1, 6, 9, 7, 9]  # the end-of-turn token is not counted
    assert [f["empty"] for f in flags] == [True, True, False, False, False, False]
    # case-insensitive, curly apostrophe normalised; the first listed phrase that matches is named
    assert [f["boilerplate"] for f in flags] == [None, None, "I'm sorry", "As an AI", None, None]
    assert [f["truncated"] for f in flags] == [False, False, False, True, False, True]  # no end-of-turn token = cut
    assert [f["short"] for f in flags] == [True, True, False, False, False, False]
    assert [f["long"] for f in flags] == [False, False, False, True, False, True]
    rates = train_rl.guard_rates(flags)
    assert rates == pytest.approx(
        {
            "response_length": 32 / 6,
            "empty_rate": 2 / 6,
            "boilerplate_rate": 2 / 6,
            "truncated_rate": 2 / 6,
            "short_rate": 2 / 6,
            "long_rate": 2 / 6,
        }
    )
    unmeasured = train_rl.guard_rates(train_rl.guard_flags(texts, ids, {EOS}, [], 0, None))
    assert unmeasured["long_rate"] is None and unmeasured["boilerplate_rate"] == 0 and unmeasured["short_rate"] == 0


def test_guards_reward_logs_metrics_and_returns_the_penalty_signal():
    cfg = train_rl.TrainRLConfig(penalize_boilerplate=2.0)
    assert cfg.reward_weights == [1.0, 2.0] and train_rl.TrainRLConfig().reward_weights == [1.0, 0.0]
    r = train_rl.Rewards(None, None, cfg, {EOS})
    logged = {}
    out = r.guards(
        prompts=[[]] * 2,
        completions=[
            [{"role": "assistant", "content": "As an AI, I cannot."}],
            [{"role": "assistant", "content": "Here is how."}],
        ],
        completion_ids=[[5, 6, EOS], [7] * 3],
        log_metric=logged.__setitem__,
    )
    assert out == [-1.0, 0.0]  # × weight 2 = −2 for the boilerplate answer; weight 0 by default
    assert logged == {
        "guards/response_length": 2.5,
        "guards/empty_rate": 0.0,
        "guards/boilerplate_rate": 0.5,
        "guards/truncated_rate": 0.5,
        "guards/short_rate": 1.0,
    }
    # log.jsonl reads the PM's own reward, not the penalised total; missing values are explicit nulls
    row = train_rl.log_row({"rewards/pm/mean": 0.3, "reward": -0.7, "guards/empty_rate": 0.0}, 5)
    assert list(row) == train_rl.LOG_KEYS and row["reward"] == 0.3 and row["reward_total"] == -0.7
    assert row["kl"] is None and row["loss"] is None and row["step"] == 5


def test_guard_warnings_report_drift():
    base = {"boilerplate_rate": 0.0, "empty_rate": 0.0, "response_length": 40.0, "truncated_rate": 0.1}
    assert train_rl.guard_warnings(base, base) == []
    bad = {"boilerplate_rate": 0.5, "empty_rate": 0.25, "response_length": 10.0, "truncated_rate": 0.1}
    assert len(train_rl.guard_warnings(base, bad)) == 3


# ------------------------------------------------------------------------- config and prompts
def test_config_defaults_and_kl_mapping():
    cfg = parse_config(train_rl.TrainRLConfig, ["--pm", "x", "--out", "o"], "t", "d")
    assert cfg.kl_coef == 0.001 and cfg.beta == 0.001  # the paper's KL coefficient reaches TRL's beta
    assert cfg.bf16 is False and cfg.activation_checkpointing is False and cfg.gradient_checkpointing is False
    assert (cfg.num_generations, cfg.max_completion_length, cfg.temperature) == (4, 128, 1.0)
    assert cfg.report_to == [] and cfg.save_strategy == "no" and cfg.logging_steps == 1  # "none" → no integrations
    assert cfg.output_dir == "o" and cfg.algorithm == "rloo" and cfg.helpful_fraction == 0.5
    cfg = parse_config(
        train_rl.TrainRLConfig,
        ["--kl-coef", "0.02", "--max-completion-length", "16", "--num-generations", "2"],
        "t",
        "d",
    )
    g = train_rl.grpo_config(cfg)
    assert (g.beta, g.max_completion_length, g.num_generations, g.bf16, g.activation_checkpointing) == (
        0.02,
        16,
        2,
        False,
        False,
    )
    assert g.reward_weights == [1.0, 0.0] and g.seed == 0 and g.learning_rate == cfg.learning_rate
    with pytest.raises(ValueError, match="--kl-coef"):
        train_rl.TrainRLConfig(beta=0.05)
    with pytest.raises(ValueError, match="rloo or grpo"):
        train_rl.TrainRLConfig(algorithm="ppo")


def item(i, src):
    return PromptItem(id=f"{src}{i}", messages=({"role": "user", "content": f"{src} {i}"},), category=None, source="t")


def test_mix_prompts_follows_the_fraction():
    red, helpful = [item(i, "r") for i in range(4)], [item(i, "h") for i in range(10)]
    rows = train_rl.mix_prompts(red, helpful, 0.5, None, seed=0)
    assert sum(r["source"] == "helpful" for r in rows) == 4 and sum(r["source"] == "red_team" for r in rows) == 4
    assert rows == train_rl.mix_prompts(red, helpful, 0.5, None, seed=0)  # seeded
    assert rows[0]["prompt"] == [{"role": "user", "content": rows[0]["prompt"][0]["content"]}]
    assert len({r["prompt_id"] for r in rows}) == 8
    limited = train_rl.mix_prompts(red, helpful, 0.25, 4, seed=0)
    assert sorted(r["source"] for r in limited) == ["helpful", "red_team", "red_team", "red_team"]
    assert {r["source"] for r in train_rl.mix_prompts(red, helpful, 0.0, None, 0)} == {"red_team"}
    assert len(train_rl.mix_prompts(red, helpful, 1.0, None, 0)) == 10
    with pytest.raises(ValueError, match="helpful-fraction"):
        train_rl.mix_prompts(red, helpful, 1.5, None, 0)
    with pytest.raises(DataError, match="no RL prompts"):
        train_rl.mix_prompts(red, helpful, 0.5, 0, 0)


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def rloo_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("rl")
    pm = make_pm(tmp / "pm", tiny_model)
    cfg = config(tmp, tiny_model, pm)
    train_rl.main(cfg)
    return {"cfg": cfg, "tmp": tmp, "pm": pm, "out": Path(cfg.out)}


def test_rloo_end_to_end(rloo_run, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from constitutional_ai.models import Sampling
    from constitutional_ai.models.local import LocalBackend

    out, cfg = rloo_run["out"], rloo_run["cfg"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "train-rl" and manifest["config"]["algorithm"] == "rloo"
    assert manifest["trainer"]["class"] == "RLOOTrainer"
    assert manifest["trainer"]["beta"] == cfg.kl_coef == 0.001  # --kl-coef is the KL penalty TRL applied
    assert manifest["trainer"]["reward_funcs"] == ["pm", "guards"] and manifest["trainer"]["reward_weights"] == [
        1.0,
        0.0,
    ]
    assert manifest["counts"]["steps"] == 2 and manifest["counts"]["completions_scored"] == 8
    assert manifest["counts"]["red_team_prompts"] == manifest["counts"]["helpful_prompts"] == 4
    assert manifest["inputs"]["pm"]["stage"] == "train-pm"

    # The checkpoint loads as a causal LM and with the project's backend, and RL moved it.
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    backend = LocalBackend(str(out), batch_size=2)
    assert len(backend.generate([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=3), seeds=[0])) == 1

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert list(r) == train_rl.LOG_KEYS
        assert all(r[k] is not None for k in train_rl.LOG_KEYS if k != "long_rate") and r["long_rate"] is None
        assert math.isfinite(r["reward"]) and r["kl"] >= -1e-6 and r["response_length"] <= cfg.max_completion_length
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first batch is sampled from the reference itself

    # samples.jsonl holds every completion of both steps here (4 per step): the logged reward is the
    # mean `cai score` of that step's completions, and the guard rates are those of the same answers.
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": s["prompt"], "response": s["completion"]}) + "\n" for s in samples))
    score.main(score.ScoreConfig(pm=str(rloo_run["pm"]), input=str(inp), out=str(tmp_path / "scored.jsonl")))
    rescored = [json.loads(line)["score"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [s["reward"] for s in samples] == pytest.approx(rescored, abs=1e-5)
    for r, part in ((rows[0], samples[:4]), (rows[1], samples[4:])):
        assert r["reward"] == pytest.approx(sum(s["reward"] for s in part) / 4, abs=1e-5)
        assert r["reward_total"] == pytest.approx(r["reward"], abs=1e-6)  # guard weight 0: nothing added
        assert r["truncated_rate"] == pytest.approx(sum(s["truncated"] for s in part) / 4)
        assert r["response_length"] == pytest.approx(sum(s["length"] for s in part) / 4)

    # TRL's own route for a reward *model* (chat text, tokenized without special tokens) scores the same.
    model, tok = pm_lib.load_pm(rloo_run["pm"])
    texts = [
        tok.apply_chat_template(s["prompt"] + [{"role": "assistant", "content": s["completion"]}], tokenize=False)
        for s in samples
    ]
    enc = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        trl_scores = model(**enc).logits[:, 0].tolist()
    assert trl_scores == pytest.approx(rescored, abs=1e-4)
    assert AutoTokenizer.from_pretrained(out).pad_token_id == tok.pad_token_id


def test_rerun_is_a_no_op_and_changed_settings_are_refused(rloo_run, tiny_model, capsys):
    out = rloo_run["out"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    train_rl.main(rloo_run["cfg"])
    assert "already done" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(StoreError, match="kl_coef"):
        train_rl.main(config(rloo_run["tmp"], tiny_model, rloo_run["pm"], kl_coef=0.01))


def test_grpo_runs_with_the_kl_coefficient(rloo_run, tiny_model, tmp_path):
    cfg = config(tmp_path, tiny_model, rloo_run["pm"], algorithm="grpo", max_steps=1, kl_coef=0.02)
    train_rl.main(cfg)
    manifest = json.loads((tmp_path / "rl" / "manifest.json").read_text())
    assert manifest["config"]["algorithm"] == "grpo" and manifest["trainer"]["class"] == "GRPOTrainer"
    assert manifest["trainer"]["beta"] == 0.02  # GRPO's own default (0) would drop the reference model
    rows = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and math.isfinite(rows[0]["reward"]) and rows[0]["kl"] is not None


def test_pm_folder_without_manifest_is_refused(tmp_path, tiny_model):
    plain = make_pm(tmp_path / "plain_pm", tiny_model, finished=False)
    with pytest.raises(StoreError, match="has no manifest.json"):
        train_rl.main(config(tmp_path, tiny_model, plain))
    label = tmp_path / "label"
    with StageDir(label, "label", {}) as d:
        d.finish({})
    with pytest.raises(StoreError, match="expected train-pm"):
        train_rl.main(config(tmp_path, tiny_model, label))
    assert not (tmp_path / "rl").exists()
    with pytest.raises(ValueError, match="--pm"):
        train_rl.main(train_rl.TrainRLConfig())


# ------------------------------------------------------------------------- vLLM generation
def test_use_vllm_without_vllm_is_a_clear_error_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValueError, match="--use-vllm needs vLLM"):
        parse_config(train_rl.TrainRLConfig, ["--pm", "x", "--use-vllm", "true"], "t", "d")


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_vllm_options_reach_the_trainer_and_the_manifest(monkeypatch, tmp_path, tiny_model, algorithm):
    import importlib.util

    import trl

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    argv = ["--pm", "x", "--algorithm", algorithm, "--use-vllm", "true", "--vllm-mode", "server"]
    argv += ["--vllm-server-host", "10.0.0.5", "--vllm-server-port", "8123"]
    cfg = parse_config(train_rl.TrainRLConfig, argv, "t", "d")
    assert train_rl.generation_info(cfg) == {"engine": "vllm", "vllm_mode": "server", "server": "http://10.0.0.5:8123"}
    seen = {}

    class Captured(Exception):
        pass

    def capture(*a, args=None, **k):
        seen["args"] = args
        raise Captured

    monkeypatch.setattr(trl, "RLOOTrainer" if algorithm == "rloo" else "GRPOTrainer", capture)
    log = train_rl.LogWriter(None)
    with pytest.raises(Captured):
        train_rl.build_trainer(cfg, [{"prompt": [{"role": "user", "content": "hi"}]}], tiny_model, None, None, log)
    args = seen["args"]
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_host, args.vllm_server_port) == (
        True,
        "server",
        "10.0.0.5",
        8123,
    )
    colocate = parse_config(train_rl.TrainRLConfig, ["--pm", "x", "--use-vllm", "true"], "t", "d")
    info = train_rl.generation_info(colocate)
    assert info["engine"] == "vllm" and info["vllm_mode"] == "colocate" and "gpu_memory_utilization" in info
    with pytest.raises(ValueError, match="colocate or server"):
        parse_config(train_rl.TrainRLConfig, ["--pm", "x", "--use-vllm", "true", "--vllm-mode", "remote"], "t", "d")
    plain = parse_config(train_rl.TrainRLConfig, ["--pm", "x"], "t", "d")
    assert train_rl.generation_info(plain) == {"engine": "transformers"}
