"""The batch-1 decode step in one native call (``decode_step.c``), for :class:`~.fast.FastForward`.

At batch 1 a decode step of a small model is bound by reading its weights once, but through
torch it is also ~25 small operator calls per layer outside the matrix products, each a few
microseconds plus a wake-up of the thread pool; on the Intel CPUs measured
(``benchmarks/bench_bound.py``) they added 31-63 % to the products. ``decode_step.c``
runs the whole step, products included, in one OpenMP parallel region.

The C file ships with the package and is compiled on first use with the system's C compiler
(``$CC``, else ``cc``/``gcc``/``clang``; ``-O3 -march=native -fopenmp``) into the user cache,
keyed by the source, the compiler and the CPU, so it is built once per machine. Where no
compiler works, or its check against the torch products fails, the step runs through torch
as before and the reason is in the backend's ``info()["kernels"]["decode_b1"]``.

It serves only what it computes exactly like the torch path (up to the order of sums): fp32
weights on the CPU, one row, one new token, no mask, a :class:`~.local.SlabLayer` cache with
room left. Everything else runs through torch. Batch-1 steps therefore round differently from
batched ones (as the small-row kernels of the plans already do); seeds are per record either way.

The same library also serves two pieces of the *batched* decode step (fp32, CPU), each only
where it agrees with torch in :func:`_products_agree`:

* :func:`gemm`, a few-row matrix product for output- or input-major weights (:data:`~.fast.MID_ROWS`
  rows or fewer): the rows are packed once per call and every weight tile is read once for
  all of them, where the library GEMMs, tuned for large shapes, re-read weights or pack them
  per call. :func:`~.fast.plan_for` times it against the library kernels and takes it only
  where it is faster on this CPU.
* :func:`attend`, attention of one new token per row over the cache (grouped heads, the
  padding mask), parallel over rows x heads, instead of SDPA's general path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode_step.c")


@functools.cache
def source_digest() -> str:
    """A short digest of ``decode_step.c``: kernel plans timed with other native code are timed again."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
#: Rotary kinds whose cos/sin of a position are fixed (the others rescale with the position).
STATIC_ROPE = ("default", "linear", "llama3")


