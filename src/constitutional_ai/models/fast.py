"""A lean inference forward pass for Llama-family models, and oneDNN matrix products on CPUs.

:class:`LocalBackend` runs every forward pass (prefill, decode steps, option scoring) through
:func:`fast_forward` when the model allows it. It computes what transformers' forward
computes — same weights, same rotary embedding (transformers' own module), same attention
scaling, same cache layout — with less work per step:

* **oneDNN matrix products on CPUs.** ``torch.ops.mkldnn._linear_pointwise`` runs fp32 and
  bf16 products through oneDNN; on the reference AMD CPU it is about 2x faster than the MKL
  BLAS path ``torch.nn.functional.linear`` takes (batch-1 products reach ~30-50 GB/s of
  weight reads instead of ~15-20). Checked once per process against ``F.linear``; when it
  is missing or disagrees, ``F.linear`` is used. Every ``nn.Linear`` of a model the backend
  loads uses it for inference (gradients on: ``F.linear`` as usual), architectures beyond
  Llama included.
* **Fused projections.** Q, K and V are one product, gate and up another (Q/K/V, output and
  down stored input-major, which oneDNN reads faster at small batch): the fused
  matrices are built once and the model's own parameters become views of them (no copy is
  kept, and the model still works unchanged).
* **Fewer operators per layer**: one fused RMSNorm, the rotary embedding on Q and K
  together, the cache written in place through the cache layer's own ``update``, and the
  attention mask built once per forward for all layers (none at all for an unpadded decode
  step).

Supported: ``llama``, ``qwen2`` and ``mistral`` without a sliding window (SiLU MLP, no
tensor-parallel split of the weights); anything else runs transformers' forward, with the
oneDNN products. ``kernels="transformers"`` (a backend option) turns all of this off.
"""

from __future__ import annotations

import functools
import os
import types

import torch
import torch.nn.functional as F

FAST_TYPES = ("llama", "qwen2", "mistral")


@functools.cache
def onednn_linear_ok() -> bool:
    """Whether oneDNN's linear is present and agrees with ``F.linear`` here (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((3, 5, 64), (40, 64), (40,)))
        ok = all(
            torch.allclose(op(x.to(dt), w.to(dt), b.to(dt), "none", [], "").float(), F.linear(x, w, b), atol=tol)
            for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.5))
        )
        return bool(ok)
    except (RuntimeError, AttributeError):
        return False


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    return _onednn(x, self.weight, self.bias)


def use_onednn_linears(model: torch.nn.Module) -> bool:
    """Route every ``nn.Linear`` of a CPU ``model`` through oneDNN for inference; True if done
    (not with ``$CAI_KERNELS=transformers``)."""
    if os.environ.get("CAI_KERNELS") == "transformers" or not onednn_linear_ok():
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.forward = types.MethodType(_linear_forward, mod)
    return True


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why :class:`FastForward` cannot run ``model`` (None: it can)."""
    cfg = model.config
    if cfg.model_type not in FAST_TYPES:
        return f"model type {cfg.model_type!r} (supported: {', '.join(FAST_TYPES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return "not a *ForCausalLM with a rotary embedding"
    return None


