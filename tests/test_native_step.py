"""The batch-1 decode step in one native call (``models/native.py``, ``decode_step.c``)."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from constitutional_ai.models import Sampling, native
from constitutional_ai.models import fast as fast_mod
from constitutional_ai.models.local import LocalBackend, SlabCache
from test_fast_forward import PLANS, tiny_qwen2

# Where a C compiler is found the step must build and serve: a failed build fails these tests.
pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler here")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_path(request, tiny_model, tmp_path_factory):
    return tiny_model if request.param == "llama" else tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


def decode(backend, ids, steps, cache):
    """Prefill ``ids`` [1, L], then ``steps`` greedy decode steps; every step's logits."""
    L = ids.shape[1]
    out = [backend._forward(ids, torch.arange(L).unsqueeze(0), cache, None, 1)]
    for s in range(steps):
        token = out[-1][:, -1].argmax(-1, keepdim=True)
        out.append(backend._forward(token, torch.tensor([[L + s]]), cache, None))
    return out


def served(backend, monkeypatch):
    """Count the steps the native call serves."""
    calls = []
    step = backend._fast.native
    real = step.dll

    class Counting:
        def __getattr__(self, name):
            fn = getattr(real, name)
            if name != "cai_decode_step":
                return fn
            return lambda *a: calls.append(1) or fn(*a)

    monkeypatch.setattr(step, "dll", Counting())
    return calls


@pytest.mark.parametrize("plan", [p for p in PLANS if p.small == p.large == "aten"], ids=str)
@torch.inference_mode()
def test_decode_steps_equal_transformers_logits_and_cache(model_path, plan, monkeypatch):
    """Output-major and input-major weights, GQA, Q/K/V biases (qwen2), tied and untied heads:
    every native step's logits and the cache it writes are transformers' own."""
    monkeypatch.setattr(fast_mod, "plan_for", lambda weights, native=True: plan)
    fast, plain = LocalBackend(model_path), LocalBackend(model_path, kernels="transformers")
    assert fast.info()["kernels"]["decode_b1"].startswith("native")
    calls = served(fast, monkeypatch)
    ids = torch.randint(10, 1000, (1, 11))
    cache = SlabCache(len(fast._fast.layers), 11 + 6)
    ref_cache = DynamicCache()
    got, ref = decode(fast, ids, 6, cache), decode(plain, ids, 6, ref_cache)
    assert len(calls) == 6  # every decode step, not the prefill
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-5) for a, b in zip(got, ref))
    for mine, theirs in zip(cache.layers, ref_cache.layers):
        assert mine.length == 17 and mine.keys.shape == theirs.keys.shape
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-5)
        assert torch.allclose(mine.values, theirs.values, atol=1e-5)


@torch.inference_mode()
def test_steps_it_does_not_serve_run_through_torch(tiny_model, monkeypatch):
    """Two rows, a mask, a full cache, a cache of another kind: the torch path, same logits."""
    fast = LocalBackend(tiny_model)
    calls = served(fast, monkeypatch)
    ids = torch.randint(10, 1000, (2, 5))
    cache = SlabCache(2, 6)
    fast._forward(ids, torch.arange(5).expand(2, -1), cache, None, 1)
    fast._forward(ids[:, :1], torch.full((2, 1), 5), cache, None)  # two rows
    one = SlabCache(2, 6)
    fast._forward(ids[:1], torch.arange(5).unsqueeze(0), one, None, 1)
    fast._forward(ids[:1, :1], torch.tensor([[5]]), one, torch.ones(1, 6, dtype=torch.long))  # a mask
    full = fast._forward(ids[:1, :1], torch.tensor([[6]]), one, None)  # the cache is full: it regrows
    dyn = DynamicCache()
    fast._forward(ids[:1], torch.arange(5).unsqueeze(0), dyn, None, 1)
    fast._forward(ids[:1, :1], torch.tensor([[5]]), dyn, None)
    assert calls == [] and one.layers[0].length == 7 and full.shape == (1, 1, fast.model.config.vocab_size)


