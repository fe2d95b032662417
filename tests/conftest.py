"""Shared fixtures: a tiny random Llama with the embedded model's tokenizer, and a scripted
fake backend for stage logic."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-16 random Llama with SmolLM2's tokenizer to ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from constitutional_ai.models.local import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a tiny random Llama (fast, hermetic; outputs are gibberish by design)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture()
def fake_backend():
    from fakes import FakeBackend

    return FakeBackend()


@pytest.fixture(scope="session")
def tiny_pm(tmp_path_factory, tiny_model):
    """The tiny random Llama with a fresh one-output head, saved as a finished `train pm` folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pm")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores far enough apart to rank
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    from constitutional_ai.store import StageDir

    d = StageDir(path, "train-pm", {})
    d.finish({})
    d.close()
    return str(path)
