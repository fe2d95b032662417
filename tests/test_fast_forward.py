"""The lean forward pass (``models/fast.py``) computes what transformers' forward computes."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from constitutional_ai.models import Sampling
from constitutional_ai.models import fast as fast_mod
from constitutional_ai.models.fast import FastForward, LinearPlan, onednn_linear_ok, plan_for, unsupported_reason
from constitutional_ai.models.local import LocalBackend


def tiny_qwen2(path):
    """A tiny random Qwen2 (biases on Q, K and V) with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from constitutional_ai.models.local import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    for layer in model.model.layers:  # non-zero biases, so a lost bias would show
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tiny_model, tmp_path_factory):
    path = tiny_model if request.param == "llama" else tiny_qwen2(tmp_path_factory.mktemp("qwen2"))
    return LocalBackend(path, batch_size=4), LocalBackend(path, batch_size=4, kernels="transformers")


def convs(n):
    return [[{"role": "user", "content": f"question {i} " + "and more words " * (3 * i)}] for i in range(n)]


def test_both_paths_are_what_info_says(pair):
    fast, plain = pair
    assert fast.info()["kernels"]["forward"] == "fast"
    matmul = fast.info()["kernels"]["matmul"]
    assert set(matmul) == set(FastForward.KINDS)
    kernels = ("aten", "onednn") if onednn_linear_ok() else ("aten",)
    assert all(str(p).startswith(kernels) for p in matmul.values()), matmul
    assert plain.info()["kernels"] == {"forward": "transformers", "matmul": "default"}


@torch.inference_mode()
def test_logits_and_cache_equal_transformers_with_padding_and_decode_steps(pair):
    fast, plain = pair
    torch.manual_seed(0)
    B, L = 3, 9
    ids = torch.randint(10, 1000, (B, L))
    mask = torch.ones(B, L + 2, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    pos = (mask[:, :L].cumsum(-1) - 1).clamp_min(0)
    caches = [DynamicCache(), DynamicCache()]
    outs = [b._forward(ids, pos, c, mask[:, :L], 0) for b, c in zip(pair, caches)]
    real = mask[:, :L].bool()
    assert torch.allclose(outs[0][real], outs[1][real], atol=1e-5)
    for layer_f, layer_p in zip(caches[0].layers, caches[1].layers):
        kf, kp = layer_f.keys.transpose(1, 2), layer_p.keys.transpose(1, 2)  # [B, S, heads, d]
        assert torch.allclose(kf[real], kp[real], atol=1e-5)
    step = torch.randint(10, 1000, (B, 1))
    for width in (L + 1, L + 2):  # two decode steps, with the padding mask
        p = pos[:, -1:] + width - L
        outs = [b._forward(step, p, c, mask[:, :width]) for b, c in zip(pair, caches)]
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
    # logits_to_keep as a count and as positions
    a = fast._forward(ids[:1], pos[:1], DynamicCache(), None, 2)
    b = plain._forward(ids[:1], pos[:1], DynamicCache(), None, torch.tensor([L - 2, L - 1]))
    assert a.shape == b.shape == (1, 2, a.shape[-1]) and torch.allclose(a, b, atol=1e-5)
    # unpadded and without a past the pass is plainly causal: no mask, ``is_causal`` attention
    ones = torch.ones(2, L, dtype=torch.long)
    assert fast._fast._mask(ones, 2, L, 0) is None and fast._fast._mask(None, 1, L, 0) is None
    assert fast._fast._mask(ones, 2, L - 3, 3) is not None and fast._fast._mask(mask[:, :L], B, L, 0) is not None
    a = fast._forward(ids[1:], pos[1:], DynamicCache(), ones, 0)
    b = plain._forward(ids[1:], pos[1:], DynamicCache(), ones, 0)
    assert torch.allclose(a, b, atol=1e-5)


def test_generation_and_scoring_match_transformers(pair):
    fast, plain = pair
    c = convs(5)
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    assert fast.generate(c, greedy) == plain.generate(c, greedy)
    prompts = [fast.render(x) + " (" for x in c]
    for options in (["A", "B"], [" yes", " no thanks"]):
        got, ref = fast.score_choices(prompts, options), plain.score_choices(prompts, options)
        assert max(abs(x - y) for r, s in zip(got, ref) for x, y in zip(r, s)) < 1e-4


def test_other_architectures_fall_back_to_transformers(tiny_model):
    backend = LocalBackend(tiny_model)
    assert unsupported_reason(backend.model) is None
    backend.model.config.model_type = "gemma3_text"
    assert "gemma3_text" in unsupported_reason(backend.model)
    backend.model.config.model_type = "llama"
    backend.model.config.hidden_act = "gelu"
    assert "gelu" in unsupported_reason(backend.model)


def test_fused_projections_leave_the_model_working_unchanged(tiny_model):
    backend = LocalBackend(tiny_model, kernels="transformers")
    ids = torch.randint(10, 1000, (2, 7))
    with torch.inference_mode():
        before = backend.model(input_ids=ids).logits
        FastForward(backend.model, plan=False)  # parameters become views of the fused matrices
        after = backend.model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)  # a transposed layout may round differently
    attn = backend.model.model.layers[0].self_attn
    storage = {p.weight.untyped_storage().data_ptr() for p in (attn.q_proj, attn.k_proj, attn.v_proj)}
    assert len(storage) == 1  # views of one fused matrix, not copies


