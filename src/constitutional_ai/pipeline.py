"""``cai run RECIPE`` — the whole method, stage by stage, through output folders.

    cai run recipes/tiny.yaml            # the CPU demo (make demo)
    cai run recipes/paper.yaml --only revise,train-sft

A recipe is YAML::

    out: runs/tiny                 # every stage writes a sub-folder here, named after the stage
    model: default                 # the helpful-only starting model (weights: train-sft finetunes them)
    model_server: openai:M@URL     # optional: a server of those weights, used wherever they only generate
    data_model: SPEC               # optional: the model that writes the revise data (default: model_server or model)
    sft_model: gemma3-270m         # optional: the weights SL-CAI finetunes (default: model), e.g. a pretrained base
    helpful_model: SPEC            # optional: samples the helpful SFT replies (default: data_model)
    feedback_model: default        # labels, judges (a real run uses a large model here)
    pm_model: default              # base of the preference model
    constitution: default
    seed: 0
    launch: launch/fsdp.yaml       # optional: training steps run under accelerate launch with this config
                                   # (or {config: FILE, args: [--num_processes, "4"], stages: [train-sft]})
    routes: [rl]                   # rl: train-pm -> train-rl (the paper); dpo: train-dpo (offline); or both
    stages:                        # per-stage settings = that stage's CLI flags
      redteam: {num_prompts: 500}  # optional: new red-team prompts first; revise then reads them
      revise: {rounds: 4, ...}
      train-sft: {...}
      sample-pairs: {...}
      label: {...}
      train-pm: {...}
      train-rl: {...}
      train-dpo: {...}
      eval-hhh: {...}              # `false` skips an evaluation
      eval-compare: {...}
      eval-rounds: {...}
      eval-refusal: {...}

SL-CAI on a pretrained base model, as the paper does (``recipes/base.yaml``): ``sft_model``
names the base weights, while the helpful model (``model``) writes the critique/revision data
and the helpful replies mixed into SFT (the paper's choice). By default all three are ``model``
(a helpful chat model finetuned on its own revisions). The evaluations' ``base`` row is always
the starting helpful model (``model_server`` or ``model``), the reference the SL-CAI and RL-CAI
checkpoints are compared with — with a separate ``sft_model`` that is the model that wrote the
data, not the pretrained weights before finetuning.

Stage keys are the stage names of ``cai --help`` (``train_sft`` is read as ``train-sft``).
A stage is skipped when its folder has a manifest and the resolved settings (its own and
its inputs') are those it was made with (``.pipeline/<step>.json``). Otherwise the stage
runs, and since every stage resumes, an interrupted ``cai run`` continues where it stopped.
The report is rebuilt at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .config import from_mapping
from .data import HELPFUL_COMPARISONS
from .stages import STAGES
from .store import MANIFEST, json_sha256, write_json_atomic

ORDER = tuple(st.name for st in STAGES)
EVALS = tuple(n for n in ORDER if n.startswith("eval-"))
TOP_KEYS = {
    "name",
    "description",
    "out",
    "model",
    "model_server",
    "data_model",
    "sft_model",
    "helpful_model",
    "feedback_model",
    "pm_model",
    "constitution",
    "seed",
    "routes",
    "launch",
    "stages",
}
#: the steps that train (and can run on several processes through ``launch:``)
TRAINING = ("train-sft", "train-pm", "train-rl", "train-dpo")
#: route -> the stages only it runs, and the checkpoint it adds to the evaluations
ROUTES = {"rl": (("train-pm", "train-rl"), "rl-cai"), "dpo": (("train-dpo",), "dpo-cai")}


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the file and the key."""


