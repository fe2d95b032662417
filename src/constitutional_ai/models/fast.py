"""A lean inference forward pass for Llama-family models, and matrix products timed on this CPU.

:class:`LocalBackend` runs every forward pass (prefill, decode steps, option scoring) through
:class:`FastForward` when the model allows it. It computes what transformers' forward
computes — same weights, same rotary embedding (transformers' own module), same attention
scaling, same cache layout — with less work per step:

* **Matrix products planned per CPU** (:func:`plan_for`). Which kernel is fastest, and in
  which storage order of the weights, depends on the CPU: on one AMD machine oneDNN's linear
  (``torch.ops.mkldnn._linear_pointwise``) ran batch-1 products 2x faster than the MKL path
  of ``F.linear``, on an Intel one it was 15-30 % slower. So for every kind of projection
  both orders (output-major, input-major) and both kernels are timed once, at batch-1 and
  batch-32 row counts, and the fastest plan is kept per CPU model and last-level cache size
  in the user cache (reruns on a machine round identically). oneDNN is checked once against
  ``F.linear`` before it can be chosen. Models outside the lean path get the same planning
  for each ``nn.Linear`` (:func:`plan_linears`); with gradients on, ``F.linear`` runs as usual.
* **Fused projections.** Q, K and V are one product, gate and up another: the fused
  matrices are built once and the model's own parameters become views of them (no copy is
  kept, and the model still works unchanged).
* **Fewer operators per layer**: one fused RMSNorm (with its weight, in fp32), the rotary
  embedding on Q and K together as one roll and one multiply-add, the cache written in
  place through the cache layer's own ``update``, and the attention mask built once per
  forward for all layers (none at all for an unpadded decode step).

Supported: ``llama``, ``qwen2`` and ``mistral`` without a sliding window (SiLU MLP, no
tensor-parallel split of the weights); anything else runs transformers' forward, with the
planned products. ``kernels="transformers"`` (a backend option) turns all of this off.

**The batch-1 decode step** (one row, one new token, fp32 on a CPU) runs in one native call
(``native.py``) where a C compiler builds it; ``kernels="torch"`` keeps it in torch.
Batched decode steps take the native few-row product where the plan found it fastest
(:attr:`LinearPlan.mid`) and the native one-token attention.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .native import NativeStep, library, source_digest
from .native import attend as native_attend
from .native import gemm as native_gemm
from .native import matvec as native_matvec

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


def native_gemm_ok() -> bool:
    """Whether the native few-row kernel (``decode_step.c:cai_gemm``) is built and checked here."""
    return library()[0] is not None


def _native(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The native products: one row by the batch-1 step's matrix-vector kernel (either storage
    order), more by the few-row kernel (either order as well); ``F.linear`` for the rest."""
    dll = library()[0]
    y = None
    plain = x.dtype == w.dtype == torch.float32 and w.device.type == "cpu" and (b is None or b.is_contiguous())
    if dll is not None and plain and x.numel() == x.shape[-1]:
        y = native_matvec(dll, w, x.reshape(-1).contiguous(), b).view(*x.shape[:-1], w.shape[0])
    elif dll is not None:
        y = native_gemm(dll, x, w, b)
    return F.linear(x, w, b) if y is None else y


