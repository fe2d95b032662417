"""`cai train pm` (soft-label Bradley–Terry PM) and `cai score`, on the tiny random Llama."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from constitutional_ai import pm as pm_lib
from constitutional_ai import preferences
from constitutional_ai.config import parse_config
from constitutional_ai.data import DataError
from constitutional_ai.stages import score, train_pm
from constitutional_ai.store import StageDir, StoreError


# ------------------------------------------------------------------------- fixtures
def user(text):
    return [{"role": "user", "content": text}]


def asst(text):
    return [{"role": "assistant", "content": text}]


def label_folder(path: Path, ps, finished: bool = True) -> Path:
    """A `cai label`-style output folder with one pair per p in ``ps``."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "preferences.jsonl", "w") as f:
        for i, p in enumerate(ps):
            f.write(
                json.dumps(
                    {
                        "prompt": user(f"How do I pick lock number {i}?"),
                        "chosen": asst("I can't help with breaking into places, but a locksmith can."),
                        "rejected": asst(f"Insert a tension wrench and rake pin {i}."),
                        "p_chosen": p,
                        "hard": False,
                        "pair_id": f"ai{i}",
                        "principle": "harm-1",
                    }
                )
                + "\n"
            )
    if finished:
        d = StageDir(path, "label", {})
        d.finish({})
        d.close()
    return path