class StepFailed(RuntimeError):
    """A step run in other processes (``launch:``) failed; their output says why."""


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings")
    unknown = set(recipe) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(TOP_KEYS))}")
    stages = {str(k).replace("_", "-"): v for k, v in (recipe.get("stages") or {}).items()}
    bad = set(stages) - set(ORDER)
    if bad:
        raise RecipeError(f"{path}: stages: unknown stage(s) {', '.join(sorted(bad))}; valid: {', '.join(ORDER)}")
    for k, v in stages.items():
        if v is not None and v is not False and not isinstance(v, dict):
            raise RecipeError(
                f"{path}: stages.{k} must be a mapping of that stage's settings (or false to skip an evaluation)"
            )
        if v is False and k not in EVALS:
            raise RecipeError(f"{path}: stages.{k}: only evaluations can be skipped with false")
    recipe["stages"] = stages
    routes = recipe.setdefault("routes", ["rl"])
    if not isinstance(routes, list) or not routes or set(routes) - set(ROUTES):
        raise RecipeError(f"{path}: routes: expected a non-empty list of {', '.join(ROUTES)}, got {routes!r}")
    unused = [k for r, (ks, _) in ROUTES.items() if r not in routes for k in ks if k in stages]
    if unused:
        raise RecipeError(f"{path}: stages.{', stages.'.join(unused)} given but routes is {routes}")
    recipe.setdefault("out", f"runs/{path.stem}")
    recipe.setdefault("model", "default")
    recipe.setdefault("feedback_model", "default")
    served = ("openai:", "ray:", "fake:")
    if str(recipe["model"]).startswith(served):
        raise RecipeError(
            f"{path}: model: {recipe['model']!r} is an endpoint, and the training stages finetune "
            "`model`: give its weights (a folder or hub id) as model, and the endpoint as model_server"
        )
    # the PM is trained from weights: a served feedback model cannot be its base
    fb = str(recipe["feedback_model"])
    recipe.setdefault("pm_model", recipe["model"] if fb.startswith(served) else fb)
    if str(recipe["pm_model"]).startswith(served):
        raise RecipeError(f"{path}: pm_model: {recipe['pm_model']!r} is an endpoint; the PM is trained from weights")
    # what generates with the starting model (revise, the base model in the evaluations): the weights
    # in process, or a server that serves them
    recipe.setdefault("model_server", None)
    # SL-CAI: who writes the data, which weights are finetuned, who samples the helpful replies
    recipe.setdefault("data_model", recipe["model_server"] or recipe["model"])
    recipe.setdefault("sft_model", recipe["model"])
    recipe.setdefault("helpful_model", recipe["data_model"])
    for key in ("data_model", "sft_model", "helpful_model"):
        if not isinstance(recipe[key], str) or not recipe[key].strip():
            raise RecipeError(f"{path}: {key}: expected a model spec, got {recipe[key]!r}")
    if str(recipe["sft_model"]).startswith(served):
        raise RecipeError(
            f"{path}: sft_model: {recipe['sft_model']!r} is an endpoint; train-sft finetunes weights "
            "(a folder, a hub id, default or gemma3-270m)"
        )
    recipe.setdefault("constitution", "default")
    recipe.setdefault("seed", 0)
    recipe["launch"] = _launch(recipe.get("launch"), path)
    recipe["_file"] = str(path)
    return recipe


