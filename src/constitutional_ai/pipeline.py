"""``cai run RECIPE`` — the whole method, stage by stage, through output folders.

    cai run recipes/tiny.yaml            # the CPU demo (make demo)
    cai run recipes/paper.yaml --only revise,train_sft

A recipe is YAML::

    out: runs/tiny                 # every stage writes a sub-folder here
    model: default                 # the helpful-only starting model
    feedback_model: default        # labels, judges (a real run uses a large model here)
    pm_model: default              # base of the preference model
    constitution: default
    seed: 0
    routes: [rl]                   # rl: train_pm -> train_rl (the paper); dpo: train_dpo (offline); or both
    stages:                        # per-stage settings = that stage's CLI flags
      revise: {rounds: 4, ...}
      train_sft: {...}
      sample_pairs: {...}
      label: {...}
      train_pm: {...}
      train_rl: {...}
      train_dpo: {...}
      eval: {hhh: {...}, compare: {...}, rounds: {...}, refusal: {...}}

A stage is skipped when its folder has a manifest and the resolved settings (its own and
its inputs') are those it was made with (``.pipeline/<stage>.json``). Otherwise the stage
runs, and since every stage resumes, an interrupted ``cai run`` continues where it stopped.
The report is rebuilt at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import from_mapping
from .data import HELPFUL_COMPARISONS
from .store import MANIFEST, json_sha256, write_json_atomic

ORDER = ("revise", "train_sft", "sample_pairs", "label", "train_pm", "train_rl", "train_dpo", "eval")
TOP_KEYS = {"name", "description", "out", "model", "feedback_model", "pm_model", "constitution", "seed", "routes",
            "stages"}
ROUTES = {"rl": ("train_pm", "train_rl"), "dpo": ("train_dpo",)}


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the file and the key."""


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
    stages = recipe.setdefault("stages", {}) or {}
    bad = set(stages) - set(ORDER)
    if bad:
        raise RecipeError(f"{path}: stages: unknown stage(s) {', '.join(sorted(bad))}; valid: {', '.join(ORDER)}")
    for k, v in stages.items():
        if v is not None and not isinstance(v, dict):
            raise RecipeError(f"{path}: stages.{k} must be a mapping of that stage's settings")
    recipe.setdefault("out", f"runs/{path.stem}")
    recipe.setdefault("model", "default")
    recipe.setdefault("feedback_model", "default")
    recipe.setdefault("pm_model", recipe["feedback_model"])
    recipe.setdefault("constitution", "default")
    recipe.setdefault("seed", 0)
    routes = recipe.setdefault("routes", ["rl"])
    if not isinstance(routes, list) or not routes or set(routes) - set(ROUTES):
        raise RecipeError(f"{path}: routes: expected a non-empty list of {', '.join(ROUTES)}, got {routes!r}")
    unused = [k for r, ks in ROUTES.items() if r not in routes for k in ks if k in stages]
    if unused:
        raise RecipeError(f"{path}: stages.{', stages.'.join(unused)} given but routes is {routes}")
    recipe["_file"] = str(path)
    return recipe


@dataclasses.dataclass
class Step:
    """One unit of ``cai run``: a stage config bound to its folder and runner."""

    name: str
    out: Path
    config: Any
    run: Callable[[Any], Any]
    inputs: tuple[str, ...] = ()


def _cfg(cls, values: dict, where: str):
    try:
        return from_mapping(cls, values, where)
    except TypeError as e:
        raise RecipeError(f"{where}: {e}") from None