def _fuse(mods: list[torch.nn.Linear], transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for ``mods`` stacked by output; each module's parameters become views.

    ``transposed`` stores the matrix input-major (the returned weight is a transposed view of
    a contiguous [in, out] tensor): oneDNN reads the Q/K/V, output and down projections faster
    that way on the reference CPU, the gate/up one slower.
    """
    has_bias = [m.bias is not None for m in mods]
    if any(has_bias) and not all(has_bias):
        raise ValueError("mixed biases in fused projections")
    if transposed:
        weight = torch.cat([m.weight.detach().t() for m in mods], dim=1).contiguous().t()
    else:
        weight = torch.cat([m.weight.detach() for m in mods]).contiguous()
    bias = torch.cat([m.bias.detach() for m in mods]).contiguous() if all(has_bias) else None
    start = 0
    for m in mods:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start : start + n], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return weight, bias


class FastForward:
    """The forward pass of a Llama-family ``*ForCausalLM`` with fused projections (see the module)."""

    def __init__(self, model: torch.nn.Module, onednn: bool):
        cfg = model.config
        self.model = model
        self.inner = model.model
        self.lin = _onednn if onednn else F.linear
        attn0 = self.inner.layers[0].self_attn
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        weight = model.lm_head.weight
        #: CPU attention kernels are several times slower in bf16/fp16 than in fp32: lower-precision
        #: models on CPUs attend in fp32 (a cast of Q, K and V per layer).
        self.attn_dtype = torch.float32 if weight.device.type == "cpu" else weight.dtype
        self.layers = []
        for layer in self.inner.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv, qkv_b = _fuse([a.q_proj, a.k_proj, a.v_proj], transposed=True)
            gate_up, gate_up_b = _fuse([mlp.gate_proj, mlp.up_proj])
            _fuse([a.o_proj], transposed=True)
            _fuse([mlp.down_proj], transposed=True)
            self.layers.append(
                (
                    layer.input_layernorm,
                    qkv,
                    qkv_b,
                    a.o_proj,
                    layer.post_attention_layernorm,
                    gate_up,
                    gate_up_b,
                    mlp.down_proj,
                    mlp.gate_proj.weight.shape[0],
                )
            )

    @staticmethod
    def _norm(mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        # transformers' RMSNorm: normalise in fp32, cast back, then scale.
        y = F.rms_norm(x.float(), (x.shape[-1],), None, mod.variance_epsilon)
        return mod.weight * y.to(x.dtype)

    def _mask(self, attention_mask: torch.Tensor | None, B: int, S: int, past: int) -> torch.Tensor | None:
        """Additive [B, 1, S, past + S] mask (0 or -inf): causal, padded keys hidden; None when
        nothing is hidden. Built once per forward (attention would convert a boolean one in
        every layer).

        Every query may always see its own key, so a padding query (left padding) never has
        all keys hidden; nothing reads its output.
        """
        if S == 1 and attention_mask is None:
            return None
        dev = self.model.lm_head.weight.device
        q = torch.arange(S, device=dev).unsqueeze(-1) + past
        k = torch.arange(past + S, device=dev)
        allowed = (k <= q).unsqueeze(0).expand(B, S, past + S)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, : past + S].bool()
            allowed = allowed | (k == q).unsqueeze(0)
        return (
            torch.zeros(allowed.shape, dtype=self.attn_dtype, device=dev)
            .masked_fill_(~allowed, float("-inf"))
            .unsqueeze(1)
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """Logits for ``input_ids`` [B, S] at ``position_ids``, appending their KV to ``cache``.

        ``logits_to_keep``: an int k keeps the last k positions (0: all), a tensor the given
        positions, as in transformers. ``attention_mask`` [B, past + S] marks real tokens.
        """
        B, S = input_ids.shape
        past = cache.get_seq_length()
        mask = self._mask(attention_mask, B, S, past)
        x = self.inner.embed_tokens(input_ids)
        cos, sin = self.inner.rotary_emb(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, S, d]
        nh, nkv, d, lin = self.n_heads, self.n_kv, self.head_dim, self.lin
        half = d // 2
        for i, (norm1, qkv_w, qkv_b, o_proj, norm2, gu_w, gu_b, down, inter) in enumerate(self.layers):
            h = self._norm(norm1, x)
            qkv = lin(h, qkv_w, qkv_b)
            qk = qkv[..., : (nh + nkv) * d].view(B, S, nh + nkv, d).transpose(1, 2)
            rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rot * sin
            v = qkv[..., (nh + nkv) * d :].view(B, S, nkv, d).transpose(1, 2)
            keys, values = cache.update(qk[:, nh:], v, i)
            q, at = qk[:, :nh], self.attn_dtype
            o = F.scaled_dot_product_attention(
                q.to(at), keys.to(at), values.to(at), attn_mask=mask, scale=self.scaling, enable_gqa=nh != nkv
            )
            x = x + o_proj(o.to(x.dtype).transpose(1, 2).reshape(B, S, nh * d))
            gu = lin(self._norm(norm2, x), gu_w, gu_b)
            x = x + down(F.silu(gu[..., :inter]) * gu[..., inter:])
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[:, logits_to_keep]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.model.lm_head(self._norm(self.inner.norm, x))