def _launch(value: Any, path: Path) -> dict | None:
    """The ``launch:`` key: ``CONFIG.yaml`` or ``{config, args, stages}`` -> a checked mapping."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"config": value}
    if not isinstance(value, dict) or not isinstance(value.get("config"), str):
        raise RecipeError(f"{path}: launch: expected an accelerate config file, or a mapping with `config` (a file)")
    unknown = set(value) - {"config", "args", "stages"}
    if unknown:
        raise RecipeError(f"{path}: launch: unknown key(s) {', '.join(sorted(unknown))}; valid: args, config, stages")
    if not Path(value["config"]).is_file():
        raise RecipeError(f"{path}: launch.config: {value['config']}: no such file (see the launch/ folder)")
    args = value.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise RecipeError(f"{path}: launch.args: expected a list of accelerate launch arguments")
    stages = [str(x).replace("_", "-") for x in value.get("stages", TRAINING)]
    bad = set(stages) - set(TRAINING)
    if bad:
        raise RecipeError(f"{path}: launch.stages: {', '.join(sorted(bad))} do not train; valid: {', '.join(TRAINING)}")
    return {"config": value["config"], "args": [str(a) for a in args], "stages": stages}


@dataclasses.dataclass
class Step:
    """One unit of ``cai run``: a stage config bound to its folder and runner."""

    name: str
    out: Path
    config: Any
    run: Callable[[Any], Any]
    inputs: tuple[str, ...] = ()
    #: the settings ``config`` was built from (what a launched step rebuilds it from)
    values: dict = dataclasses.field(default_factory=dict)


def _cfg(cls, values: dict, where: str):
    try:
        return from_mapping(cls, values, where)
    except TypeError as e:
        raise RecipeError(f"{where}: {e}") from None


def plan(recipe: dict) -> list[Step]:
    """Resolve a recipe into the ordered list of steps (nothing runs here)."""
    from .stages import label, redteam, revise, sample_pairs, train_dpo, train_pm, train_rl, train_sft

    root = Path(recipe["out"])
    s = {k: dict(v or {}) for k, v in recipe["stages"].items()}
    f, seed = recipe["_file"], recipe["seed"]
    d = {n: str(root / n) for n in ORDER}  # each stage's folder is named after it

    launch = recipe.get("launch")

    def step(name: str, cls, values: dict, run, inputs: tuple[str, ...] = ()) -> Step:
        values, where = {**values, "out": d[name]}, f"{f}: stages.{name}"
        if launch and name in launch["stages"]:
            run = functools.partial(run_launched, name, values, where, launch, root / ".pipeline")
        return Step(name, root / name, _cfg(cls, values, where), run, inputs, values)

    # With a `redteam` section, new red-team prompts are made first and revise reads them.
    generated: list[Step] = []
    if "redteam" in s:
        if "prompts" in s.get("revise", {}):
            raise RecipeError(
                f"{f}: stages.revise.prompts and stages.redteam both given: revise reads the generated prompts; "
                "give the seed prompts as stages.redteam.seeds"
            )
        rt = {"model": recipe["model_server"] or recipe["model"], "seed": seed, **s["redteam"]}
        generated = [step("redteam", redteam.RedteamConfig, rt, redteam.main)]
        s["revise"] = {**s.get("revise", {}), "prompts": str(Path(d["redteam"]) / "prompts.jsonl")}
    steps = generated + [
        step(
            "revise",
            revise.ReviseConfig,
            {
                "model": recipe["data_model"],
                "constitution": recipe["constitution"],
                "seed": seed,
                **s.get("revise", {}),
            },
            revise.main,
            ("redteam",) if generated else (),
        ),
        step(
            "train-sft",
            train_sft.TrainSFTConfig,
            {
                "model": recipe["sft_model"],
                "helpful_model": recipe["helpful_model"],
                "seed": seed,
                **s.get("train-sft", {}),
                "data": [d["revise"]],
            },
            train_sft.main,
            ("revise",),
        ),
        step(
            "sample-pairs",
            sample_pairs.SamplePairsConfig,
            {"seed": seed, **s.get("sample-pairs", {}), "model": d["train-sft"]},
            sample_pairs.main,
            ("train-sft",),
        ),
        step(
            "label",
            label.LabelConfig,
            {
                "model": recipe["feedback_model"],
                "constitution": recipe["constitution"],
                "seed": seed,
                **s.get("label", {}),
                "pairs": d["sample-pairs"],
            },
            label.main,
            ("sample-pairs",),
        ),
        step(
            "train-pm",
            train_pm.TrainPMConfig,
            {
                "model": recipe["pm_model"],
                "seed": seed,
                "helpful": str(HELPFUL_COMPARISONS),
                **s.get("train-pm", {}),
                "labels": [d["label"]],
            },
            train_pm.main,
            ("label",),
        ),
        step(
            "train-rl",
            train_rl.TrainRLConfig,
            {"seed": seed, **s.get("train-rl", {}), "policy": d["train-sft"], "pm": d["train-pm"]},
            train_rl.main,
            ("train-sft", "train-pm"),
        ),
        step(
            "train-dpo",
            train_dpo.TrainDPOConfig,
            {
                "seed": seed,
                "labels": [d["label"]],
                "helpful": str(HELPFUL_COMPARISONS),
                **s.get("train-dpo", {}),
                "model": d["train-sft"],
            },
            train_dpo.main,
            ("revise", "train-sft", "label"),
        ),
    ]
    skipped = {k for r, (ks, _) in ROUTES.items() if r not in recipe["routes"] for k in ks}
    return [st for st in steps if st.name not in skipped] + eval_steps(recipe, root, s, f)


def launch_command(launch: dict, job: Path) -> list[str]:
    """``accelerate launch`` of one training step (``python -m accelerate.commands.launch``, the
    ``accelerate launch`` of this interpreter's environment)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        launch["config"],
        *launch["args"],
        "-m",
        "constitutional_ai.launched",
        str(job),
    ]