def test_environment_opts_in_and_bad_values_are_clear_errors(tiny_model, monkeypatch):
    monkeypatch.setenv("CAI_KERNELS", "transformers")
    monkeypatch.setenv("CAI_DTYPE", "bfloat16")
    backend = LocalBackend(tiny_model)
    assert backend.info()["kernels"]["forward"] == "transformers"
    assert backend.info()["dtype"] == "bfloat16"
    monkeypatch.setenv("CAI_DTYPE", "fp8")
    with pytest.raises(ValueError, match=r"CAI_DTYPE.*fp8"):
        LocalBackend(tiny_model)


def test_bfloat16_runs_the_fast_path_close_to_float32(tiny_model):
    fast = LocalBackend(tiny_model, dtype="bfloat16")
    ref = LocalBackend(tiny_model)
    assert fast.info()["kernels"]["forward"] == "fast" and fast.info()["dtype"] == "bfloat16"
    prompts = [fast.render(x) + " (" for x in convs(3)]
    got, want = fast.score_choices(prompts, ["A", "B"]), ref.score_choices(prompts, ["A", "B"])
    assert max(abs(x - y) for r, s in zip(got, want) for x, y in zip(r, s)) < 0.1
    assert all(t.finish_reason in ("stop", "length") for t in fast.generate(convs(3), Sampling(max_new_tokens=6)))


PLANS = [LinearPlan(t, k, k) for t in (False, True) for k in ("aten", "onednn")] + [
    LinearPlan(True, "aten", "onednn"),
    LinearPlan(False, "onednn", "aten"),
    LinearPlan(False, "aten", "aten", "native"),
]


@pytest.mark.parametrize("plan", PLANS, ids=str)
@torch.inference_mode()
def test_every_plan_computes_what_transformers_computes(tiny_model, plan, monkeypatch):
    """Each storage order and kernel (small and large passes) gives transformers' logits, and the
    model's own forward (its modules run by the same plans) still works."""
    if "onednn" in (plan.small, plan.large) and not onednn_linear_ok():
        pytest.skip("oneDNN's linear is not usable here")
    plain = LocalBackend(tiny_model, kernels="transformers")
    ids = torch.randint(10, 1000, (3, 7))
    pos = torch.arange(7).expand(3, -1)
    ref = plain._forward(ids, pos, DynamicCache()), plain._forward(ids[:1, :2], pos[:1, :2], DynamicCache())
    monkeypatch.setattr(fast_mod, "plan_for", lambda weights, native=True: plan)
    fast = LocalBackend(tiny_model)
    assert set(fast.info()["kernels"]["matmul"].values()) == {str(plan)}
    got = fast._forward(ids, pos, DynamicCache()), fast._forward(ids[:1, :2], pos[:1, :2], DynamicCache())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, ref))  # 21 rows: large; 2 rows: small
    assert torch.allclose(fast.model(input_ids=ids).logits, ref[0], atol=1e-5)
    head, embed = fast.model.lm_head.weight, fast.model.model.embed_tokens.weight
    assert head is embed  # the tied head was laid out in place: still tied
    assert head.stride() == ((1, head.shape[0]) if plan.transposed else (head.shape[1], 1))