def test_generation_is_the_same_with_and_without_it(tiny_model, monkeypatch):
    fast = LocalBackend(tiny_model, batch_size=1)
    calls = served(fast, monkeypatch)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=10)
    with_native = fast.generate(convs, sampling, seeds=[1, 2, 3])
    assert len(calls) > 0
    monkeypatch.setattr(fast._fast, "native", None)
    assert fast.generate(convs, sampling, seeds=[1, 2, 3]) == with_native


def test_it_is_built_once_and_off_with_a_reason(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    try:
        dll, how = native.library()
        built = list((tmp_path / "native").glob("*.so"))
        assert dll is not None and how.startswith("native") and len(built) == 1
        mtime = built[0].stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library()[0] is not None and built[0].stat().st_mtime_ns == mtime  # not rebuilt
        native.library.cache_clear()
        monkeypatch.setenv("CAI_NATIVE", "0")
        assert native.library() == (None, "off ($CAI_NATIVE=0)")
        assert LocalBackend(tiny_model).info()["kernels"]["decode_b1"] == "torch: off ($CAI_NATIVE=0)"
        native.library.cache_clear()
        monkeypatch.delenv("CAI_NATIVE")
        monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "other"))
        monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
        monkeypatch.setenv("CC", "no-such-compiler")
        assert native.library() == (None, "off (no C compiler: set $CC)")
        native.library.cache_clear()
        bad = tmp_path / "bad-cc"
        bad.write_text("#!/bin/sh\necho 'cc: error: unsupported option' >&2\nexit 1\n")
        bad.chmod(0o755)
        monkeypatch.setenv("CC", str(bad))
        dll, how = native.library()
        assert dll is None and "compiling with" in how and "unsupported option" in how
        assert not list((tmp_path / "other").rglob("*.so*"))  # nothing half-built is left
    finally:
        native.library.cache_clear()


def test_bfloat16_models_run_through_torch(tiny_model):
    backend = LocalBackend(tiny_model, dtype="bfloat16")
    assert backend._fast.native is None and "float32" in backend.info()["kernels"]["decode_b1"]


@torch.inference_mode()
def test_dynamic_rotary_kinds_take_each_steps_own_position(tiny_model, monkeypatch):
    fast = LocalBackend(tiny_model)
    step = fast._fast.native
    table = step._rotary(40)
    monkeypatch.setattr(fast._fast.inner.rotary_emb, "rope_type", "dynamic")
    per_step = step._rotary(40)
    assert all(torch.equal(a, b) for a, b in zip(table, per_step)) and table[0].shape == (fast._fast.head_dim,)


def test_kernels_torch_keeps_every_step_in_torch(tiny_model, monkeypatch):
    backend = LocalBackend(tiny_model, kernels="torch")
    assert backend._fast is not None and backend._fast.native is None
    assert backend.info()["kernels"]["decode_b1"] == "torch (kernels=torch)"
    monkeypatch.setenv("CAI_KERNELS", "torch")
    assert LocalBackend(tiny_model)._fast.native is None


@pytest.mark.parametrize("shape", [(67, 45), (5, 1), (1, 3), (130, 300), (8, 16)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_products_of_any_shape_layout_and_thread_count_are_torch_products(shape, threads):
    """Row counts off the 8-row blocks, input lengths off the 16-lane vectors, fewer inputs than
    threads (a thread with nothing to add)."""
    dll, _ = native.library()
    g = torch.Generator().manual_seed(3)
    w, x, b = torch.randn(*shape, generator=g), torch.randn(shape[1], generator=g), torch.randn(shape[0], generator=g)
    want = torch.nn.functional.linear(x, w, b)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for stored in (w, w.t().contiguous().t()):
            assert torch.allclose(native.matvec(dll, stored, x, b), want, atol=1e-4)
    finally:
        torch.set_num_threads(saved)