def run_launched(name: str, values: dict, where: str, launch: dict, state_dir: Path, _config: Any = None) -> None:
    """Run a training step on several processes: its resolved settings go to a job file that every
    launched process rebuilds the same config from (``constitutional_ai.launched``)."""
    job = state_dir / f"{name}.job.json"
    write_json_atomic(job, {"stage": name, "values": values, "where": where})
    cmd = launch_command(launch, job)
    print(f"[run] {name}: {' '.join(cmd[1:])}", file=sys.stderr)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise StepFailed(
            f"{name}: `accelerate launch` exited with status {code}; rerun the same `cai run` to resume the step"
        )


def eval_steps(recipe: dict, root: Path, s: dict, f: str) -> list[Step]:
    """The evaluations: HHH accuracy (labeller and PM), head-to-head comparison with Elo,
    PM score vs revision round, and refusal rate of each checkpoint on benign prompts."""
    from .stages import eval_compare, eval_hhh, eval_refusal, eval_rounds

    models = {"base": recipe["model_server"] or recipe["model"], "sl-cai": str(root / "train-sft")}
    after = {"base": (), "sl-cai": ("train-sft",)}  # the step each checkpoint comes from
    for route, (ks, name) in ROUTES.items():
        if route in recipe["routes"]:
            models[name], after[name] = str(root / ks[-1]), (ks[-1],)
    has_pm = "rl" in recipe["routes"]  # the PM is trained on the RL route only
    stages = recipe["stages"]

    def step(name: str, variant: str, cls, values: dict, run, inputs: tuple[str, ...] = ()) -> Step:
        full = f"{name}-{variant}" if variant else name
        return Step(
            full, root / full, _cfg(cls, {**values, "out": str(root / full)}, f"{f}: stages.{name}"), run, inputs
        )

    steps = []
    if stages.get("eval-hhh") is not False:
        hhh = s.get("eval-hhh", {})
        steps.append(
            step(
                "eval-hhh",
                "labeller",
                eval_hhh.HHHConfig,
                {
                    "constitution": recipe["constitution"],
                    "seed": recipe["seed"],
                    **hhh,
                    "model": recipe["feedback_model"],
                },
                eval_hhh.main,
            )
        )
        pm_hhh = {k: v for k, v in hhh.items() if k in ("task", "limit", "batch_size", "max_length")}
        if has_pm:
            steps.append(
                step(
                    "eval-hhh",
                    "pm",
                    eval_hhh.HHHConfig,
                    {**pm_hhh, "seed": recipe["seed"], "pm": str(root / "train-pm")},
                    eval_hhh.main,
                    ("train-pm",),
                )
            )
    if stages.get("eval-compare") is not False:
        steps.append(
            step(
                "eval-compare",
                "",
                eval_compare.CompareConfig,
                {
                    "judge": recipe["feedback_model"],
                    "constitution": recipe["constitution"],
                    "seed": recipe["seed"],
                    **s.get("eval-compare", {}),
                    "models": list(models.values()),
                    "names": list(models),
                },
                eval_compare.main,
                tuple(a for n in models for a in after[n]),
            )
        )
    if stages.get("eval-rounds") is not False and has_pm:
        steps.append(
            step(
                "eval-rounds",
                "",
                eval_rounds.RoundsConfig,
                {**s.get("eval-rounds", {}), "revise": str(root / "revise"), "pm": str(root / "train-pm")},
                eval_rounds.main,
                ("revise", "train-pm"),
            )
        )
    if stages.get("eval-refusal") is not False:
        for name, spec in models.items():
            steps.append(
                step(
                    "eval-refusal",
                    name,
                    eval_refusal.RefusalConfig,
                    {
                        "seed": recipe["seed"],
                        "classifier": recipe["feedback_model"],
                        **s.get("eval-refusal", {}),
                        "model": spec,
                    },
                    eval_refusal.main,
                    after[name],
                )
            )
    return steps