def hh_file(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            prefix = f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: Let me think.\n\nHuman: Please answer."
            f.write(
                json.dumps(
                    {"chosen": prefix + f"\n\nAssistant: It is {2 * i}.", "rejected": prefix + "\n\nAssistant: No."}
                )
                + "\n"
            )
    return path


def config(tmp: Path, model: str, **kw) -> train_pm.TrainPMConfig:
    kw.setdefault("out", str(tmp / "pm"))
    kw.setdefault("max_steps", 3)
    kw.setdefault("learning_rate", 1e-2)
    kw.setdefault("disable_tqdm", True)
    return train_pm.TrainPMConfig(model=model, **kw)


# ------------------------------------------------------------------------- the loss
def test_soft_bt_loss_matches_hand_arithmetic():
    t = torch.tensor
    # -(0.8·log σ(1) + 0.2·log σ(-1)) = 0.8·0.313262 + 0.2·1.313262
    assert float(train_pm.soft_bt_loss(t([1.0]), t([0.0]), t([0.8]))) == pytest.approx(0.513262, abs=1e-5)
    # p = 1 is the standard Bradley–Terry loss -log σ(Δ)
    for d in (-2.0, 0.0, 0.7, 3.0):
        want = -math.log(1 / (1 + math.exp(-d)))
        assert float(train_pm.soft_bt_loss(t([d]), t([0.0]), t([1.0]))) == pytest.approx(want, abs=1e-6)
    # p = 0.5 at Δ = 0: log 2
    assert float(train_pm.soft_bt_loss(t([0.3]), t([0.3]), t([0.5]))) == pytest.approx(math.log(2), abs=1e-6)
    # a mean over the batch
    both = train_pm.soft_bt_loss(t([1.0, 0.0]), t([0.0, 0.0]), t([0.8, 0.5]))
    assert float(both) == pytest.approx((0.513262 + math.log(2)) / 2, abs=1e-5)


def test_soft_bt_loss_gradient_pulls_margin_to_logit_p():
    def grad(d, p):
        rc = torch.tensor([d], requires_grad=True)
        train_pm.soft_bt_loss(rc, torch.tensor([0.0]), torch.tensor([p])).backward()
        return float(rc.grad)

    # p = 0.5: descent moves Δ toward 0 from either side (grad has the sign of Δ)
    assert grad(2.0, 0.5) > 0 and grad(-2.0, 0.5) < 0 and grad(0.0, 0.5) == pytest.approx(0.0, abs=1e-7)
    # p = 1: always push Δ up; soft p = 0.8: stationary at Δ = logit(0.8) = log 4
    assert grad(5.0, 1.0) < 0
    assert grad(math.log(4), 0.8) == pytest.approx(0.0, abs=1e-6)
    assert grad(3.0, 0.8) > 0 and grad(0.0, 0.8) < 0


# ------------------------------------------------------------------------- data handling
def test_parse_hh_and_preference_rows():
    hh = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: A pun.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.",
    }
    r = preferences.parse_pair(hh, "h.jsonl:1", "helpful", 1.0)
    assert r["prompt"] == user("hi") + asst("hello") + user("joke?")
    assert r["chosen"] == asst("A pun.") and r["rejected"] == asst("No.") and r["p_chosen"] == 1.0
    r = preferences.parse_pair({"prompt": "q?", "chosen": "a", "rejected": "b"}, "x:2", "helpful", 1.0)
    assert r["prompt"] == user("q?") and r["chosen"] == asst("a") and r["p_chosen"] == 1.0
    with pytest.raises(DataError, match=r"x:3: field 'rejected': chosen and rejected differ"):
        preferences.parse_pair({**hh, "rejected": "\n\nHuman: other\n\nAssistant: No."}, "x:3", "helpful", 1.0)
    with pytest.raises(DataError, match=r"x:4: field 'p_chosen'"):
        preferences.parse_pair({"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 1.5}, "x:4", "ai", None)


def test_mix_follows_the_helpful_ratio():
    ai = [{"i": i} for i in range(10)]
    helpful = [{"h": i} for i in range(20)]
    a, h = train_pm.mix(ai, helpful, 0.5, seed=0)
    assert (len(a), len(h)) == (10, 10) and a == ai
    assert h == sorted(h, key=lambda r: r["h"])  # subsampled in order
    assert train_pm.mix(ai, helpful, 0.5, seed=0) == (a, h)  # deterministic
    a, h = train_pm.mix(ai, helpful, 0.75, seed=0)  # would need 30 helpful: subsample AI instead
    assert (len(a), len(h)) == (7, 20)
    assert train_pm.mix(ai, helpful, None, 0) == (ai, helpful)
    assert train_pm.mix(ai, helpful, 0.0, 0) == (ai, [])


def test_split_holds_out_whole_prompts():
    rows = [{"prompt": user(f"q{i % 5}"), "k": i} for i in range(20)]
    train, held = train_pm.split(rows, 0.2, seed=1)
    assert len(held) == 4 and len(train) == 16
    assert not {r["prompt"][0]["content"] for r in held} & {r["prompt"][0]["content"] for r in train}
    assert train_pm.split(rows, 0.2, seed=1) == (train, held)
    assert train_pm.split(rows, 0.0, seed=1) == (rows, [])


def test_label_folder_without_manifest_is_refused(tmp_path, tiny_model):
    folder = label_folder(tmp_path / "label", [0.7, 0.8], finished=False)
    with pytest.raises(StoreError, match="has no manifest.json"):
        train_pm.main(config(tmp_path, tiny_model, labels=[str(folder)]))
    assert not (tmp_path / "pm").exists()


def test_bad_rows_name_file_line_and_field(tmp_path, tiny_model):
    folder = label_folder(tmp_path / "label", [0.7, 0.8])
    helpful = hh_file(tmp_path / "hh.jsonl", 4)
    lines = helpful.read_text().splitlines()
    lines[2] = json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": 7})
    helpful.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{helpful}:3: field 'rejected'"):
        train_pm.main(config(tmp_path, tiny_model, labels=[str(folder)], helpful=str(helpful)))
    lines[2] = "{not json"
    helpful.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{helpful}:3: invalid JSON"):
        train_pm.main(config(tmp_path, tiny_model, labels=[str(folder)], helpful=str(helpful)))
    rows = (folder / "preferences.jsonl").read_text().splitlines()
    rows[1] = json.dumps({k: v for k, v in json.loads(rows[1]).items() if k != "p_chosen"})
    (folder / "preferences.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"preferences.jsonl:2: field 'p_chosen': missing"):
        train_pm.main(config(tmp_path, tiny_model, labels=[str(folder)]))
    assert not (tmp_path / "pm").exists()


# ------------------------------------------------------------------------- p_chosen → loss
def pairs(tok, ps):
    rows = [
        preferences.parse_pair(
            {
                "prompt": user(f"Question {i}?"),
                "chosen": asst("A careful answer."),
                "rejected": asst(f"Bad {i}."),
                "p_chosen": p,
            },
            f"t:{i}",
            "ai",
            None,
        )
        for i, p in enumerate(ps)
    ]
    return train_pm.tokenize_pairs(rows, tok, 512)[0]


def test_p_chosen_reaches_the_loss_through_the_collator(tmp_path, tiny_model):
    cfg = config(tmp_path, tiny_model, per_device_train_batch_size=4)
    tok = train_pm.load_tokenizer(cfg)
    ps = [0.55, 0.65, 0.75, 0.95]
    trainer = train_pm.build_trainer(cfg, train_pm.load_model(cfg, tok), tok, pairs(tok, ps))
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["p_chosen"].tolist()) == pytest.approx(ps)
    with torch.no_grad():
        p = batch["p_chosen"].clone()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        rc, rr = rewards.chunk(2)
        assert float(loss) == pytest.approx(float(train_pm.soft_bt_loss(rc, rr, p)), abs=1e-6)
        flipped = trainer.compute_loss(trainer.model, {**batch, "p_chosen": 1 - p})
        assert float(flipped) == pytest.approx(float(train_pm.soft_bt_loss(rc, rr, 1 - p)), abs=1e-6)
    # The hard-label ablation rounds the targets.
    hard = train_pm.build_trainer(
        config(tmp_path, tiny_model, soft_labels=False), train_pm.load_model(cfg, tok), tok, pairs(tok, [0.5, 0.7, 0.3])
    )
    assert sorted(hard.train_dataset["p_chosen"]) == [0.0, 1.0, 1.0]


def test_soft_half_labels_keep_rewards_together_hard_labels_separate_them(tmp_path, tiny_model):
    def trained_margin(p):
        cfg = config(tmp_path, tiny_model, max_steps=6, learning_rate=5e-2, per_device_train_batch_size=4)
        tok = train_pm.load_tokenizer(cfg)
        rows = pairs(tok, [p] * 4)
        trainer = train_pm.build_trainer(cfg, train_pm.load_model(cfg, tok), tok, rows)
        trainer.train()
        rc = pm_lib.score_ids(trainer.model, tok.pad_token_id, [r["chosen_ids"] for r in rows])
        rr = pm_lib.score_ids(trainer.model, tok.pad_token_id, [r["rejected_ids"] for r in rows])
        return sum(c - r for c, r in zip(rc, rr)) / len(rows)

    half, one = trained_margin(0.5), trained_margin(1.0)
    assert abs(half) < 0.1, half  # p = 0.5: "no preference" keeps r_c ≈ r_r
    assert one > 0.3 and one > 3 * abs(half), (one, half)  # p = 1: separates them


def test_our_tokenization_is_trls(tmp_path, tiny_model):
    from datasets import Dataset

    cfg = config(tmp_path, tiny_model)
    tok = train_pm.load_tokenizer(cfg)
    rows = pairs(tok, [0.8])
    trainer = train_pm.build_trainer(cfg, train_pm.load_model(cfg, tok), tok, rows)
    raw = Dataset.from_list(
        [{"prompt": rows[0]["prompt"], "chosen": rows[0]["chosen"], "rejected": rows[0]["rejected"]}]
    )
    trl_rows = trainer._prepare_dataset(raw, tok, cfg, "check")
    assert trl_rows[0]["chosen_ids"] == rows[0]["chosen_ids"]
    assert trl_rows[0]["rejected_ids"] == rows[0]["rejected_ids"]


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One full `train pm` run: 12 AI labels + 12 HH comparisons, helpfulness weighted to 0.25."""
    tmp = tmp_path_factory.mktemp("pm")
    ai_ps = [round(0.55 + 0.03 * i, 2) for i in range(12)]
    folder = label_folder(tmp / "label", ai_ps)
    helpful = hh_file(tmp / "hh.jsonl", 12)
    cfg = config(
        tmp,
        tiny_model,
        labels=[str(folder)],
        helpful=str(helpful),
        helpful_ratio=0.25,
        eval_fraction=0.25,
        max_steps=3,
        per_device_train_batch_size=6,
    )
    seen = []
    real = train_pm.soft_bt_loss

    def spy(rc, rr, p, weight=None):
        if rc.requires_grad:  # training steps, not the held-out evaluation
            seen.extend(zip(p.tolist(), weight.tolist()))
        return real(rc, rr, p, weight)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_pm, "soft_bt_loss", spy)
        train_pm.main(cfg)
    return {"cfg": cfg, "tmp": tmp, "ai_ps": ai_ps, "seen": seen, "out": Path(cfg.out)}


def test_train_pm_end_to_end(trained, tiny_model):
    from transformers import AutoModelForSequenceClassification

    out, cfg = trained["out"], trained["cfg"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "train-pm"
    c = manifest["counts"]
    # Nothing discarded: the ratio is reached by weights.
    assert (c["ai_labels"], c["helpful"], c["ai_used"], c["helpful_used"]) == (12, 12, 12, 12)
    assert c["train"] + c["heldout"] + c["too_long"] == 24 and c["heldout"] >= 2
    held = [json.loads(line) for line in (out / "heldout_scores.jsonl").read_text().splitlines()]
    assert len(held) == c["heldout"]
    # 3 steps × 6 pairs = one epoch over the 18 training pairs: the loss saw exactly their
    # labels — the AI's soft p_chosen and 1.0 for the helpful comparisons — with their weights.
    assert c["train"] == 18
    m = manifest["mix"]
    assert (m["mode"], m["train_ai"], m["train_helpful"]) == ("weight", 9, 9)
    assert (m["weight_ai"], m["weight_helpful"]) == pytest.approx((0.75 * 18 / 9, 0.25 * 18 / 9))
    assert m["helpful_weight_share"] == pytest.approx(0.25)
    train_ps = Counter(trained["ai_ps"] + [1.0] * 12) - Counter(h["p_chosen"] for h in held)
    assert Counter(round(p, 4) for p, _ in trained["seen"]) == Counter({round(p, 4): n for p, n in train_ps.items()})
    # AI labels here are all < 1 and helpful ones are 1.0, so the weight tells the sides apart.
    assert {round(w, 4) for p, w in trained["seen"] if p < 1} == {round(m["weight_ai"], 4)}
    assert {round(w, 4) for p, w in trained["seen"] if p == 1} == {round(m["weight_helpful"], 4)}

    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
    assert len(metrics["reliability"]) == 10 and sum(r["count"] for r in metrics["reliability"]) == c["heldout"]
    assert set(metrics["by_source"]) == {"ai", "helpful"}
    assert metrics["train"]["steps"] == 3 and metrics["train"]["seconds_per_step"] > 0
    assert metrics["accuracy"] == pytest.approx(sum(h["r_chosen"] > h["r_rejected"] for h in held) / len(held))
    assert manifest["metrics"]["accuracy"] == metrics["accuracy"]

    # Loadable as a reward model, with pad_token_id set; every trainable parameter moved.
    pm = AutoModelForSequenceClassification.from_pretrained(out)
    tok = train_pm.load_tokenizer(cfg)
    assert pm.config.num_labels == 1 and pm.config.pad_token_id == tok.pad_token_id is not None
    before = train_pm.load_model(cfg, tok).state_dict()
    after = pm.state_dict()
    assert set(before) == set(after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_rerun_is_a_no_op_and_changed_settings_are_refused(trained, capsys):
    out, cfg = trained["out"], trained["cfg"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    train_pm.main(cfg)
    assert "nothing to do" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    changed = config(
        trained["tmp"],
        cfg.model,
        labels=cfg.labels,
        helpful=cfg.helpful,
        helpful_ratio=0.25,
        eval_fraction=0.25,
        max_steps=3,
        learning_rate=5e-3,
    )
    with pytest.raises(StoreError, match="learning_rate"):
        train_pm.main(changed)


def test_cli_parses_label_lists(tmp_path):
    cfg = parse_config(
        train_pm.TrainPMConfig,
        ["--labels", "a", "b", "--helpful-ratio", "0.3", "--soft-labels", "false", "--out", str(tmp_path)],
        "t",
        "d",
    )
    assert cfg.labels == ["a", "b"] and cfg.helpful_ratio == 0.3 and cfg.soft_labels is False
    assert cfg.output_dir == str(tmp_path) and cfg.bf16 is False and cfg.gradient_checkpointing is False
    assert cfg.per_device_train_batch_size == 4 and cfg.max_length == 512 and cfg.eval_fraction == 0.1


# ------------------------------------------------------------------------- cai score
def test_score_writes_batch_invariant_scores(trained, tmp_path):
    out = trained["out"]
    rows = [
        {"id": "m", "messages": user("Hi there") + asst("Hello! How can I help?")},
        {"id": "p", "prompt": "Tell me a joke", "response": "Why did the chicken cross the road?", "extra": [1]},
        {
            "id": "l",
            "prompt": user("Explain") + asst("Sure?") + user("Yes, in detail please, thanks"),
            "response": "Okay. " * 30,
        },
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "scored.jsonl"
    assert score.cli(["--pm", str(out), "--input", str(inp), "--out", str(dest), "--batch-size", "3"]) == 0
    got = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [{k: v for k, v in g.items() if k != "score"} for g in got] == rows
    assert all(isinstance(g["score"], float) for g in got)

    model, tok = pm_lib.load_pm(out)
    convs = [score.row_conversation(r, "x") for r in rows]
    one = [pm_lib.score_conversations(model, tok, [c], batch_size=1)[0] for c in convs]
    batched = pm_lib.score_conversations(model, tok, convs, batch_size=8)
    assert batched == pytest.approx(one, abs=1e-4)
    assert [g["score"] for g in got] == pytest.approx(one, abs=1e-4)
    # Same scale as training: scoring a held-out pair reproduces its recorded reward.
    held = json.loads((out / "heldout_scores.jsonl").read_text().splitlines()[0])
    line = int(held["where"].rsplit(":", 1)[1])
    src = held["where"].rsplit(":", 1)[0]
    pair = preferences.parse_pair(
        json.loads(Path(src).read_text().splitlines()[line - 1]), held["where"], held["source"], 1.0
    )
    r = pm_lib.score_conversations(model, tok, [pair["prompt"] + pair["chosen"]])[0]
    assert r == pytest.approx(held["r_chosen"], abs=1e-4)


def test_score_rejects_bad_rows_and_unfinished_pm(trained, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"messages": user("Hi")}) + "\n")
    with pytest.raises(DataError, match=rf"{inp}:1: field 'messages': must end with the assistant"):
        score.main(score.ScoreConfig(pm=str(trained["out"]), input=str(inp), out=str(tmp_path / "o.jsonl")))
    unfinished = tmp_path / "pm"
    StageDir(unfinished, "train-pm", {}).close()
    with pytest.raises(StoreError, match="has no manifest.json"):
        pm_lib.load_pm(unfinished)


def test_weighted_loss_is_the_weighted_mean():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    p, w = torch.tensor([0.9, 0.5]), torch.tensor([0.5, 1.5])
    per = torch.stack([train_pm.soft_bt_loss(rc[i : i + 1], rr[i : i + 1], p[i : i + 1]) for i in range(2)])
    assert float(train_pm.soft_bt_loss(rc, rr, p, w)) == pytest.approx(float((per * w).mean()))


def test_hybrid_mix_trains_on_every_label(tmp_path, tiny_model, monkeypatch):
    """259 AI labels + 80 helpfulness comparisons at ratio 0.5: all 339 are trained on."""
    folder = label_folder(tmp_path / "label", [0.6 + 0.001 * (i % 300) for i in range(259)])
    helpful = hh_file(tmp_path / "hh.jsonl", 80)
    seen = []
    real = train_pm.soft_bt_loss

    def spy(rc, rr, p, weight=None):
        if rc.requires_grad:
            seen.extend(zip(p.tolist(), weight.tolist()))
        return real(rc, rr, p, weight)

    monkeypatch.setattr(train_pm, "soft_bt_loss", spy)
    cfg = config(
        tmp_path,
        tiny_model,
        labels=[str(folder)],
        helpful=str(helpful),
        helpful_ratio=0.5,
        eval_fraction=0.0,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=113,
    )
    train_pm.main(cfg)
    manifest = json.loads((tmp_path / "pm" / "manifest.json").read_text())
    c, m = manifest["counts"], manifest["mix"]
    assert (c["ai_used"], c["helpful_used"], c["train"]) == (259, 80, 339)
    assert len(seen) == 339 and sum(p == 1.0 for p, _ in seen) == 80
    assert m["weight_ai"] == pytest.approx(0.5 * 339 / 259) and m["weight_helpful"] == pytest.approx(0.5 * 339 / 80)
    assert sum(w for p, w in seen if p == 1.0) == pytest.approx(sum(w for p, w in seen if p < 1.0))


def test_subsample_cap_only_when_asked(tmp_path, tiny_model):
    folder = label_folder(tmp_path / "label", [0.7] * 12)
    helpful = hh_file(tmp_path / "hh.jsonl", 12)
    cfg = config(
        tmp_path,
        tiny_model,
        labels=[str(folder)],
        helpful=str(helpful),
        helpful_ratio=0.25,
        helpful_mix="subsample",
        eval_fraction=0.0,
        max_steps=1,
    )
    train_pm.main(cfg)
    manifest = json.loads((tmp_path / "pm" / "manifest.json").read_text())
    assert (manifest["counts"]["ai_used"], manifest["counts"]["helpful_used"]) == (12, 4)
    assert manifest["mix"]["mode"] == "subsample" and manifest["mix"]["weight_helpful"] == 1.0
    with pytest.raises(ValueError, match="--helpful-mix"):
        train_pm.main(config(tmp_path, tiny_model, labels=[str(folder)], helpful_mix="drop"))
