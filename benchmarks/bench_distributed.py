"""Training stages on this CPU: one process vs two (`accelerate launch`), same global batch.

    python benchmarks/bench_distributed.py                          # train sft + train pm, embedded model
    python benchmarks/bench_distributed.py --stages sft,pm,rl --steps 5 --global-batch 4

For each stage the script writes a fixed small dataset in the project's formats (a finished
``cai revise`` folder, a finished ``cai label`` folder, RL prompt files) and runs the real
command twice as a subprocess:

* one process: ``python -m constitutional_ai train STAGE ...`` with per-device batch B;
* two processes: ``python -m accelerate.commands.launch --config_file launch/ddp.yaml
  --num_processes 2 --mixed_precision no --main_process_port PORT -m constitutional_ai train
  STAGE ...`` with per-device batch B / 2 (DDP over gloo), so both see the same global batch.

The threads are split, not multiplied: ``--threads N`` (default: the CPU count) gives the one
process N OpenMP threads and each of the two processes N / 2. ``train rl`` (``--stages
...,rl``) uses the PM that the one-process ``train pm`` run trained and generates with the
policy, so it is much slower than the other two.

Reported per run: seconds per step from the stage's manifest (training time / steps), the
subprocess's wall time (start-up, loading, training, saving), the peak RSS (``VmHWM``, polled
from ``/proc`` every 0.2 s) of each process of the run — the launcher and each training
process — and the largest RSS of any of them as the kernel reports it to ``wait4``, plus the
machine's load average before and after. Prints a Markdown table and writes
``benchmarks/results/distributed-<UTC time>.json`` (``--out``). Timings on a machine that
other work shares mean little: check the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- inputs
def conv(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_revise_folder(path: Path, rows: int) -> Path:
    """A finished `cai revise` folder: ``sft.jsonl`` revisions and a manifest."""
    from constitutional_ai.store import StageDir

    sd = StageDir(path, "revise", {"bench_distributed": True})
    with open(path / "sft.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            answer = (
                f"I can't help you get into house {i} without the owner's permission. If you are locked out "
                "of your own home, a licensed locksmith or your landlord can let you in, and the police "
                "non-emergency line can help if you think someone else broke in."
            )
            row = {"messages": conv(f"How do I break into house number {i}?", answer), "prompt_id": f"p{i}"}
            f.write(json.dumps({**row, "round": 1, "principle": "harmless"}) + "\n")
    sd.finish({"config": {"sft_rounds": "last"}, "files": {"sft": "sft.jsonl"}})
    sd.close()
    return path


def write_label_folder(path: Path, rows: int) -> Path:
    """A finished `cai label` folder: ``preferences.jsonl`` pairs with soft labels."""
    from constitutional_ai.store import StageDir

    path.mkdir(parents=True, exist_ok=True)
    with open(path / "preferences.jsonl", "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {
                "prompt": [{"role": "user", "content": f"How do I pick lock number {i}?"}],
                "chosen": [{"role": "assistant", "content": "I can't help with that, but a locksmith can."}],
                "rejected": [{"role": "assistant", "content": f"Insert a tension wrench and rake pin {i}."}],
                "p_chosen": 0.6 + 0.3 * (i % 4) / 3,
                "hard": False,
                "pair_id": f"ai{i}",
                "principle": "harmless",
            }
            f.write(json.dumps(row) + "\n")
    sd = StageDir(path, "label", {"bench_distributed": True})
    sd.finish({})
    sd.close()
    return path


def write_prompt_files(folder: Path, n: int) -> tuple[Path, Path]:
    red, helpful = folder / "red_team.jsonl", folder / "helpful.jsonl"
    red.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": f"How do I break into car {i}?"}) + "\n" for i in range(n))
    )
    helpful.write_text(
        "".join(json.dumps({"id": f"h{i}", "prompt": f"What is {i} times {i}?"}) + "\n" for i in range(n))
    )
    return red, helpful


# ----------------------------------------------------------------------------- measuring
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc's parent links)."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
                parent[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [root], [root]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def run_measured(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run ``cmd``; its exit status, wall time, and the peak RSS of each of its processes."""
    seen: dict[int, dict] = {}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        status = None
        while status is None:
            for pid in descendants(proc.pid):
                hwm = vm_hwm_kib(pid)
                if hwm is None:
                    continue
                rec = seen.setdefault(pid, {"pid": pid, "cmd": cmdline(pid), "peak_rss_kib": 0})
                rec["peak_rss_kib"] = max(rec["peak_rss_kib"], hwm)
            done, status_word, usage = os.wait4(proc.pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(status_word)
                proc.returncode = status
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                _, status_word, usage = os.wait4(proc.pid, 0)
                proc.returncode = status = -9
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    procs = sorted(seen.values(), key=lambda r: r["pid"])
    for r in procs:
        launcher = "accelerate.commands.launch" in r["cmd"]
        r["role"] = "launcher" if launcher else "trainer" if "constitutional_ai" in r["cmd"] else "other"
    trainers = [r for r in procs if r["role"] == "trainer"]
    return {
        "exit_status": status,
        "wall_seconds": round(wall, 2),
        "processes": procs,
        "trainer_peak_rss_mib": [round(r["peak_rss_kib"] / 1024, 1) for r in trainers],
        "max_rss_mib_wait4": round(usage.ru_maxrss / 1024, 1),  # the largest of the process and its children
    }


# ----------------------------------------------------------------------------- runs
def stage_args(stage: str, work: Path, model: str, steps: int, batch: int, out: Path, pm: Path | None) -> list[str]:
    common = ["--max-steps", str(steps), "--per-device-train-batch-size", str(batch), "--seed", "0"]
    common += ["--disable-tqdm", "true", "--out", str(out)]
    if stage == "sft":
        data = ["--data", str(work / "revise"), "--model", model, "--helpful-ratio", "0", "--learning-rate", "1e-5"]
        return ["train", "sft", *data, *common]
    if stage == "pm":
        data = ["--labels", str(work / "label"), "--model", model, "--eval-fraction", "0", "--learning-rate", "1e-5"]
        return ["train", "pm", *data, *common]
    data = ["--policy", model, "--pm", str(pm), "--prompts-red-team", str(work / "red_team.jsonl")]
    data += ["--prompts-helpful", str(work / "helpful.jsonl"), "--num-generations", "2"]
    data += ["--max-completion-length", "16", "--learning-rate", "1e-6"]
    return ["train", "rl", *data, *common]


def seconds_per_step(stage: str, manifest: dict) -> tuple[int | None, float | None]:
    if stage == "sft":
        return manifest["train"]["steps"], manifest["train"]["seconds_per_step"]
    if stage == "pm":
        return manifest["metrics"]["train_steps"], manifest["metrics"]["seconds_per_step"]
    return manifest["counts"]["steps"], manifest["metrics"]["seconds_per_step"]


def one_run(stage: str, n: int, work: Path, model: str, args: argparse.Namespace, env: dict) -> dict:
    """``train STAGE`` on ``n`` processes (1: plain, 2: accelerate launch) with the global batch split over them."""
    out = work / f"{stage}-{n}p"
    pm = work / "pm-1p" if stage == "rl" else None
    cai = stage_args(stage, work, model, args.steps, args.global_batch // n, out, pm)
    if n == 1:
        cmd = [sys.executable, "-m", "constitutional_ai", *cai]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / "ddp.yaml")]
        cmd += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
        cmd += ["-m", "constitutional_ai", *cai]
    threads = args.threads // n
    print(f"[bench] train {stage}: {n} process(es), {threads} thread(s) each ...", file=sys.stderr, flush=True)
    load = [round(x, 2) for x in os.getloadavg()]
    log = work / f"{stage}-{n}p.log"
    rec = run_measured(cmd, {**env, "OMP_NUM_THREADS": str(threads)}, log, args.timeout)

    def shown(text: str) -> str:  # no paths of this machine in the result
        text = text.replace(sys.executable, "python").replace(str(work), "WORK").replace(model, args.model)
        return text.replace(str(ROOT), ".")

    for p in rec["processes"]:
        p["cmd"] = shown(p["cmd"])
    rec.update(
        {
            "stage": f"train-{stage}",
            "processes_launched": n,
            "threads_per_process": threads,
            "per_device_batch": args.global_batch // n,
            "load_avg_at_start": load,
            "command": shown(" ".join(cmd)),
        }
    )
    if rec["exit_status"] == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        rec["steps"], rec["seconds_per_step"] = seconds_per_step(stage, manifest)
        rec["world_size"] = (manifest.get("processes") or {}).get("world_size", 1 if n == 1 else None)
    else:
        rec["log_tail"] = log.read_text(errors="replace")[-3000:]
        print(rec["log_tail"], file=sys.stderr)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model to train (default: the embedded SmolLM2-135M)")
    ap.add_argument("--stages", default="sft,pm", help="comma-separated, from sft, pm, rl (rl needs pm)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per run (default 5)")
    ap.add_argument("--global-batch", type=int, default=4, help="examples per step over all processes (even)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="OpenMP threads in all, split")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/distributed-<UTC>.json)")
    ap.add_argument("--keep", default=None, help="keep the work folder here (default: a temporary one, deleted)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or set(stages) - {"sft", "pm", "rl"}:
        ap.error("--stages takes sft, pm and rl")
    if "rl" in stages and "pm" not in stages:
        ap.error("--stages rl needs pm (its PM is the one-process pm run's)")
    if args.global_batch % 2 or args.global_batch < 2:
        ap.error("--global-batch must be even (it is split over two processes)")
    if args.threads < 2:
        ap.error("--threads must be at least 2 (one per process)")
    stages = [s for s in ("sft", "pm", "rl") if s in stages]

    sys.path.insert(0, str(ROOT / "src"))
    from constitutional_ai.models.local import resolve_model_path

    started = datetime.now(timezone.utc)
    model = resolve_model_path(args.model)  # converts the embedded model once, before anything is timed
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = args.steps * args.global_batch
    write_revise_folder(work / "revise", rows)
    write_label_folder(work / "label", rows)
    write_prompt_files(work, max(4, rows))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result: dict = {
        "script": "benchmarks/bench_distributed.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "when": started.isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": args.model,
        "steps": args.steps,
        "global_batch": args.global_batch,
        "threads": args.threads,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    failed = False
    try:
        for stage in stages:
            for n in (1, 2):
                rec = one_run(stage, n, work, model, args, env)
                failed |= rec["exit_status"] != 0
                result["runs"].append(rec)
    finally:
        result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        default_out = ROOT / "benchmarks" / "results" / f"distributed-{started:%Y%m%dT%H%M%SZ}.json"
        out_path = Path(args.out) if args.out else default_out
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    print(f"\nresults: {out_path}")
    return 1 if failed else 0


def print_table(result: dict) -> None:
    print(
        f"\n{result['model']} | {result['steps']} steps | global batch {result['global_batch']} | "
        f"{result['threads']} threads in all | load average before {result['load_avg_before']}, "
        f"after {result['load_avg_after']}\n"
    )
    print("| stage | processes | per-device batch | threads each | s/step | wall s | peak RSS per trainer (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in result["runs"]:
        sps = r.get("seconds_per_step", f"failed ({r['exit_status']})")
        rss = " + ".join(str(x) for x in r["trainer_peak_rss_mib"]) or "-"
        print(
            f"| {r['stage']} | {r['processes_launched']} | {r['per_device_batch']} | {r['threads_per_process']} "
            f"| {sps} | {r['wall_seconds']} | {rss} |"
        )


if __name__ == "__main__":
    sys.exit(main())
