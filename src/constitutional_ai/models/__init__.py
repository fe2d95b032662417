"""Model backends and the model-spec strings users type.

Spec grammar (``--model``):

* omitted or ``default`` — the embedded SmolLM2-135M-Instruct (CPU-friendly, see README);
* a local checkpoint folder or a hub id — in-process transformers (:class:`LocalBackend`);
* ``openai:MODEL@http://host:port/v1`` — any OpenAI-compatible server (vLLM, llama.cpp,
  SGLang, hosted APIs); the API key is read from ``OPENAI_API_KEY`` when set;
* ``fake:NAME`` — a backend object registered in this process with :func:`register_fake`
  (scripted backends for tests and notebooks; stages cannot tell the difference).
"""

from __future__ import annotations

from .base import Backend, BackendError, LogprobsUnavailable, PromptTooLong, Sampling, derive_seed

__all__ = [
    "Backend",
    "BackendError",
    "LogprobsUnavailable",
    "PromptTooLong",
    "Sampling",
    "derive_seed",
    "load_backend",
    "register_fake",
]

_FAKES: dict[str, Backend] = {}


def register_fake(name: str, backend: Backend) -> str:
    """Make ``fake:NAME`` load ``backend`` (an object with the :class:`Backend` methods); returns the spec."""
    _FAKES[name] = backend
    return f"fake:{name}"


def load_backend(spec: str | None = None, **options) -> Backend:
    """Build the backend named by a model spec string (see module docstring)."""
    spec = (spec or "default").strip()
    if spec.startswith("fake:"):
        name = spec[len("fake:"):]
        if name not in _FAKES:
            raise BackendError(f"model spec {spec!r}: no backend registered as {name!r} (register_fake)")
        return _FAKES[name]
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec, **options)
    from .local import LocalBackend

    return LocalBackend(spec, **options)
