"""Model specs: a mistyped --model fails at once with what --model takes; fake: specs for tests."""

import pytest

from constitutional_ai.models import BackendError, load_backend, register_fake
from constitutional_ai.models.local import resolve_model_path


def test_missing_folder_says_so(tmp_path):
    with pytest.raises(BackendError, match=r"(?s)no such model folder.*--model takes 'default'"):
        resolve_model_path(str(tmp_path / "no_such_ckpt"))
    with pytest.raises(BackendError, match="no such model folder"):
        resolve_model_path("./no_such_ckpt")


def test_folder_without_a_model_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BackendError, match="not a model checkpoint folder"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(BackendError, match="not a model checkpoint folder"):
        resolve_model_path(str(tmp_path / "notes.txt"))


def test_unknown_hub_id_offline_fails_without_retries(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackendError, match="not in the hub cache"):
        resolve_model_path("nosuch/model-xyz")


def test_fake_specs():
    marker = object()
    assert register_fake("unit", marker) == "fake:unit"
    assert load_backend("fake:unit") is marker
    with pytest.raises(BackendError, match="no backend registered"):
        load_backend("fake:missing")