class _Mat(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("b", ctypes.c_void_p),
        ("out", ctypes.c_long),
        ("in_", ctypes.c_long),
        ("transposed", ctypes.c_int),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("n1", ctypes.c_void_p),
        ("n2", ctypes.c_void_p),
        ("qkv", _Mat),
        ("o", _Mat),
        ("gu", _Mat),
        ("down", _Mat),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_layers", ctypes.c_int),
        ("hidden", ctypes.c_int),
        ("n_heads", ctypes.c_int),
        ("n_kv", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("inter", ctypes.c_int),
        ("capacity", ctypes.c_int),
        ("eps", ctypes.c_float),
        ("scaling", ctypes.c_float),
        ("layers", ctypes.POINTER(_Layer)),
        ("norm", ctypes.c_void_p),
        ("head", _Mat),
    ]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _mat(w: torch.Tensor, b: torch.Tensor | None) -> _Mat:
    """``w`` [out, in] as stored: output-major (contiguous) or input-major (a transposed view of
    a contiguous [in, out] tensor)."""
    out, inp = w.shape
    transposed = not w.is_contiguous()
    if transposed and not w.t().is_contiguous():
        raise ValueError("weight neither output- nor input-major")
    return _Mat(w.data_ptr(), _ptr(b), out, inp, int(transposed))


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def library() -> tuple[ctypes.CDLL | None, str]:
    """The compiled step (built once per machine into the user cache) and how it was found,
    or ``(None, why not)``."""
    from .fast import _cpu_name
    from .local import cache_dir

    if os.environ.get("CAI_NATIVE", "1") == "0":
        return None, "off ($CAI_NATIVE=0)"
    cc = _compiler()
    if cc is None:
        return None, "off (no C compiler: set $CC)"
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, cc.encode(), " ".join(FLAGS).encode(), _cpu_name().encode()]))
    lib = cache_dir() / "native" / f"decode_step-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f".{lib.name}.{os.getpid()}")
        try:
            r = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True)
        except OSError as e:
            return None, f"off (compiling with {cc} failed: {e})"
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            return None, f"off (compiling with {cc} failed: {last})"
        os.replace(tmp, lib)
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"off (cannot load {lib.name}: {e})"
    dll.cai_decode_step.restype = ctypes.c_int
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    dll.cai_decode_step.argtypes = [ctypes.POINTER(_Model), i32, ptr, ptr, ptr, ptr, ptr, i32]
    dll.cai_scratch_floats.restype = ctypes.c_long
    dll.cai_scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int]
    dll.cai_matvec.restype = None
    dll.cai_matvec.argtypes = [ctypes.POINTER(_Mat), ptr, ptr, ptr, i32]
    dll.cai_gemm.restype = ctypes.c_int
    dll.cai_gemm.argtypes = [ctypes.POINTER(_Mat), ptr, ctypes.c_long, ptr, ptr, i32]
    lg = ctypes.c_long
    dll.cai_attend.restype = None
    dll.cai_attend.argtypes = [ptr, lg, lg, ptr, ptr, lg, lg, lg, ptr, lg, ptr, i32, i32, i32, lg, i32, ctypes.c_float]
    dll.cai_attend.argtypes += [ptr, i32]
    dll.cai_gemm_scratch_floats.restype = ctypes.c_long
    dll.cai_gemm_scratch_floats.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]
    if not _products_agree(dll):
        return None, "off (its products disagree with torch's on this machine)"
    return dll, f"native ({Path(cc).name} {' '.join(FLAGS[:3])})"


