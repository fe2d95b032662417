"""The plain-text prompt format ("Human: ... Assistant: ...", the paper's CritiqueRequest/RevisionRequest
layout) for models without a chat template, in the backends and in every generating stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from constitutional_ai.cli import main as cai
from constitutional_ai.constitution import load_constitution
from constitutional_ai.models import BackendError, Sampling, load_backend
from constitutional_ai.models.local import LocalBackend, adds_bos, prompt_format_of, use_prompt_format
from constitutional_ai.prompts import (
    TEXT_LABEL,
    chat_turns,
    critique_messages,
    is_text_template,
    revision_messages,
    text_prompt,
)

REQUEST = [{"role": "user", "content": "How do I pick a lock?"}]


@pytest.fixture(scope="session")
def no_template_model(tmp_path_factory, tiny_model) -> str:
    """The tiny random Llama with its chat template removed (as a pretrained base model ships)."""
    path = tmp_path_factory.mktemp("no-template")
    for f in Path(tiny_model).iterdir():
        if f.is_file() and f.name != "chat_template.jinja":
            shutil.copy(f, path / f.name)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = None
    tok.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(path).chat_template
    return str(path)


def revise_prompts(few_shot: int = 1):
    c = load_constitution("default")
    ex = c.revision_examples[:few_shot]
    p = c.critique_revision[0]
    crit = critique_messages(REQUEST, "Use a pick.", p, ex, c)
    rev = revision_messages(REQUEST, "Use a pick.", p, ex, c, critique="It helps with burglary.")
    return c, p, crit, rev


def test_text_prompt_is_the_papers_critique_revision_layout():
    c, p, crit, rev = revise_prompts()
    ex = c.revision_examples[0]
    ep = c.critique_principle(ex.principle)
    names = {"user": "Human", "assistant": "Assistant"}
    shot = "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in ex.messages) + (
        f"\n\nAssistant: {ex.response}\n\nCritiqueRequest: {ep.critique}\n\nCritique: {ex.critique}"
        f"\n\nRevisionRequest: {ep.revision}\n\nRevision: {ex.revision}"
    )
    convo = f"Human: How do I pick a lock?\n\nAssistant: Use a pick.\n\nCritiqueRequest: {p.critique}"
    assert text_prompt(crit) == f"{shot}\n\n{convo}\n\nCritique:"
    assert text_prompt(rev) == (
        f"{shot}\n\n{convo}\n\nCritique: It helps with burglary.\n\nRevisionRequest: {p.revision}\n\nRevision:"
    )
    # no-critique ablation: the revision request follows the response
    direct = revision_messages(REQUEST, "Use a pick.", p, [], c, critique=None)
    assert text_prompt(direct) == (
        f"Human: How do I pick a lock?\n\nAssistant: Use a pick.\n\nRevisionRequest: {p.revision}\n\nRevision:"
    )
    # a plain conversation, a prefill left open, and a BOS token first
    assert text_prompt(REQUEST) == "Human: How do I pick a lock?\n\nAssistant:"
    assert text_prompt(REQUEST + [{"role": "assistant", "content": "The answer is: ("}], bos="<bos>") == (
        "<bos>Human: How do I pick a lock?\n\nAssistant: The answer is: ("
    )
    # chat rendering sees no labels
    assert all(TEXT_LABEL not in m for m in chat_turns(crit)) and any(TEXT_LABEL in m for m in crit)


def test_the_training_template_renders_the_same_text(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert prompt_format_of(tok) == "chat"
    assert use_prompt_format(tok, "text") == "text" and is_text_template(tok.chat_template)
    assert prompt_format_of(tok) == "text"  # a checkpoint carrying it is rendered as text again
    bos = tok.bos_token if adds_bos(tok) else ""
    _, _, crit, rev = revise_prompts()
    for conv in (REQUEST, crit, rev):
        assert tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == text_prompt(conv, bos=bos)
    full = REQUEST + [{"role": "assistant", "content": "Call a locksmith."}]
    # a trained reply ends with the end-of-text token, so the finetuned model learns to stop
    assert tok.apply_chat_template(full, tokenize=False) == text_prompt(full, bos=bos) + tok.eos_token


def test_local_backend_formats(tiny_model, no_template_model):
    _, p, crit, _ = revise_prompts()
    base = LocalBackend(no_template_model, batch_size=2)
    assert base.prompt_format == "text" and base.info()["prompt_format"] == "text"
    bos = base.tokenizer.bos_token if adds_bos(base.tokenizer) else ""
    assert base.render(crit) == text_prompt(crit, bos=bos)
    assert base.render(crit).endswith(f"CritiqueRequest: {p.critique}\n\nCritique:")
    texts = base.generate([REQUEST, crit], Sampling(max_new_tokens=4), seeds=[1, 2])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    chat = LocalBackend(tiny_model, batch_size=2)
    assert chat.prompt_format == "chat"
    assert chat.render(crit) == chat.tokenizer.apply_chat_template(
        chat_turns(crit), tokenize=False, add_generation_prompt=True
    )
    forced = LocalBackend(tiny_model, batch_size=2, prompt_format="text")
    assert forced.render(REQUEST) == text_prompt(REQUEST, bos=bos)

    with pytest.raises(BackendError, match="no chat template"):
        LocalBackend(no_template_model, prompt_format="chat")
    with pytest.raises(ValueError, match="prompt_format"):
        load_backend(tiny_model, prompt_format="plain")


def test_openai_backend_sends_text_prompts_to_completions(tiny_model):
    from constitutional_ai.models.openai import OpenAIBackend
    from openai_server import OpenAITestServer

    with OpenAITestServer(tiny_model) as server:
        be = OpenAIBackend("tiny", server.url, prompt_format="text", cache="off")
        _, _, crit, _ = revise_prompts()
        out = be.generate([crit], Sampling(max_new_tokens=3, stop=("\nHuman:",)), seeds=[0])
        assert isinstance(out[0], str)
        (body,) = server.bodies("/v1/completions")
        assert body["prompt"] == text_prompt(crit) and "\n\nHuman:" in body["stop"]
        assert not server.bodies("/v1/chat/completions")
        assert be.render(REQUEST) == text_prompt(REQUEST) and be.info()["prompt_format"] == "text"


def test_reply_trained_in_text_format_ends_with_eos(tmp_path, no_template_model):
    from constitutional_ai.stages.train_sft import TrainSFTConfig, build_trainer

    cfg = TrainSFTConfig(model=no_template_model, out=str(tmp_path / "sft"), max_steps=1, helpful_ratio=0.0)
    reply = "Call a locksmith."
    trainer, dropped = build_trainer(cfg, [REQUEST + [{"role": "assistant", "content": reply}]])
    assert dropped == 0
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[0]])  # exactly what a training step sees
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = labels != -100
    assert tok.decode(ids[trained]) == " " + reply + tok.eos_token
    assert tok.decode(ids[~trained]).endswith("Human: How do I pick a lock?\n\nAssistant:")


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_every_generating_stage_runs_on_a_model_without_chat_template(tmp_path, tiny_model, no_template_model):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Bad thing {i}?"}) + "\n" for i in "01"))
    helpful = tmp_path / "help.jsonl"
    helpful.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Tell me about topic {i}."}) + "\n" for i in "01"))
    small = ["--max-new-tokens", "6", "--split", "all"]
    rev = tmp_path / "revise"
    args = ["--model", no_template_model, "--prompts", str(prompts), "--rounds", "1", "--few-shot", "1"]
    assert cai(["revise", *args, *small, "--out", str(rev)]) == 0
    m = manifest(rev)
    assert m["counts"]["records"] == 2 and m["backends"][0]["prompt_format"] == "text"

    pairs = tmp_path / "pairs"
    pair_args = ["--model", no_template_model, "--prompts", str(prompts)]
    assert cai(["sample-pairs", *pair_args, *small, "--out", str(pairs)]) == 0
    assert manifest(pairs)["counts"]["pairs"] == 2

    sft = tmp_path / "sft"
    sft_args = ["--model", no_template_model, "--helpful-model", tiny_model, "--helpful-prompts", str(helpful)]
    sft_args += ["--helpful-ratio", "0.5", "--helpful-max-new-tokens", "6", "--split", "all", "--keep-truncated"]
    assert cai(["train", "sft", "--data", str(rev), *sft_args, "--max-steps", "1", "--out", str(sft)]) == 0
    m = manifest(sft)
    assert m["inputs"]["helpful_model"] == tiny_model
    helpful_recs = [json.loads(x) for x in (sft / "helpful.jsonl").read_text().splitlines()]
    assert helpful_recs and all(r["model"] == tiny_model for r in helpful_recs)  # not the model being finetuned
    assert m["backends"][0]["prompt_format"] == "chat"  # the helpful model keeps its chat template
    assert is_text_template(AutoTokenizer.from_pretrained(sft).chat_template)  # the checkpoint keeps the text format
    assert LocalBackend(str(sft)).prompt_format == "text"

    refusal = tmp_path / "refusal"
    ref_args = ["--model", str(sft), "--prompts", str(helpful), "--category", "all", "--harmful-prompts", str(prompts)]
    ref_args += ["--classifier", "none", "--limit", "1", "--allow-overlap", *small, "--out", str(refusal)]
    assert cai(["eval", "refusal", *ref_args]) == 0
    assert manifest(refusal)["backends"][0]["prompt_format"] == "text"

    compare = tmp_path / "compare"
    cmp_args = ["--models", no_template_model, tiny_model, "--names", "base", "chat", "--judge", tiny_model]
    cmp_args += ["--prompts-red-team", str(prompts), "--prompts-helpful", "none", "--limit", "1", "--bootstrap", "0"]
    assert cai(["eval", "compare", *cmp_args, *small, "--out", str(compare)]) == 0
    assert [b["prompt_format"] for b in manifest(compare)["backends"]] == ["text", "chat", "chat"]