def fake_timings(monkeypatch, table):
    """Make plan_for read its timings from ``table`` (in the order of its candidates)."""
    calls = iter(table)

    def timed(fns, rounds=3):
        for fn in fns.values():
            fn()  # the products still run
        return {key: next(calls) for key in fns}

    monkeypatch.setattr(fast_mod, "_best_times", timed)


def test_timings_interleave_the_candidates_and_keep_the_best_round(monkeypatch):
    order, clock = [], iter([0.0, 5.0, 5.0, 6.0, 6.0, 8.0, 8.0, 9.0, 9.0, 10.0, 10.0, 14.0])
    monkeypatch.setattr(fast_mod.time, "perf_counter", lambda: next(clock))
    got = fast_mod._best_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")})
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then the rounds take turns
    assert got == {"a": 1.0, "b": 1.0}  # a: 5, 2, 1; b: 1, 1, 4


def test_plan_takes_the_fastest_order_then_the_fastest_kernel_per_regime(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_mod, "onednn_linear_ok", lambda: True)
    ws = [torch.randn(24, 16) for _ in range(3)]
    # order: output-major then input-major; kernels aten, onednn; rows 1, 32
    monkeypatch.setattr(fast_mod, "native_gemm_ok", lambda: False)
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 20.0] + [2.0, 50.0, 3.0, 30.0])
    # output-major: best 4 (aten) + 20 (onednn) -> 4/2 + 20/20 = 3; input-major: 2/2 + 30/20 = 2.5
    assert plan_for(ws) == LinearPlan(True, "aten", "onednn")
    saved = json.loads((tmp_path / "kernel-plans.json").read_text())
    assert list(saved.values()) == [{"transposed": True, "small": "aten", "large": "onednn", "mid": ""}]
    fake_timings(monkeypatch, [])  # a second call times nothing: the stored plan is reused
    assert plan_for(ws) == LinearPlan(True, "aten", "onednn")
    fake_timings(monkeypatch, [1.0, 1.0, 9.0, 9.0] + [9.0] * 4)  # another shape: timed, its own entry
    assert plan_for([torch.randn(8, 16)]) == LinearPlan(False, "aten", "aten")
    assert len(json.loads((tmp_path / "kernel-plans.json").read_text())) == 2


def test_plan_takes_the_native_few_row_kernel_for_batched_steps_where_it_is_fastest(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_mod, "onednn_linear_ok", lambda: True)
    monkeypatch.setattr(fast_mod, "native_gemm_ok", lambda: True)
    ws = [torch.randn(24, 16) for _ in range(3)]
    # output-major: aten 1/32, onednn 1/32, native 1/32; then input-major the same (at one row the
    # native kernel is the matrix-vector product, at 32 the few-row kernel, in either order)
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 30.0, 4.5, 10.0] + [4.0, 35.0, 6.0, 36.0, 5.0, 12.0])
    # output-major: 4/4 + 10/10 = 2 (native counts for 32 rows); input-major: 4/4 + 12/10 = 2.2
    plan = plan_for(ws)
    assert plan == LinearPlan(False, "aten", "onednn", "native")  # large: the library's fastest, 30
    assert plan.kernel(1) is fast_mod.KERNELS["aten"] and plan.kernel(32) is fast_mod.KERNELS["native"]
    assert plan.kernel(fast_mod.MID_ROWS + 1) is fast_mod.KERNELS["onednn"]  # prefill and scoring
    assert "native <=32" in str(plan)
    fake_timings(monkeypatch, [])  # stored, mid included
    assert plan_for(ws) == plan
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 30.0, 4.5, 31.0] + [9.0, 90.0] * 3)  # slower than onednn: no mid
    assert plan_for([torch.randn(8, 16)]) == LinearPlan(False, "aten", "onednn")
    # kernels="torch": the native kernels are neither timed nor taken (a plan of its own)
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 30.0] + [4.0, 35.0, 6.0, 36.0])
    assert plan_for(ws, native=False) == LinearPlan(False, "aten", "onednn")
    assert len(json.loads((tmp_path / "kernel-plans.json").read_text())) == 3
    # other native code (a new version of decode_step.c): timed again, under its own entry
    monkeypatch.setattr(fast_mod, "source_digest", lambda: "another")
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 30.0, 4.5, 10.0] + [4.0, 35.0, 6.0, 36.0, 5.0, 12.0])
    assert plan_for(ws) == plan
    assert len(json.loads((tmp_path / "kernel-plans.json").read_text())) == 4
    # input-major faster at one row, and the few-row kernel as fast there at 32: input-major, native mid
    fake_timings(monkeypatch, [4.0, 40.0, 5.0, 30.0, 4.5, 10.0] + [2.0, 35.0, 6.0, 36.0, 3.0, 10.0])
    assert plan_for([torch.randn(16, 16)]) == LinearPlan(True, "aten", "aten", "native")