#: The matrix-product kernels a plan chooses from: ``aten`` is ``F.linear`` (MKL/OpenBLAS on
#: CPUs), ``onednn`` is oneDNN's linear (CPUs only, where :func:`onednn_linear_ok`), ``native``
#: the project's few-row kernel for fp32 weights in either order (where :func:`native_gemm_ok`;
#: ``F.linear`` for anything it does not serve).
KERNELS: dict[str, Callable[..., torch.Tensor]] = {"aten": F.linear, "onednn": _onednn, "native": _native}
#: Passes with at most this many rows (tokens) use a plan's small-batch kernel.
SMALL_ROWS = 4
#: Passes with more rows than that and at most this many use a plan's ``mid`` kernel where it
#: has one (a batched decode step); larger ones (prefill, scoring) its ``large`` kernel.
MID_ROWS = 32
#: Row counts kernels are timed at: a batch-1 decode step and a batch-32 one.
PLAN_ROWS = (1, 32)
#: Weight bytes timed per plan at most (the first matrices of a kind), to bound the cost.
PLAN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class LinearPlan:
    """How one kind of projection runs: its weights' storage order and a kernel per batch regime.

    ``transposed`` stores the [out, in] weight input-major (a transposed view of a contiguous
    [in, out] tensor); ``small`` serves passes of up to :data:`SMALL_ROWS` rows, ``mid`` (where
    set) those of up to :data:`MID_ROWS`, ``large`` the rest.
    """

    transposed: bool = False
    small: str = "aten"
    large: str = "aten"
    mid: str = ""

    def kernel(self, rows: int) -> Callable[..., torch.Tensor]:
        if rows <= SMALL_ROWS:
            return KERNELS[self.small]
        return KERNELS[self.mid if self.mid and rows <= MID_ROWS else self.large]

    def __str__(self) -> str:
        k = self.small if self.small == self.large else f"{self.small} <={SMALL_ROWS} rows, else {self.large}"
        if self.mid:
            k = f"{self.small} <={SMALL_ROWS} rows, {self.mid} <={MID_ROWS}, else {self.large}"
        return k + (", input-major" if self.transposed else "")