def matvec(dll: ctypes.CDLL, w: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``W x + b`` for one vector ``x`` by the native kernel (checks and benchmarks)."""
    mat = _mat(w, b)
    y = torch.empty(w.shape[0])
    threads = torch.get_num_threads()
    partial = torch.empty(threads * w.shape[0])
    dll.cai_matvec(ctypes.byref(mat), x.data_ptr(), y.data_ptr(), partial.data_ptr(), threads)
    return y


_scratch = threading.local()


def _scratch_buffer(floats: int) -> torch.Tensor:
    """A float32 buffer of at least ``floats``, kept per thread and reused: no allocation and no
    page faults per call on a decode step's hot path."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < floats:
        _scratch.buf = buf = torch.empty(floats)
    return buf


def gemm_scratch_floats(rows: int, inp: int, out: int) -> int:
    """``cai_gemm_scratch_floats`` without a native call per product (checked against it once)."""
    return -(-rows // 32) * 32 * inp + (out + 12) * 32


def gemm(dll: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor | None:
    """``x W^T + b`` by the native few-row kernel (``cai_gemm``) for fp32 ``x`` [..., in] and
    ``w`` [out, in] stored output-major (contiguous) or input-major (a transposed view of a
    contiguous [in, out] tensor); None where it does not serve (the caller uses torch's)."""
    if not (w.is_contiguous() or w.t().is_contiguous()) or w.device.type != "cpu":
        return None
    if x.dtype != torch.float32 or w.dtype != torch.float32:
        return None
    if b is not None and not (b.is_contiguous() and b.dtype == torch.float32):
        return None
    out, inp = w.shape
    x2 = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, inp).contiguous()
    rows = x2.shape[0]
    buf = _scratch_buffer(gemm_scratch_floats(rows, inp, out))
    y = torch.empty(*x.shape[:-1], out)
    mat = _mat(w, b)
    if dll.cai_gemm(ctypes.byref(mat), x2.data_ptr(), rows, y.data_ptr(), buf.data_ptr(), torch.get_num_threads()):
        return None
    return y


def attend(
    dll: ctypes.CDLL, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor | None:
    """Attention of one new token per row (``q`` [B, nh, 1, d]) over its cache (``k``, ``v``
    [B, nkv, L, d], e.g. views of a :class:`~.local.SlabLayer`), with an additive ``mask``
    [B, 1, 1, L] or None, by ``cai_attend``: [B, nh * d]. None where it does not serve."""
    B, nh, S, d = q.shape
    L = k.shape[2]
    if S != 1 or q.dtype != torch.float32 or k.dtype != torch.float32 or v.dtype != torch.float32:
        return None
    if q.stride(-1) != 1 or k.stride(-1) != 1 or k.stride() != v.stride() or k.shape != v.shape or nh % k.shape[1]:
        return None
    if mask is not None and (mask.dtype != torch.float32 or mask.shape != (B, 1, 1, L) or mask.stride(-1) != 1):
        return None
    out = torch.empty(B, nh * d)
    scores = _scratch_buffer(B * nh * L)
    dll.cai_attend(
        q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
        None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0),
        out.data_ptr(), B, nh, k.shape[1], L, d, scaling, scores.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _products_agree(dll: ctypes.CDLL) -> bool:
    g = torch.Generator().manual_seed(0)
    w, x, b = torch.randn(67, 45, generator=g), torch.randn(45, generator=g), torch.randn(67, generator=g)
    want = torch.nn.functional.linear(x, w, b)
    if not all(torch.allclose(matvec(dll, stored, x, b), want, atol=1e-4) for stored in (w, w.t().contiguous().t())):
        return False
    if any(
        dll.cai_gemm_scratch_floats(r, i, o) != gemm_scratch_floats(r, i, o) for r, i, o in ((1, 3, 5), (40, 64, 7))
    ):
        return False
    # the few-row kernel: a partial row block and tile, inputs past a block of 128 and not a multiple of 16
    # (and input-major: a partial 8-row tile and 48-output panel)
    w, xs = torch.randn(29, 150, generator=g), torch.randn(37, 150, generator=g)
    for rows, bias in ((37, torch.randn(29, generator=g)), (5, None)):
        for stored in (w, w.t().contiguous().t()):
            got = gemm(dll, xs[:rows], stored, bias)
            if got is None or not torch.allclose(got, torch.nn.functional.linear(xs[:rows], w, bias), atol=1e-4):
                return False
    # attention of one query per row, grouped heads, a padded key hidden
    q, k, v = (
        torch.randn(3, 4, 1, 8, generator=g),
        torch.randn(3, 2, 5, 8, generator=g),
        torch.randn(3, 2, 5, 8, generator=g),
    )
    mask = torch.zeros(3, 1, 1, 5)
    mask[1, ..., 0] = float("-inf")
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    got = attend(dll, q, k, v, mask, 0.3)
    return got is not None and torch.allclose(got, want.transpose(1, 2).reshape(3, 32), atol=1e-5)


class NativeStep:
    """The batch-1 decode step of a :class:`~.fast.FastForward` through ``decode_step.c``.

    ``__call__`` returns the logits [1, 1, vocab], or None when the step is not one it serves
    (the caller runs the torch path then).
    """

    def __init__(self, fast, dll: ctypes.CDLL):
        model = fast.model
        self.fast, self.dll = fast, dll
        cfg = model.config
        self.embed = fast.inner.embed_tokens.weight
        self._layers = (_Layer * len(fast.layers))()
        for slot, (n1, qkv_w, qkv_b, o_w, o_b, n2, gu_w, gu_b, down_w, down_b) in zip(self._layers, fast.layers):
            slot.n1, slot.n2 = n1.data_ptr(), n2.data_ptr()
            slot.qkv, slot.o = _mat(qkv_w, qkv_b), _mat(o_w, o_b)
            slot.gu, slot.down = _mat(gu_w, gu_b), _mat(down_w, down_b)
        self.model = _Model(
            n_layers=len(fast.layers),
            hidden=cfg.hidden_size,
            n_heads=fast.n_heads,
            n_kv=fast.n_kv,
            head_dim=fast.head_dim,
            inter=fast.inter,
            capacity=0,
            eps=fast.norms[0],
            scaling=fast.scaling,
            layers=self._layers,
            norm=fast.norms[1].data_ptr(),
            head=_mat(*fast.head),
        )
        self.vocab = fast.head[0].shape[0]
        self._caches: tuple[int, ...] = ()
        self._scratch = torch.empty(0)
        self._rope = (torch.empty(0, fast.head_dim), torch.empty(0, fast.head_dim))

    @staticmethod
    def serves(model: torch.nn.Module) -> bool:
        """Whether the model's weights are ones this step computes with (fp32, on the CPU)."""
        w = model.lm_head.weight
        return w.device.type == "cpu" and w.dtype == torch.float32

    def _rotary(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [head_dim] of ``position`` by transformers' own rotary module: from a table
        of positions for the static kinds (a position's values do not depend on which positions
        are computed with it), per step for the dynamic ones (they rescale by position)."""
        rotary = self.fast.inner.rotary_emb
        if getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
            c, s = rotary(torch.empty(1, 1, self.fast.head_dim), torch.tensor([[position]]))
            return c[0, 0].float().contiguous(), s[0, 0].float().contiguous()
        cos, sin = self._rope
        if position >= cos.shape[0]:
            n = max(2 * cos.shape[0], position + 1, 256)
            c, s = rotary(torch.empty(1, 1, self.fast.head_dim), torch.arange(n).unsqueeze(0))
            self._rope = cos, sin = c[0].float().contiguous(), s[0].float().contiguous()
        return cos[position], sin[position]

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, mask) -> torch.Tensor | None:
        from .local import SlabLayer

        if input_ids.shape != (1, 1) or mask is not None or torch.is_grad_enabled():
            return None
        layers = getattr(cache, "layers", None)
        if not layers or len(layers) != len(self._layers):
            return None
        first = layers[0]
        if not isinstance(first, SlabLayer) or not first.is_initialized or first.length >= first.capacity:
            return None
        pos, capacity = first.length, first.capacity
        ptrs = []
        for ly in layers:
            if not isinstance(ly, SlabLayer) or ly.length != pos or ly.capacity != capacity:
                return None
            k, v = ly._k, ly._v
            if k.shape[0] != 1 or k.dtype != torch.float32 or not (k.is_contiguous() and v.is_contiguous()):
                return None
            ptrs.append((k.data_ptr(), v.data_ptr()))
        threads = torch.get_num_threads()
        key = (capacity, threads, *(p for kv in ptrs for p in kv))
        if key != self._caches:  # a new cache (or thread count): its buffers, and scratch to match
            for slot, (k, v) in zip(self._layers, ptrs):
                slot.k, slot.v = k, v
            self.model.capacity = capacity
            self._scratch = torch.empty(self.dll.cai_scratch_floats(ctypes.byref(self.model), threads))
            self._caches = key
        cos, sin = self._rotary(int(position_ids[0, 0]))
        x = torch.empty(self.embed.shape[1]).copy_(self.embed[int(input_ids[0, 0])])  # the step overwrites it
        logits = torch.empty(1, 1, self.vocab)
        rc = self.dll.cai_decode_step(
            ctypes.byref(self.model),
            pos,
            cos.data_ptr(),
            sin.data_ptr(),
            x.data_ptr(),
            logits.data_ptr(),
            self._scratch.data_ptr(),
            threads,
        )
        if rc != 0:
            return None
        for ly in layers:
            ly.length = pos + 1
            ly.keys, ly.values = ly._k[:, :, : pos + 1], ly._v[:, :, : pos + 1]
        return logits