@pytest.mark.skipif(not fast_mod.native_gemm_ok(), reason="no native kernels here (no C compiler)")
@pytest.mark.parametrize("rows", [5, 31, 32, 33, 70])
def test_native_few_row_kernel_computes_f_linear(rows):
    g = torch.Generator().manual_seed(rows)
    # output counts past a 12-row tile and a 48-output panel, inputs past a block of 128
    for out, inp in ((960, 576), (13, 150), (25, 16), (97, 300)):
        w, b, x = (
            torch.randn(out, inp, generator=g),
            torch.randn(out, generator=g),
            torch.randn(2, rows, inp, generator=g),
        )
        input_major = fast_mod._stored(w, True)
        for stored in (w, input_major):
            for bias in (b, None):
                got = fast_mod.KERNELS["native"](x, stored, bias)
                assert got.shape == (2, rows, out)
                assert torch.allclose(got, F.linear(x, w, bias), atol=1e-4, rtol=1e-5)
        # a row's result does not depend on the other rows of the batch
        one = fast_mod.KERNELS["native"](x[:1, 2:3].repeat(1, rows, 1), input_major, b)
        alone = fast_mod.KERNELS["native"](x[:1, 2:3], input_major, b)
        assert torch.equal(one[0, -1], one[0, 0]) and torch.allclose(alone[0, 0], one[0, 0], atol=1e-4)
    # what it does not serve runs through F.linear: weights in neither order, other dtypes
    w = torch.randn(7, 16, generator=g)
    x = torch.randn(9, 16, generator=g)
    strided = torch.randn(7, 32, generator=g)[:, ::2]
    assert torch.allclose(fast_mod.KERNELS["native"](x, strided), F.linear(x, strided), atol=1e-5)
    assert fast_mod.KERNELS["native"](x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16


def test_a_corrupt_plans_file_is_timed_again_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    (tmp_path / "kernel-plans.json").write_text("{not json")
    plan = plan_for([torch.randn(24, 16)])
    saved = json.loads((tmp_path / "kernel-plans.json").read_text())
    assert len(saved) == 1 and LinearPlan(**next(iter(saved.values()))) == plan
    # a stored plan naming a kernel this machine lacks is not trusted
    key = next(iter(saved))
    (tmp_path / "kernel-plans.json").write_text(json.dumps({key: {"transposed": False, "small": "x", "large": "x"}}))
    assert plan_for([torch.randn(24, 16)]).small in ("aten", "onednn")


def test_plans_are_kept_per_cpu_name_and_last_level_cache(tmp_path, monkeypatch):
    # virtual machines report one generic model name for CPUs with different caches
    for index, level, size in (("index0", "1", "48K"), ("index2", "2", "2048K"), ("index3", "3", "266240K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "level").write_text(level + "\n")
        (tmp_path / index / "size").write_text(size + "\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are skipped
    name = fast_mod._cpu_name(tmp_path)
    assert name.endswith(", L3 266240K") and name != ", L3 266240K"
    assert fast_mod._cpu_name(tmp_path / "absent") == name.removesuffix(", L3 266240K")
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_mod, "_cpu_name", lambda: "Some CPU, L3 1M")
    plan_for([torch.randn(24, 16)])
    monkeypatch.setattr(fast_mod, "_cpu_name", lambda: "Some CPU, L3 2M")
    plan_for([torch.randn(24, 16)])
    keys = json.loads((tmp_path / "kernel-plans.json").read_text())
    assert sorted(k.split(" | ")[0] for k in keys) == ["Some CPU, L3 1M", "Some CPU, L3 2M"]
