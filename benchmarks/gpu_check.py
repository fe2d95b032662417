"""SFT, PM and a few RL steps of the real stages on a model built here, timed: the GPU check.

    PYTHONPATH=src python benchmarks/gpu_check.py                         # CUDA, bf16, ~0.5B params
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --tiny --steps 1

Nothing is downloaded. In a temporary folder the script trains a byte-level BPE tokenizer
(``tokenizers``) on the bundled prompt texts, wraps it as a ``PreTrainedTokenizerFast`` with
a ChatML-style chat template, and builds a Llama-architecture model with random weights from
a ``LlamaConfig``; it writes the stages' inputs in the project's formats (a finished
``cai revise`` folder, a finished ``cai label`` folder, RL prompt files) and runs
``train_sft.main``, ``train_pm.main`` and ``train_rl.main`` in this process for ``--steps``
steps each (SFT with ``--helpful-ratio 0``, so no generation backend is needed). Random
weights prove the path and time it; the losses mean nothing.

Per stage: seconds per step as the stage's manifest records it (training time / steps, so
the first step's warm-up is in it), the median of the steps after the first (timed by a
Trainer callback, the GPU synchronised at each step end), the stage's wall time (loading,
training, saving, held-out scoring) and peak memory: ``torch.cuda.max_memory_allocated``
(and reserved) since the stage started on CUDA, and the process's peak RSS so far. When
``import vllm`` works (and the device is CUDA), RL runs once more with TRL's vLLM generation
(``use_vllm``, ``vllm_mode="colocate"``); otherwise the result says why it was skipped.

Prints a table and writes ``benchmarks/results/gpu-check-<UTC time>.json`` (``--out``).
Exit status 1 if any stage failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's code, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; never wait for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Model and workload presets: the default fits easily and runs fast on one large GPU; --tiny is for CPUs.
PRESETS = {
    "default": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "layers": 20,
        "heads": 12,
        "kv_heads": 4,
        "vocab_size": 8192,
        "batch_size": 8,
        "seq_len": 512,
        "completion_length": 128,
        "num_generations": 4,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "layers": 2,
        "heads": 4,
        "kv_heads": 2,
        "vocab_size": 1024,
        "batch_size": 2,
        "seq_len": 64,
        "completion_length": 8,
        "num_generations": 2,
    },
}


# ----------------------------------------------------------------------------- model and tokenizer
def corpus_texts() -> list[str]:
    """The bundled prompt and comparison texts: the tokenizer's training text and the word pool."""
    data = ROOT / "src" / "constitutional_ai" / "data"
    texts: list[str] = []

    def strings(v) -> None:
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                strings(x)
        elif isinstance(v, list):
            for x in v:
                strings(x)

    for name in ("red_team.jsonl", "helpful.jsonl", "helpful_comparisons.jsonl"):
        for line in (data / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                strings(json.loads(line))
    return [t for t in texts if len(t) > 20]


def build_tokenizer(path: Path, vocab_size: int, texts: list[str]):
    """A byte-level BPE trained on ``texts`` (any text encodes), eos ``<|im_end|>``, pad ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None, bos_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_model(path: Path, p: dict, tokenizer, device: str) -> dict:
    """A random-weight Llama saved in bf16 (the stages load it in fp32); returns its description."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    n = sum(t.numel() for t in model.parameters())
    model.to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return {
        "architecture": "LlamaForCausalLM",
        "parameters": n,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": True,
        "weights": "random (seed 0)",
    }


def bf16_copy(src: Path, dst: Path) -> Path:
    """A bf16 copy of a checkpoint (vLLM reads the saved dtype; the stages save fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


# ----------------------------------------------------------------------------- inputs
class TextMaker:
    """Seeded word salad from the bundled texts' words, sized in tokens of the built tokenizer."""

    def __init__(self, texts: list[str], tokenizer, seed: int = 0):
        self.words = sorted({w for t in texts for w in re.findall(r"[A-Za-z][A-Za-z']*", t)})
        self.rng = random.Random(seed)
        sample = " ".join(self.rng.choice(self.words) for _ in range(2000))
        self.tokens_per_word = len(tokenizer(sample)["input_ids"]) / 2000

    def text(self, tokens: int) -> str:
        n = max(1, round(tokens / self.tokens_per_word))
        return " ".join(self.rng.choice(self.words) for _ in range(n)).capitalize() + "."


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_revise_folder(path: Path, rows: int, make: TextMaker, seq_len: int) -> Path:
    """A finished `cai revise` folder: ``sft.jsonl`` (prompt ~1/4, revision ~3/4 of seq_len) + manifest."""
    from constitutional_ai.store import StageDir

    sd = StageDir(path, "revise", {"gpu_check": True})
    with open(path / "sft.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            messages = [user(make.text(seq_len // 4)), assistant(make.text(seq_len * 3 // 4 - 16))]
            f.write(json.dumps({"messages": messages, "prompt_id": f"p{i}", "round": 1, "principle": "p"}) + "\n")
    sd.finish({"config": {"sft_rounds": "last"}, "files": {"sft": "sft.jsonl"}})
    sd.close()
    return path


def write_label_folder(path: Path, rows: int, make: TextMaker, seq_len: int) -> Path:
    """A finished `cai label` folder: ``preferences.jsonl`` pairs with soft labels (each side ~seq_len)."""
    from constitutional_ai.store import StageDir

    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    with open(path / "preferences.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            prompt = [user(make.text(seq_len // 4))]
            row = {
                "prompt": prompt,
                "chosen": [assistant(make.text(seq_len * 3 // 4 - 16))],
                "rejected": [assistant(make.text(seq_len * 3 // 4 - 16))],
                "p_chosen": round(rng.uniform(0.55, 0.95), 3),
                "hard": False,
                "pair_id": f"ai{i}",
                "principle": "p",
            }
            f.write(json.dumps(row) + "\n")
    sd = StageDir(path, "label", {"gpu_check": True})
    sd.finish({})
    sd.close()
    return path


def write_prompt_files(folder: Path, n: int, make: TextMaker, tokens: int) -> tuple[Path, Path]:
    """RL prompt files (JSONL ``id``/``prompt``): red-team and helpful, ``n`` each."""
    red, helpful = folder / "red_team.jsonl", folder / "helpful.jsonl"
    for path, tag in ((red, "r"), (helpful, "h")):
        path.write_text(
            "".join(json.dumps({"id": f"{tag}{i}", "prompt": make.text(tokens)}) + "\n" for i in range(n)),
            encoding="utf-8",
        )
    return red, helpful


# ----------------------------------------------------------------------------- measuring
class StepTimer:
    """Seconds of each optimizer step (from the previous step's end; the first from train start)."""

    def __init__(self, cuda: bool):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer.steps, timer.last = [], time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if timer.cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                timer.steps.append(now - timer.last)
                timer.last = now

        self.cuda, self.steps, self.last = cuda, [], 0.0
        self.callback = Callback()

    def install(self) -> None:
        """Every Trainer built from now on gets the callback (the stages build their own trainers)."""
        import transformers.trainer

        transformers.trainer.DEFAULT_CALLBACKS.append(self.callback)


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def gib(n: int) -> float:
    return round(n / 2**30, 3)


def run_stage(name: str, fn, timer: StepTimer, cuda: bool) -> dict:
    """Run one stage; its timings and peak memory, or its error."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer.steps = []
    print(f"[gpu-check] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res: dict = {"stage": name}
    try:
        res.update(fn())
        res["ok"] = True
    except Exception as e:  # recorded, so the other stages still run and the JSON says what broke
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-4000:]
        print(res["traceback"], file=sys.stderr)
    res["wall_seconds"] = round(time.perf_counter() - t0, 2)
    res["step_seconds"] = [round(s, 4) for s in timer.steps]
    res["steady_seconds_per_step"] = round(statistics.median(timer.steps[1:]), 4) if len(timer.steps) > 1 else None
    if cuda:
        torch.cuda.synchronize()
        res["peak_gpu_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
        res["peak_gpu_reserved_gib"] = gib(torch.cuda.max_memory_reserved())
    else:
        res["peak_gpu_allocated_gib"] = res["peak_gpu_reserved_gib"] = None
    res["peak_rss_gib"] = peak_rss_gib()
    gc.collect()
    return res


def manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_status(device: str, disabled: bool) -> tuple[bool, str | None]:
    """Whether the vLLM RL run can be tried, and why not."""
    if disabled:
        return False, "--no-vllm given"
    if device != "cuda":
        return False, "vLLM colocate generation needs a CUDA device"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # absent, or present but broken (CUDA mismatch ...): both are reasons
        return False, f"vllm is not importable here ({type(e).__name__}: {e})"
    return True, None


# ----------------------------------------------------------------------------- main
def missing_requirements() -> list[str]:
    """What this environment lacks that the stages need, found before any work is done."""
    import dataclasses

    import transformers

    out = []
    if "activation_checkpointing" not in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}:
        out.append(
            f"transformers {transformers.__version__} has no TrainingArguments.activation_checkpointing, which "
            "the training stages set: install transformers 5.23 or later "
            "(benchmarks/gpu_check_wheels.sh --with transformers)"
        )
    for mod in ("trl", "datasets"):
        try:
            __import__(mod)
        except ImportError as e:
            out.append(f"{mod} is not importable ({e}): see benchmarks/gpu_check_wheels.sh")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where to train (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="tiny model and workload (CPU checks)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per stage (default 10)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for cuda only")
    for k in PRESETS["default"]:
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {PRESETS['default'][k]}")
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM RL run even where vLLM is installed")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/gpu-check-<UTC>.json)")
    ap.add_argument("--keep", default=None, help="keep the work folder here (default: a temporary one, deleted)")
    args = ap.parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "default"]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.bf16 is None:
        args.bf16 = args.device == "cuda"
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.batch_size % args.num_generations:
        ap.error("--batch-size must be a multiple of --num-generations (RLOO groups completions per prompt)")
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        ap.error(f"--keep {args.keep}: the folder must be empty or absent (finished stages would not run again)")
    for problem in missing_requirements():
        ap.error(problem)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False); use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    cuda = args.device == "cuda"
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    default_out = ROOT / "benchmarks" / "results" / f"gpu-check-{started:%Y%m%dT%H%M%SZ}.json"
    out_path = Path(args.out) if args.out else default_out

    from constitutional_ai.stages import train_pm, train_rl, train_sft

    timer = StepTimer(cuda)
    timer.install()
    common = {
        "bf16": args.bf16,
        "learning_rate": args.learning_rate,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": not cuda,
    }
    result: dict = {
        "script": "benchmarks/gpu_check.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "started_utc": started.isoformat(timespec="seconds"),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_memory_gib": gib(torch.cuda.get_device_properties(0).total_memory) if cuda else None,
            "cuda": torch.version.cuda,
        },
        "versions": {
            d: version(d) for d in ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers")
        }
        | {"vllm": version("vllm")},
        "settings": {
            "steps": args.steps,
            "bf16": args.bf16,
            "per_device_train_batch_size": args.batch_size,
            "seq_len_target": args.seq_len,
            "rl_max_completion_length": args.completion_length,
            "rl_num_generations": args.num_generations,
            "learning_rate": args.learning_rate,
        },
        "stages": [],
    }
    try:
        t0 = time.perf_counter()
        texts = corpus_texts()
        tok = build_tokenizer(work / "base", args.vocab_size, texts)
        result["model"] = build_model(work / "base", vars(args), tok, args.device)
        make = TextMaker(texts, tok)
        rows = args.steps * args.batch_size
        rev = write_revise_folder(work / "revise", rows, make, args.seq_len)
        labels = write_label_folder(work / "label", math.ceil(rows / 0.9) + 1, make, args.seq_len)
        red, helpful = write_prompt_files(work, max(8, rows), make, max(8, args.seq_len // 8))
        example = [user(make.text(args.seq_len // 4)), assistant(make.text(args.seq_len * 3 // 4 - 16))]
        rendered = tok.apply_chat_template(example, tokenize=True, return_dict=True)
        result["settings"]["example_tokens"] = len(rendered["input_ids"])
        result["setup_seconds"] = round(time.perf_counter() - t0, 2)
        base, sft_out, pm_out = str(work / "base"), str(work / "sft"), str(work / "pm")
        max_length = 2 * args.seq_len + 64  # no example is cut or dropped

        def sft() -> dict:
            cfg = train_sft.TrainSFTConfig(
                data=[str(rev)], model=base, out=sft_out, helpful_ratio=0.0, max_length=max_length, **common
            )
            train_sft.main(cfg)
            m = manifest(sft_out)
            t = m["train"]
            return {
                "steps": t["steps"],
                "seconds_per_step": t["seconds_per_step"],
                "first_loss": t["first_loss"],
                "last_loss": t["last_loss"],
                "examples": m["counts"]["trained_examples"],
            }

        def pm() -> dict:
            cfg = train_pm.TrainPMConfig(
                labels=[str(labels)], model=base, out=pm_out, max_length=max_length, eval_fraction=0.1, **common
            )
            train_pm.main(cfg)
            m = manifest(pm_out)
            return {
                "steps": m["metrics"]["train_steps"],
                "seconds_per_step": m["metrics"]["seconds_per_step"],
                "train_pairs": m["counts"]["train"],
                "heldout_pairs": m["counts"]["heldout"],
                "heldout_accuracy": m["metrics"].get("accuracy"),
            }

        def rl(out: str, policy: str, **extra) -> dict:
            cfg = train_rl.TrainRLConfig(
                policy=policy,
                pm=pm_out,
                out=out,
                prompts_red_team=str(red),
                prompts_helpful=str(helpful),
                num_generations=args.num_generations,
                max_completion_length=args.completion_length,
                **common,
                **extra,
            )
            train_rl.main(cfg)
            m = manifest(out)
            return {
                "steps": m["counts"]["steps"],
                "seconds_per_step": m["metrics"]["seconds_per_step"],
                "completions_scored": m["counts"]["completions_scored"],
                "first_reward": m["metrics"]["first"].get("reward"),
                "last_reward": m["metrics"]["last"].get("reward"),
                "generation": m["trainer"].get("generation", {"use_vllm": bool(extra.get("use_vllm"))}),
            }

        result["stages"].append(run_stage("train-sft", sft, timer, cuda))
        result["stages"].append(run_stage("train-pm", pm, timer, cuda))
        policy = sft_out if result["stages"][0]["ok"] else base
        if result["stages"][1]["ok"]:
            result["stages"].append(run_stage("train-rl", lambda: rl(str(work / "rl"), policy), timer, cuda))
        else:
            result["stages"].append({"stage": "train-rl", "ok": False, "error": "not run: train-pm failed"})
        can, why = vllm_status(args.device, args.no_vllm)
        if can and not result["stages"][1]["ok"]:
            can, why = False, "train-pm failed"
        if can:
            vpolicy = str(bf16_copy(Path(policy), work / "policy-bf16"))
            extra = {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization,
            }
            r = run_stage("train-rl-vllm", lambda: rl(str(work / "rl-vllm"), vpolicy, **extra), timer, cuda)
            result["vllm"] = {"status": "ran" if r["ok"] else "failed", **r, "policy": "bf16 copy of the RL policy"}
        else:
            result["vllm"] = {"status": "skipped", "reason": why}
    finally:
        result["total_seconds"] = round(time.perf_counter() - t_start, 1)
        result["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    print(f"\nresults: {out_path}")
    failed = [s["stage"] for s in result["stages"] if not s.get("ok")]
    if result["vllm"]["status"] == "failed":
        failed.append("train-rl-vllm")
    if failed:
        print(f"FAILED: {', '.join(failed)} (errors in the JSON)", file=sys.stderr)
    return 1 if failed else 0


def print_table(result: dict) -> None:
    h, m, v = result["host"], result.get("model", {}), result["versions"]
    print(
        f"\n{h['gpu'] or 'CPU'} | torch {v['torch']} | transformers {v['transformers']} | trl {v['trl']}"
        f" | bf16 {result['settings']['bf16']}"
        f" | {m.get('parameters', 0) / 1e6:.3g}M params | ~{result['settings'].get('example_tokens')} tokens/example\n"
    )
    print("| stage | steps | s/step (manifest) | s/step after the 1st | wall s | peak GPU alloc. GiB | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    stages = list(result["stages"])
    if result["vllm"]["status"] != "skipped":
        stages.append(result["vllm"])
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    for s in stages:
        if not s.get("ok"):
            print(f"| {s['stage']} | failed: {s.get('error', '')[:80]} | | | | | |")
            continue
        print(
            f"| {s['stage']} | {s['steps']} | {s['seconds_per_step']} | {fmt(s['steady_seconds_per_step'])} "
            f"| {s['wall_seconds']} | {fmt(s['peak_gpu_allocated_gib'])} | {s['peak_rss_gib']} |"
        )
    if result["vllm"]["status"] == "skipped":
        print(f"\nvLLM RL run skipped: {result['vllm']['reason']}")
    print(f"total {result['total_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