def _fingerprint(step: Step, done: dict[str, str]) -> str:
    c = step.config
    cfg = dataclasses.asdict(c) if dataclasses.is_dataclass(c) and not isinstance(c, type) else dict(c)
    return json_sha256(
        {"config": json.loads(json.dumps(cfg, default=str)), "inputs": {i: done.get(i) for i in step.inputs}}
    )


def run(recipe_path: str | Path, only: list[str] | None = None) -> Path:
    """Run (or resume) every step of a recipe, then build the report."""
    recipe = load_recipe(recipe_path)
    steps = plan(recipe)
    root = Path(recipe["out"])
    state_dir = root / ".pipeline"
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "recipe.json", {k: v for k, v in recipe.items() if not k.startswith("_")})
    fingerprints: dict[str, str] = {}
    times: dict[str, str] = {}
    t_all = time.time()
    for i, step in enumerate(steps, 1):
        fp = _fingerprint(step, fingerprints)
        state = state_dir / f"{step.name}.json"
        selected = only is None or step.name in only or any(step.name.startswith(o + "-") for o in only if o in EVALS)
        up_to_date = (
            (step.out / MANIFEST).exists() and state.exists() and json.loads(state.read_text()).get("fingerprint") == fp
        )
        if up_to_date or not selected:
            why = "up to date" if up_to_date else "not selected"
            print(f"[run] {i}/{len(steps)} {step.name}: {why} ({step.out})", file=sys.stderr)
            fingerprints[step.name] = fp
            if up_to_date:
                times[step.name] = f"{json.loads(state.read_text()).get('seconds', 0):.0f} s (earlier run)"
            continue
        print(f"[run] {i}/{len(steps)} {step.name} -> {step.out}", file=sys.stderr)
        t0 = time.time()
        step.run(step.config)
        write_json_atomic(state, {"fingerprint": fp, "seconds": round(time.time() - t0, 1)})
        fingerprints[step.name] = fp
        times[step.name] = f"{time.time() - t0:.0f} s"
        print(f"[run] {step.name} finished in {time.time() - t0:.0f} s", file=sys.stderr)
    from .report import build_report, headline

    report = build_report(root)
    width = max(map(len, times), default=0)
    print("[run] stage times:\n" + "".join(f"  {k:<{width}}  {v}\n" for k, v in times.items()), file=sys.stderr)
    print(f"[run] all stages done in {time.time() - t_all:.0f} s", file=sys.stderr)
    print(f"\nResults: {root}/\nReport:  {report}\n" + "".join(f"  {line}\n" for line in headline(root)))
    return report


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cai run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages: " + ", ".join(ORDER) + ". Rerun the same command to resume.",
    )
    ap.add_argument("recipe", nargs="?", default="recipes/tiny.yaml", help="Recipe YAML (default: recipes/tiny.yaml)")
    ap.add_argument("--only", help="Comma-separated stages to (re)run; the others are taken as they are")
    args = ap.parse_args(argv)
    only = [x.strip().replace("_", "-") for x in args.only.split(",")] if args.only else None
    if only:
        bad = {o for o in only if o not in ORDER and not any(o.startswith(e + "-") for e in EVALS)}
        if bad:
            ap.error(f"unknown stage(s) {', '.join(sorted(bad))}; valid: {', '.join(ORDER)}")
    run(args.recipe, only)
    return 0