def plan(recipe: dict) -> list[Step]:
    """Resolve a recipe into the ordered list of steps (nothing runs here)."""
    from .stages import label, revise, sample_pairs, train_dpo, train_pm, train_rl, train_sft

    root = Path(recipe["out"])
    s = {k: dict(v or {}) for k, v in recipe["stages"].items()}
    f, seed = recipe["_file"], recipe["seed"]
    steps = [
        Step("revise", root / "revise", _cfg(revise.ReviseConfig, {
            "model": recipe["model"], "constitution": recipe["constitution"], "seed": seed,
            **s.get("revise", {}), "out": str(root / "revise")}, f"{f}: stages.revise"), revise.main),
        Step("train_sft", root / "sft", _cfg(train_sft.TrainSFTConfig, {
            "model": recipe["model"], "seed": seed, **s.get("train_sft", {}),
            "data": [str(root / "revise")], "out": str(root / "sft")}, f"{f}: stages.train_sft"), train_sft.main, ("revise",)),
        Step("sample_pairs", root / "pairs", _cfg(sample_pairs.SamplePairsConfig, {
            "seed": seed, **s.get("sample_pairs", {}), "model": str(root / "sft"), "out": str(root / "pairs")},
            f"{f}: stages.sample_pairs"), sample_pairs.main, ("train_sft",)),
        Step("label", root / "labels", _cfg(label.LabelConfig, {
            "model": recipe["feedback_model"], "constitution": recipe["constitution"], "seed": seed,
            **s.get("label", {}), "pairs": str(root / "pairs"), "out": str(root / "labels")},
            f"{f}: stages.label"), label.main, ("sample_pairs",)),
        Step("train_pm", root / "pm", _cfg(train_pm.TrainPMConfig, {
            "model": recipe["pm_model"], "seed": seed, "helpful": str(HELPFUL_COMPARISONS),
            **s.get("train_pm", {}), "labels": [str(root / "labels")], "out": str(root / "pm")},
            f"{f}: stages.train_pm"), train_pm.main, ("label",)),
        Step("train_rl", root / "rl", _cfg(train_rl.TrainRLConfig, {
            "seed": seed, **s.get("train_rl", {}), "policy": str(root / "sft"), "pm": str(root / "pm"),
            "out": str(root / "rl")}, f"{f}: stages.train_rl"), train_rl.main, ("train_sft", "train_pm")),
        Step("train_dpo", root / "dpo", _cfg(train_dpo.TrainDPOConfig, {
            "seed": seed, "labels": [str(root / "labels")], "helpful": str(HELPFUL_COMPARISONS),
            **s.get("train_dpo", {}), "model": str(root / "sft"), "out": str(root / "dpo")}, f"{f}: stages.train_dpo"),
            train_dpo.main, ("revise", "train_sft", "label")),
    ]
    skipped = {k for r, ks in ROUTES.items() if r not in recipe["routes"] for k in ks}
    steps = [st for st in steps if st.name not in skipped]
    steps += eval_steps(recipe, root, s.get("eval", {}), f)
    return steps


def eval_steps(recipe: dict, root: Path, ev: dict, f: str) -> list[Step]:
    """The evaluations: HHH accuracy (labeller and PM), head-to-head comparison with Elo,
    PM score vs revision round, and refusal rate of each checkpoint on benign prompts."""
    from .stages import eval_compare, evaluate

    models = {"base": recipe["model"], "sl-cai": str(root / "sft")}
    deps = {"base": (), "sl-cai": ("train_sft",)}  # the steps each checkpoint comes from
    route_models = {"rl": ("rl-cai", "rl", "train_rl"), "dpo": ("dpo-cai", "dpo", "train_dpo")}
    for route, (name, folder, step) in route_models.items():
        if route in recipe["routes"]:
            models[name], deps[name] = str(root / folder), (step,)
    has_pm = "rl" in recipe["routes"]  # the PM is trained on the RL route only
    steps = []
    if ev.get("hhh", {}) is not False:
        hhh = dict(ev.get("hhh") or {})
        steps.append(Step("eval_hhh_labeller", root / "eval" / "hhh-labeller", _cfg(evaluate.HHHConfig, {
            "constitution": recipe["constitution"], "seed": recipe["seed"], **hhh, "model": recipe["feedback_model"],
            "out": str(root / "eval" / "hhh-labeller")}, f"{f}: stages.eval.hhh"), evaluate.hhh_main))
        pm_hhh = {k: v for k, v in hhh.items() if k in ("task", "limit", "batch_size", "max_length")}
        steps += [] if not has_pm else [Step("eval_hhh_pm", root / "eval" / "hhh-pm", _cfg(evaluate.HHHConfig, {
            **pm_hhh, "pm": str(root / "pm"), "out": str(root / "eval" / "hhh-pm")}, f"{f}: stages.eval.hhh"),
            evaluate.hhh_main, ("train_pm",))]
    if ev.get("compare", {}) is not False:
        steps.append(Step("eval_compare", root / "eval" / "compare", _cfg(eval_compare.CompareConfig, {
            "judge": recipe["feedback_model"], "constitution": recipe["constitution"], "seed": recipe["seed"],
            **(ev.get("compare") or {}), "models": list(models.values()), "names": list(models),
            "out": str(root / "eval" / "compare")}, f"{f}: stages.eval.compare"), eval_compare.main,
            tuple(d for n in models for d in deps[n])))
    if ev.get("rounds", {}) is not False and has_pm:
        steps.append(Step("eval_rounds", root / "eval" / "rounds", _cfg(evaluate.RoundsConfig, {
            **(ev.get("rounds") or {}), "revise": str(root / "revise"), "pm": str(root / "pm"),
            "out": str(root / "eval" / "rounds")}, f"{f}: stages.eval.rounds"), evaluate.rounds_main,
            ("revise", "train_pm")))
    if ev.get("refusal", {}) is not False:
        for name, spec in models.items():
            steps.append(Step(f"eval_refusal_{name}", root / "eval" / f"refusal-{name}", _cfg(evaluate.RefusalConfig, {
                "seed": recipe["seed"], **(ev.get("refusal") or {}), "model": spec,
                "out": str(root / "eval" / f"refusal-{name}")}, f"{f}: stages.eval.refusal"), evaluate.refusal_main,
                deps[name]))
    return steps


