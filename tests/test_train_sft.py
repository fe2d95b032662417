"""`cai train sft`: SL-CAI finetuning with TRL's SFTTrainer on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from constitutional_ai.config import parse_config
from constitutional_ai.data import DataError
from constitutional_ai.stages import train_sft
from constitutional_ai.stages.train_sft import TrainSFTConfig, build_trainer, load_revisions, main
from constitutional_ai.store import StageDir, StoreError


def conv(user: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def make_revise_folder(path: Path, prompts: int, rounds: int = 1) -> Path:
    """A finished `cai revise` output folder with one sft row per prompt and round."""
    rows = [
        {
            "messages": conv(f"How do I pick lock {i}?", f"Round {r}: I won't help with lock {i}; call a locksmith."),
            "prompt_id": f"p{i}",
            "round": r,
            "principle": "harmful",
        }
        for i in range(prompts)
        for r in range(1, rounds + 1)
    ]
    sd = StageDir(path, "revise", {"fake": True})
    (path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sd.finish({"config": {"sft_rounds": "all" if rounds > 1 else "last"}, "files": {"sft": "sft.jsonl"}})
    sd.close()
    return path


def make_helpful_file(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"messages": conv(f"What is {i} plus {i}?", f"It is {2 * i}.")}) + "\n" for i in range(n))
    )
    return path


def config(tmp_path: Path, tiny_model: str, data: list[Path], **kw) -> TrainSFTConfig:
    kw.setdefault("max_steps", 2)
    kw.setdefault("learning_rate", 1e-3)
    return TrainSFTConfig(data=[str(d) for d in data], model=tiny_model, out=str(tmp_path / "sft"), **kw)


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_trains_mixed_data_saves_checkpoint_and_manifest(tmp_path, tiny_model, monkeypatch):
    rev = make_revise_folder(tmp_path / "rev", prompts=4)
    helpful = make_helpful_file(tmp_path / "helpful.jsonl", 10)
    cfg = config(tmp_path, tiny_model, [rev], helpful_data=str(helpful), helpful_ratio=0.5)
    out = main(cfg)

    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "train-sft"
    assert m["counts"]["revision_examples"] == 4
    assert m["counts"]["helpful_examples"] == 4  # ratio 0.5: as many helpful as revision examples
    assert m["counts"]["trained_examples"] == 8
    assert m["train"]["steps"] == 2 and m["train"]["first_loss"] > 0 and m["train"]["last_loss"] > 0
    assert m["inputs"]["data"][0]["manifest_sha256"] and m["inputs"]["data"][0]["examples"] == 4
    assert m["config"]["learning_rate"] == 1e-3 and m["config"]["data"] == [str(rev)]

    # A plain checkpoint that loads like any model, with weights changed by training.
    base, tuned = weights(tiny_model), weights(out)
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert not (out / "adapter_config.json").exists()

    # Same command again: done, no training.
    def boom(*a, **k):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(train_sft, "SFTTrainer", boom)
    assert main(config(tmp_path, tiny_model, [rev], helpful_data=str(helpful), helpful_ratio=0.5)) == out
    # Changed training settings are refused, not mixed into the finished folder.
    with pytest.raises(StoreError, match="learning_rate"):
        main(config(tmp_path, tiny_model, [rev], helpful_data=str(helpful), helpful_ratio=0.5, learning_rate=5e-4))


def test_cli_rounds_upto_and_ratio(tmp_path, tiny_model):
    from constitutional_ai.cli import main as cai

    rev = make_revise_folder(tmp_path / "rev", prompts=3, rounds=2)
    helpful = make_helpful_file(tmp_path / "helpful.jsonl", 5)
    out = tmp_path / "sft"
    rc = cai(
        [
            "train",
            "sft",
            "--data",
            str(rev),
            "--model",
            tiny_model,
            "--out",
            str(out),
            "--rounds-upto",
            "1",
            "--helpful-ratio",
            "0.25",
            "--helpful-data",
            str(helpful),
            "--max-steps",
            "1",
        ]
    )
    assert rc == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    # 3 prompts x 2 rounds, only round 1 kept; 0.25 of the set helpful -> 3 * 0.25 / 0.75 = 1.
    assert counts["revision_examples"] == 3 and counts["helpful_examples"] == 1


def test_rounds_upto_filters_rows_and_explains_when_none_left(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=2, rounds=3)
    convs, _ = load_revisions(config(tmp_path, tiny_model, [rev], rounds_upto=2))
    assert len(convs) == 4
    assert {c[-1]["content"].split(":")[0] for c in convs} == {"Round 1", "Round 2"}
    assert len(load_revisions(config(tmp_path, tiny_model, [rev, rev]))[0]) == 12  # several folders add up
    with pytest.raises(DataError, match="sft-rounds all"):
        load_revisions(config(tmp_path, tiny_model, [rev], rounds_upto=0))


def test_refuses_unfinished_or_foreign_folders(tmp_path, tiny_model):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sft.jsonl").write_text(json.dumps({"messages": conv("a", "b"), "round": 1}) + "\n")
    with pytest.raises(StoreError, match="manifest"):
        main(config(tmp_path, tiny_model, [bare]))
    other = tmp_path / "other"
    StageDir(other, "label", {}).finish({})
    with pytest.raises(StoreError, match="expected revise"):
        main(config(tmp_path, tiny_model, [other]))
    with pytest.raises(ValueError, match="--data"):
        main(config(tmp_path, tiny_model, []))


def test_too_little_helpful_data_is_an_error(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=4)
    helpful = make_helpful_file(tmp_path / "helpful.jsonl", 3)
    with pytest.raises(DataError, match="needs 4"):
        main(config(tmp_path, tiny_model, [rev], helpful_data=str(helpful), helpful_ratio=0.5))


def test_only_the_final_assistant_reply_is_trained(tmp_path, tiny_model):
    reply = "Here is a safe and honest answer."
    example = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "EARLIER ASSISTANT TURN"},
        {"role": "user", "content": "How do I stay safe online?"},
        {"role": "assistant", "content": reply},
    ]
    cfg = config(tmp_path, tiny_model, [], helpful_ratio=0.0)
    trainer, dropped = build_trainer(cfg, [example])
    assert dropped == 0
    batch = trainer.data_collator([trainer.train_dataset[0]])  # exactly what a training step sees
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tok.apply_chat_template(example[:-1], tokenize=False, add_generation_prompt=True)
    n = len(tok(prompt, add_special_tokens=False).input_ids)
    assert 0 < n < len(ids)
    assert (labels[:n] == -100).all()  # system prompt, user turns and the earlier assistant turn
    assert torch.equal(labels[n:], ids[n:])
    assert tok.decode(ids[n:]) == reply + "<|im_end|>\n"  # the reply and its end-of-turn token


def test_lora_saves_a_merged_plain_checkpoint(tmp_path, tiny_model):
    rev = make_revise_folder(tmp_path / "rev", prompts=4)
    out = main(config(tmp_path, tiny_model, [rev], helpful_ratio=0.0, lora=True, lora_r=4, lora_alpha=8))
    assert not (out / "adapter_config.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    base, tuned = weights(tiny_model), weights(out)
    assert base.keys() == tuned.keys()  # no lora_A/lora_B or base_model.* names left
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    assert json.loads((out / "manifest.json").read_text())["counts"]["helpful_examples"] == 0


def test_helpful_replies_are_sampled_from_the_model_and_reused(tmp_path, tiny_model, monkeypatch):
    rev = make_revise_folder(tmp_path / "rev", prompts=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"h{i}", "prompt": f"Tell me about topic {i}."}) + "\n" for i in range(3))
    )
    cfg = dict(helpful_ratio=0.5, helpful_prompts=str(prompts), helpful_max_new_tokens=6, max_steps=1)
    out = main(config(tmp_path, tiny_model, [rev], **cfg))

    lines = (out / "helpful.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 2  # 2 revisions at ratio 0.5 -> 2 helpful replies, from 2 of the 3 prompts
    assert len({r["prompt_id"] for r in recs}) == 2
    for r in recs:
        assert r["model"] == tiny_model and r["raw"] and r["messages"][-1]["role"] == "user"
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    ex = counts["excluded"]
    assert counts["helpful_examples"] + ex["helpful_empty"] + ex["helpful_truncated"] == 2
    # Every sampled reply says whether it was cut at the 6-token budget; cut ones are not trained.
    assert all(isinstance(r["truncated"], bool) for r in recs)
    assert ex["helpful_truncated"] == sum(r["truncated"] and bool(r["response"].strip()) for r in recs)

    # Interrupted after sampling (no manifest): the rerun reuses the replies, loads no backend.
    (out / "manifest.json").unlink()

    def no_backend(*a, **k):
        raise AssertionError("regenerated helpful replies")

    monkeypatch.setattr(train_sft, "load_backend", no_backend)
    main(config(tmp_path, tiny_model, [rev], **cfg))
    assert (out / "helpful.jsonl").read_text().splitlines() == lines
    assert (out / "manifest.json").exists()


def test_config_parsing_and_cpu_defaults():
    cfg = parse_config(
        TrainSFTConfig, ["--data", "a", "b", "--lora", "--max-steps", "3", "--rounds-upto", "2"], "x", "y"
    )
    assert cfg.data == ["a", "b"] and cfg.lora and cfg.max_steps == 3 and cfg.rounds_upto == 2
    assert cfg.learning_rate == 2e-4  # LoRA default; full finetuning gets 2e-5
    assert TrainSFTConfig(data=["a"]).learning_rate == 2e-5
    assert cfg.output_dir == cfg.out == "runs/sft"
    assert cfg.bf16 is False and cfg.activation_checkpointing is False and cfg.completion_only_loss is True
    assert cfg.report_to == []  # "none"
    assert cfg.save_strategy == "no" and cfg.per_device_train_batch_size == 4 and cfg.max_length == 1024


def test_truncated_targets_are_excluded_by_default_and_counted(tmp_path, tiny_model):
    rev = tmp_path / "rev"
    rows = [
        {
            "messages": conv(f"How do I pick lock {i}?", f"I won't help with lock {i}" + ("" if i % 2 else ", bec")),
            "prompt_id": f"p{i}",
            "round": 1,
            "principle": "harmful",
            "truncated": i % 2 == 0,
            "unchanged": i == 1,
        }
        for i in range(6)
    ]
    sd = StageDir(rev, "revise", {"fake": True})
    (rev / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sd.finish({"config": {"sft_rounds": "last"}, "files": {"sft": "sft.jsonl"}, "counts": {"sft_empty_skipped": 2}})
    sd.close()
    m = json.loads(
        (main(config(tmp_path, tiny_model, [rev], helpful_ratio=0.0, max_steps=1)) / "manifest.json").read_text()
    )
    c = m["counts"]
    assert c["revision_examples"] == 3 and c["trained_examples"] == 3 and c["revision_unchanged"] == 1
    assert c["excluded"] == {"revision_truncated": 3, "revision_empty": 2, "helpful_truncated": 0, "helpful_empty": 0}
    convs, _ = load_revisions(config(tmp_path, tiny_model, [rev], keep_truncated=True))
    assert len(convs) == 6
    (rev / "sft.jsonl").write_text("".join(json.dumps({**r, "truncated": True}) + "\n" for r in rows))
    with pytest.raises(DataError, match="all 6 revision examples .* --keep-truncated"):
        load_revisions(config(tmp_path, tiny_model, [rev]))


def test_helpful_replies_come_from_the_helpful_model(tmp_path, tiny_model, monkeypatch):
    from fakes import FakeBackend, install

    rev = make_revise_folder(tmp_path / "rev", prompts=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Tell me about {i}."}) + "\n" for i in range(2)))
    spec = install(FakeBackend(), monkeypatch, name="helper")
    cfg = config(
        tmp_path, tiny_model, [rev], helpful_ratio=0.5, helpful_prompts=str(prompts), helpful_model=spec, max_steps=1
    )
    out = main(cfg)
    recs = [json.loads(x) for x in (out / "helpful.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["model"] == "fake" and r["response"].startswith("reply-") for r in recs)
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"]["helpful_model"] == spec and m["settings"]["helpful_model"] == spec
    assert m["counts"]["helpful_examples"] == 2