@functools.cache
def _cpu_name(caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """The CPU's model name and the size of its last cache level (read once per process):
    virtual machines often report a generic name ("Intel(R) Xeon(R) Processor") for CPUs whose
    caches, and so whose fastest kernels, differ."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    levels = {}
    for index in caches.glob("index*"):
        try:
            levels[int((index / "level").read_text())] = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
    if not levels:
        return name
    last = max(levels)
    return f"{name}, L{last} {levels[last]}"


def _plans_file() -> Path:
    from .local import cache_dir

    return cache_dir() / "kernel-plans.json"


#: Rounds of :func:`_best_times`: every candidate is timed once per round, the rounds interleaved.
TIMING_ROUNDS = 3


def _best_times(fns: dict, rounds: int = TIMING_ROUNDS) -> dict:
    """The best of ``rounds`` timings of each of ``fns`` (after one warm-up run each), the
    candidates taking turns in every round, so a drift of the machine's speed over the seconds
    this takes (virtual machines drift by 15 % and more) reaches all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def _stored(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``w`` ([out, in]) stored input-major (``transposed``) or output-major."""
    return w.t().contiguous().t() if transposed else w.contiguous()


def plan_for(weights: Sequence[torch.Tensor], native: bool = True) -> LinearPlan:
    """The fastest plan for projections by these [out, in] ``weights`` (one kind, one per layer).

    On CPUs, both storage orders and every kernel that works here are timed at
    :data:`PLAN_ROWS` rows over the first matrices (up to :data:`PLAN_BYTES`), as a decode
    step streams them, in interleaved rounds (:func:`_best_times`). The native kernels (fp32
    only) are timed too: at one row the matrix-vector product in both orders, as it serves
    batch-1 decode steps; at the batched count the few-row kernel, also in both orders. The
    order is the one whose best kernels are
    fastest over both row counts together, then each regime takes its fastest kernel in that
    order: ``small`` and ``large`` among the library kernels, ``mid`` (batched decode steps)
    the native kernel where it beats ``large``. Which kernel
    wins depends on the CPU (oneDNN was 2x faster than MKL on one AMD machine, slower on an
    Intel one), so nothing is assumed. A plan is stored per CPU model and last-level cache
    size, torch version, thread count, dtype and shape in ``$CAI_CACHE_DIR/kernel-plans.json``
    and reused, so reruns on a machine round identically; delete the file to time again.
    ``native=False`` leaves the native kernels out (``kernels="torch"``).
    Elsewhere (GPUs): ``F.linear``.
    """
    w0 = weights[0]
    if w0.device.type != "cpu":
        return LinearPlan()
    n, total = 0, 0
    while n < len(weights) and total < PLAN_BYTES:
        total += weights[n].numel() * weights[n].element_size()
        n += 1
    kernels = ["aten", "onednn"] if onednn_linear_ok() else ["aten"]
    # the native kernels (fp32): at one row the batch-1 step's matrix-vector product (which serves
    # batch-1 decode steps in either order), at the batched count the few-row kernel (either order)
    few = ["native"] if native and w0.dtype == torch.float32 and native_gemm_ok() else []
    key = (
        f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {w0.dtype} | "
        f"{tuple(w0.shape)} x {n} | {','.join(kernels + few)}" + (f" {source_digest()}" if few else "")
    )
    path = _plans_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: timed again and rewritten
        known = {}
    known = known if isinstance(known, dict) else {}
    stored = known.get(key)
    if (
        isinstance(stored, dict)
        and {stored.get("small"), stored.get("large")} <= set(kernels)
        and stored.get("mid", "") in ("", *few)
    ):
        return LinearPlan(bool(stored.get("transposed")), stored["small"], stored["large"], stored.get("mid", ""))
    g = torch.Generator().manual_seed(0)
    xs = {r: torch.randn(r, w0.shape[1], generator=g).to(w0.dtype) for r in PLAN_ROWS}
    stored_as = {t: [_stored(w, t) for w in weights[:n]] for t in (False, True)}

    def run(fn: Callable[..., torch.Tensor], x: torch.Tensor, ws: list[torch.Tensor]) -> Callable[[], object]:
        return lambda: [fn(x, w) for w in ws]

    candidates = {
        (t, k, r): run(KERNELS[k], x, stored_as[t]) for t in (False, True) for k in kernels + few for r, x in xs.items()
    }
    with torch.inference_mode():
        times: dict[tuple[bool, str, int], float] = _best_times(candidates)
    del stored_as, candidates

    def best(transposed: bool, r: int, among: Sequence[str] = ()) -> tuple[float, str]:
        return min((t, k) for (tr, k, rows), t in times.items() if tr == transposed and rows == r and k in among)

    every = kernels + few
    fastest = {r: min(best(t, r, every)[0] for t in (False, True)) for r in PLAN_ROWS}
    order = min((False, True), key=lambda t: sum(best(t, r, every)[0] / fastest[r] for r in PLAN_ROWS))
    large = best(order, PLAN_ROWS[-1], kernels)[1]
    mid = best(order, PLAN_ROWS[-1], every)[1]
    plan = LinearPlan(order, best(order, PLAN_ROWS[0], kernels)[1], large, "" if mid == large else mid)
    known[key] = asdict(plan)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the plan is simply timed again next time
        pass
    return plan


def _planned_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    return self._cai_plan.kernel(x.numel() // max(x.shape[-1], 1))(x, self.weight, self.bias)


def _apply(plan: LinearPlan, mods: Sequence[torch.nn.Linear], relayout: bool = True) -> None:
    """Run ``mods`` (inference, CPU) by ``plan``; ``relayout`` stores their weights as it says.

    The weight's storage changes in place (``.data``), so a weight tied to another module
    (an lm_head tied to the embedding) stays tied.
    """
    for m in mods:
        if relayout:
            m.weight.data = _stored(m.weight.data, plan.transposed)
        m._cai_plan = plan
        m.forward = types.MethodType(_planned_forward, m)


def plan_linears(model: torch.nn.Module, native: bool = True) -> dict[str, str]:
    """Plan every ``nn.Linear`` of a CPU ``model`` for inference, one plan per weight shape
    (:func:`plan_for`); returns ``{"OUTxIN": plan}``. Nothing is done on other devices or with
    ``$CAI_KERNELS=transformers``; ``native=False`` or ``$CAI_KERNELS=torch`` leave the native
    kernels out."""
    if os.environ.get("CAI_KERNELS") == "transformers" or next(model.parameters()).device.type != "cpu":
        return {}
    native = native and os.environ.get("CAI_KERNELS") != "torch"
    groups: dict[tuple, list[torch.nn.Linear]] = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            groups.setdefault((tuple(mod.weight.shape), mod.weight.dtype), []).append(mod)
    out = {}
    for (shape, _), mods in groups.items():
        plan = plan_for([m.weight.detach() for m in mods], native=native)
        _apply(plan, mods)
        out["x".join(map(str, shape))] = str(plan)
    return out


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
    a contiguous [in, out] tensor).
    """
    has_bias = [m.bias is not None for m in mods]
    if any(has_bias) and not all(has_bias):
        raise ValueError("mixed biases in fused projections")
    weight = _stored(torch.cat([m.weight.detach() for m in mods]), transposed)
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
    """The forward pass of a Llama-family ``*ForCausalLM`` with fused projections (see the module).

    ``plan``: time the kernels and storage orders for each kind of projection
    (:func:`plan_for`); without it (or off CPUs) every product is ``F.linear`` on output-major
    weights. The model's own modules run by the same plans, so its forward stays fast too.
    """

    KINDS = ("qkv", "o", "gate_up", "down", "lm_head")

    def __init__(self, model: torch.nn.Module, plan: bool = True, native: bool = True):
        cfg = model.config
        self.model = model
        self.inner = model.model
        attn0 = self.inner.layers[0].self_attn
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        head = model.lm_head
        #: CPU attention kernels are several times slower in bf16/fp16 than in fp32: lower-precision
        #: models on CPUs attend in fp32 (a cast of Q, K and V per layer).
        self.attn_dtype = torch.float32 if head.weight.device.type == "cpu" else head.weight.dtype
        layers = self.inner.layers
        mods = {
            "qkv": [[ly.self_attn.q_proj, ly.self_attn.k_proj, ly.self_attn.v_proj] for ly in layers],
            "o": [[ly.self_attn.o_proj] for ly in layers],
            "gate_up": [[ly.mlp.gate_proj, ly.mlp.up_proj] for ly in layers],
            "down": [[ly.mlp.down_proj] for ly in layers],
            "lm_head": [[head]],
        }
        self.plans: dict[str, LinearPlan] = {}
        fused: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        for kind, groups in mods.items():
            if plan:
                sample, total = [], 0
                for group in groups:  # the fused matrices of the first layers, to time
                    sample.append(torch.cat([m.weight.detach() for m in group]) if len(group) > 1 else group[0].weight)
                    total += sample[-1].numel() * sample[-1].element_size()
                    if total >= PLAN_BYTES:
                        break
                self.plans[kind] = plan_for(sample, native=native)
                del sample
            else:
                self.plans[kind] = LinearPlan()
            p = self.plans[kind]
            if kind == "lm_head":  # in place: a head tied to the embedding stays tied
                _apply(p, groups[0], relayout=True)
                fused[kind] = [(head.weight, head.bias)]
            else:
                fused[kind] = [_fuse(group, p.transposed) for group in groups]
                _apply(p, [m for group in groups for m in group], relayout=False)
        self.layers = [
            (ly.input_layernorm.weight, *qkv, *o, ly.post_attention_layernorm.weight, *gu, *down)
            for ly, qkv, o, gu, down in zip(layers, fused["qkv"], fused["o"], fused["gate_up"], fused["down"])
        ]
        self.head = fused["lm_head"][0]
        self.norms = (layers[0].input_layernorm.variance_epsilon, self.inner.norm.weight)
        self.inter = layers[0].mlp.gate_proj.weight.shape[0]
        #: The batch-1 decode step in one native call (``native.py``), and what serves it.
        self.native: NativeStep | None = None
        self.decode_b1 = "torch (kernels=torch)"
        if native and NativeStep.serves(model):
            dll, how = library()
            self.native = NativeStep(self, dll) if dll is not None else None
            self.decode_b1 = how if dll is not None else f"torch: {how}"
        elif native:
            self.decode_b1 = "torch (the native step serves float32 models on the CPU)"

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' RMSNorm: normalise in fp32, cast back, then scale (one fused op in fp32)."""
        eps = self.norms[0]
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)

    def _mask(self, attention_mask: torch.Tensor | None, B: int, S: int, past: int) -> torch.Tensor | None:
        """Additive [B, 1, S, past + S] mask (0 or -inf): causal, padded keys hidden. None when
        nothing is hidden (one new token), or when the pass is plainly causal (no past, no
        padding), which attention then runs with ``is_causal``. Built once per forward
        (attention would convert a boolean one in every layer).

        Every query may always see its own key, so a padding query (left padding) never has
        all keys hidden; nothing reads its output.
        """
        if S == 1 and attention_mask is None:
            return None
        if past == 0 and (attention_mask is None or bool(attention_mask[:, :S].all())):
            return None  # plain causal attention: ``is_causal`` skips the blocks above the diagonal
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
        if self.native is not None and B == S == 1 and not isinstance(logits_to_keep, torch.Tensor):
            logits = self.native(input_ids, position_ids, cache, attention_mask)
            if logits is not None:
                return logits
        past = cache.get_seq_length()
        mask = self._mask(attention_mask, B, S, past)
        x = self.inner.embed_tokens(input_ids)
        cos, sin = self.inner.rotary_emb(x, position_ids)
        nh, nkv, d, inter, norm = self.n_heads, self.n_kv, self.head_dim, self.inter, self._norm
        half, nqk = d // 2, (nh + nkv) * d
        # rotate_half(t) * sin == roll(t, half) * [-sin_1, sin_2]: one roll instead of two slices,
        # a negation and a concatenation per layer.
        cos, sin = cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        rows = B * S
        k_qkv, k_o, k_gu, k_down = (self.plans[k].kernel(rows) for k in self.KINDS[:4])
        at = self.attn_dtype
        # one new token per row: attention by the native kernel (fp32) where it is built
        attend = self.native.dll if self.native is not None and S == 1 and not torch.is_grad_enabled() else None
        for i, (n1, qkv_w, qkv_b, o_w, o_b, n2, gu_w, gu_b, down_w, down_b) in enumerate(self.layers):
            qkv = k_qkv(norm(x, n1), qkv_w, qkv_b)
            qk = qkv[..., :nqk].view(B, S, nh + nkv, d).transpose(1, 2)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)
            v = qkv[..., nqk:].view(B, S, nkv, d).transpose(1, 2)
            keys, values = cache.update(qk[:, nh:], v, i)
            o = None if attend is None else native_attend(attend, qk[:, :nh], keys, values, mask, self.scaling)
            if o is None:
                o = F.scaled_dot_product_attention(
                    qk[:, :nh].to(at),
                    keys.to(at),
                    values.to(at),
                    attn_mask=mask,
                    is_causal=mask is None and S > 1,
                    scale=self.scaling,
                    enable_gqa=nh != nkv,
                )
                o = o.to(x.dtype).transpose(1, 2)
            x = x + k_o(o.reshape(B, S, nh * d), o_w, o_b)
            gu = k_gu(norm(x, n2), gu_w, gu_b)
            x = x + k_down(F.silu(gu[..., :inter]) * gu[..., inter:], down_w, down_b)
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[:, logits_to_keep]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        x = norm(x, self.norms[1])
        return self.plans["lm_head"].kernel(x.numel() // x.shape[-1])(x, *self.head)