def _fingerprint(step: Step, done: dict[str, str]) -> str:
    cfg = dataclasses.asdict(step.config) if dataclasses.is_dataclass(step.config) else dict(step.config)
    return json_sha256({"config": json.loads(json.dumps(cfg, default=str)), "inputs": {i: done.get(i) for i in step.inputs}})


def run(recipe_path: str | Path, only: list[str] | None = None) -> Path:
    """Run (or resume) every step of a recipe, then build the report."""
    recipe = load_recipe(recipe_path)
    steps = plan(recipe)
    root = Path(recipe["out"])
    state_dir = root / ".pipeline"
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "recipe.json", {k: v for k, v in recipe.items() if not k.startswith("_")})
    fingerprints: dict[str, str] = {}
    t_all = time.time()
    for i, step in enumerate(steps, 1):
        fp = _fingerprint(step, fingerprints)
        state = state_dir / f"{step.name}.json"
        stage_key = step.name if not step.name.startswith("eval") else "eval"
        selected = only is None or stage_key in only or step.name in only
        up_to_date = (step.out / MANIFEST).exists() and state.exists() and json.loads(state.read_text()).get("fingerprint") == fp
        if up_to_date or not selected:
            why = "up to date" if up_to_date else "not selected"
            print(f"[run] {i}/{len(steps)} {step.name}: {why} ({step.out})", file=sys.stderr)
            fingerprints[step.name] = fp
            continue
        print(f"[run] {i}/{len(steps)} {step.name} -> {step.out}", file=sys.stderr)
        t0 = time.time()
        step.run(step.config)
        write_json_atomic(state, {"fingerprint": fp, "seconds": round(time.time() - t0, 1)})
        fingerprints[step.name] = fp
        print(f"[run] {step.name} finished in {time.time() - t0:.0f} s", file=sys.stderr)
    from .report import build_report

    report = build_report(root)
    print(f"[run] all stages done in {time.time() - t_all:.0f} s", file=sys.stderr)
    print(f"\nResults: {root}/\nReport:  {report}\n")
    return report


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Stages: " + ", ".join(ORDER) + ". Rerun the same command to resume.")
    ap.add_argument("recipe", nargs="?", default="recipes/tiny.yaml", help="Recipe YAML (default: recipes/tiny.yaml)")
    ap.add_argument("--only", help="Comma-separated stages to (re)run; the others are taken as they are")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    if only:
        bad = set(only) - set(ORDER)
        if bad:
            ap.error(f"unknown stage(s) {', '.join(sorted(bad))}; valid: {', '.join(ORDER)}")
    run(args.recipe, only)
    return 0
