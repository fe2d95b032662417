"""One self-contained HTML report of a pipeline run: summary, plots and a searchable sample viewer.

    cai report runs/tiny [--out runs/tiny/report.html] [--max-samples 200]

The report finds the finished stage folders under RUN_DIR (the folder itself and up to two
levels below) by their ``manifest.json`` and renders each by its ``"stage"`` field; a stage
that was not run is shown as "not run", an unknown one as a key/value table of its
``metrics.json``. The file needs no server and no network: CSS and JavaScript are inline, the
plots are SVG drawn here (``plots.py``), and every piece of model text is HTML-escaped (model
output may well contain ``<script>``), so nothing a model wrote can run in the page.

Search: the text box above the samples filters them client-side (all words must appear,
case-insensitive); the filter lives in the URL fragment, so ``report.html#q=lockpick``
opens the report filtered.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .plots import (
    CSS,
    JS,
    bar_chart,
    conversation,
    counts_table,
    esc,
    figs,
    finite,
    first_user,
    generic_metrics,
    hbar_chart,
    histogram,
    kv_table,
    line_chart,
    meta_line,
    num,
    pre,
    reliability_diagram,
    sample,
    scatter_chart,
    section,
    snippet,
    table,
)
from .stages import STAGES
from .store import write_atomic
from .verdict import Checkpoint, Interval, Judge, conclude, wilson

SMALL_MODEL = "SmolLM2-135M-Instruct"
ORDER = [st.name for st in STAGES]


# ----------------------------------------------------------------------------- reading a run
@dataclass
class Stage:
    """One finished stage folder."""

    path: Path
    rel: str
    manifest: dict
    run_name: str = ""

    @property
    def name(self) -> str:
        return str(self.manifest.get("stage", "?"))

    @property
    def config(self) -> dict:
        return self.manifest.get("config") or {}

    def file(self, key: str, default: str) -> Path:
        return self.path / ((self.manifest.get("files") or {}).get(key) or default)


def discover(run_dir: Path, broken: list[str] | None = None) -> list[Stage]:
    """Stage folders with a manifest at depth 0–2 under ``run_dir``, in pipeline order.

    A folder whose ``manifest.json`` cannot be read is not a finished stage; its relative path
    is added to ``broken`` (when given) so the report can say so instead of "not run".
    """
    dirs = [run_dir]
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        dirs.append(d)
        dirs += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    stages = []
    for d in dirs:
        m = read_json(d / "manifest.json")
        rel = d.relative_to(run_dir).as_posix() or "."
        if isinstance(m, dict) and "stage" in m:
            stages.append(Stage(d, rel, m, run_dir.resolve().name))
        elif (d / "manifest.json").exists() and broken is not None:
            broken.append(rel)
    rank = {s: i for i, s in enumerate(ORDER)}
    return sorted(stages, key=lambda s: (rank.get(s.name, len(ORDER)), s.rel))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, limit: int | None = None) -> tuple[list[dict], int]:
    """The first ``limit`` rows (all when None) and the number of rows in the file.

    Unparsable lines are skipped: a report must not fail on a stage killed mid-write.
    """
    rows, total = [], 0
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if not line.strip():
                    continue
                total += 1
                if limit is None or len(rows) < limit:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        total -= 1
                        continue
                    if isinstance(obj, dict):
                        rows.append(obj)
    except OSError:
        pass
    return rows, total


def model_specs(m: dict) -> dict[str, str]:
    """The model settings of a manifest (``model``, ``pm_model``, ``policy`` ...), by name."""
    out = {}
    for src in (m.get("settings") or {}, m.get("config") or {}):
        for k, v in src.items():
            if isinstance(v, str) and (k.endswith("model") or k in ("policy", "pm", "judge")) and k not in out:
                out[k] = v
            elif k == "models" and isinstance(v, list) and k not in out:
                out.update({f"model {i + 1}": str(x) for i, x in enumerate(v)})
    return out


def stage_of(spec: str, stages: list[Stage]) -> Stage | None:
    """The stage folder of this run a model spec points at (paths may be relative to another cwd)."""
    try:
        target = Path(spec).resolve()
    except (OSError, ValueError):
        return None
    for s in stages:
        tail = (s.path.parent.name if s.rel == "." else s.run_name, *Path(s.rel).parts)
        if s.path.resolve() == target or (s.rel != "." and Path(spec).parts[-len(tail) :] == tail):
            return s
    return None


def is_small_default(spec: str, stages: list[Stage], depth: int = 0) -> bool:
    """Whether a model spec is (or was finetuned from) the embedded 135M default."""
    if spec in ("", "default") or "135m" in spec.lower():
        return True
    s = stage_of(spec, stages) if depth < 4 else None  # a checkpoint of this run: follow it to its base
    return s is not None and any(
        is_small_default(v, stages, depth + 1) for k, v in model_specs(s.manifest).items() if k in ("model", "policy")
    )


def show_model(spec: str, stages: list[Stage] | None = None) -> str:
    """A model spec for display: the default named, a checkpoint of this run by its folder."""
    if spec in ("", "default"):
        return f"default ({SMALL_MODEL})"
    s = stage_of(spec, stages) if stages else None
    return f"{s.rel} ({s.name} output)" if s is not None else spec


#: the result section's conclusion: green when something can be concluded, grey when nothing can
RESULT_CSS = (
    ".conclusion{font-size:16px;background:#eef6ec;border:1px solid #9cc59a;border-radius:6px;padding:10px 14px}"
    ".conclusion.none{background:#f1f1f1;border-color:#bbb}"
)
NOT_RUN = '<p class="notrun">not run — no finished <code>{}</code> folder under this run.</p>'


@dataclass
class Group:
    """A block of the sample viewer: one stage folder's samples."""

    title: str
    kind: str
    items: list[str]
    total: int


@dataclass
class Ctx:
    """What every section renderer needs: the sample cap, all stages (to name models), the viewer's groups."""

    max_samples: int
    stages: list[Stage]
    groups: list[Group] = field(default_factory=list)


# ----------------------------------------------------------------------------- stages
def sec_revise(stages: list[Stage], ctx: Ctx) -> str:
    if not stages:
        return NOT_RUN.format("revise")
    out = []
    for s in stages:
        records, total = read_jsonl(s.file("records", "records.jsonl"))
        out.append(
            f"<h3>{esc(s.rel)}</h3>"
            + counts_table(
                {
                    **(s.manifest.get("counts") or {}),
                    "rounds": s.config.get("rounds"),
                    "mode": records[0].get("mode") if records else None,
                }
            )
        )
        pc = sorted((s.manifest.get("principle_counts") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        n_rounds = max((len(r.get("rounds") or []) for r in records), default=0)
        lengths: list[tuple[float, float | None]] = []
        empty, same = [], []
        for k in range(n_rounds + 1):
            rs = [r for r in records if len(r.get("rounds") or []) >= k]
            texts = [
                r.get("initial_response") or "" if k == 0 else r["rounds"][k - 1].get("revision") or "" for r in rs
            ]
            lengths.append((k, sum(map(len, texts)) / len(texts) if texts else None))
            if k:
                empty.append(sum(bool(r["rounds"][k - 1].get("empty_revision")) for r in rs) / max(1, len(rs)))
                prev = [r.get("initial_response") if k == 1 else r["rounds"][k - 2].get("revision") for r in rs]
                same.append(sum(r["rounds"][k - 1].get("revision") == p for r, p in zip(rs, prev)) / max(1, len(rs)))
        top = max([v for _, v in lengths if v] + [1])
        out.append(
            figs(
                hbar_chart(
                    [k for k, _ in pc],
                    [v for _, v in pc],
                    title="Principles drawn (one per round)",
                    xlabel="times drawn",
                ),
                line_chart(
                    {"mean characters": lengths},
                    title="Response length by revision round",
                    xlabel="round (0 = initial)",
                    ylabel="characters",
                    integer_x=True,
                    y_range=(0, top * 1.1),
                ),
                bar_chart(
                    [f"round {k}" for k in range(1, n_rounds + 1)],
                    {"empty revision": empty, "identical to previous": same},
                    title="Revisions that changed nothing",
                    ylabel="share of records",
                    y_range=(0, 1),
                ),
            )
        )
        items = []
        for r in records[: ctx.max_samples]:
            body = [conversation(r.get("messages")), pre("initial response", r.get("initial_response"), "initial")]
            for x in r.get("rounds") or []:
                flag = ' <span class="warn">empty revision (not trained on)</span>' if x.get("empty_revision") else ""
                flag += ' <span class="warn">cut at the token budget</span>' if x.get("truncated") else ""
                body.append(
                    f'<details class="round" open><summary>round {esc(x.get("round"))} · principle '
                    f"<code>{esc(x.get('principle'))}</code>{flag}</summary>"
                    + (pre("critique", x.get("critique")) if x.get("critique") else "")
                    + pre("revision", x.get("revision"), "revision")
                    + "</details>"
                )
            meta = meta_line(model=r.get("model"), seed=r.get("seed"), category=r.get("category"))
            items.append(
                sample(
                    "revise",
                    r.get("key"),
                    f"<b>{esc(r.get('key'))}</b> {esc(snippet(first_user(r.get('messages'))))}",
                    meta + "".join(body),
                )
            )
        ctx.groups.append(Group(f"Critique → revision records ({s.rel})", "revise", items, total))
    return "".join(out)


def loss_history(s: Stage) -> list[dict]:
    """Per-step training logs if the folder kept them (manifest, metrics.json or trainer_state.json)."""
    metrics = read_json(s.path / "metrics.json") or {}
    for src in (s.manifest.get("train"), metrics, metrics.get("train"), read_json(s.path / "trainer_state.json")):
        if isinstance(src, dict) and isinstance(src.get("log_history"), list):
            return [h for h in src["log_history"] if isinstance(h, dict)]
    return []


def loss_chart(hist: list[dict], title: str) -> str:
    pts = [(h.get("step", i), h["loss"]) for i, h in enumerate(hist) if isinstance(h.get("loss"), (int, float))]
    return line_chart({"training loss": pts}, title=title, xlabel="step", ylabel="loss", integer_x=True) if pts else ""


def sec_sft(stages: list[Stage]) -> str:
    if not stages:
        return NOT_RUN.format("train-sft")
    out = []
    for s in stages:
        train = {k: v for k, v in (s.manifest.get("train") or {}).items() if not isinstance(v, (list, dict))}
        excluded = (s.manifest.get("counts") or {}).get("excluded") or {}
        out.append(
            f"<h3>{esc(s.rel)}</h3>"
            + counts_table(s.manifest.get("counts") or {})
            + counts_table(train)
            + (
                f"<p>Targets excluded from training: {esc(', '.join(f'{k} {v}' for k, v in excluded.items()))}</p>"
                if excluded
                else ""
            )
        )
        chart = loss_chart(loss_history(s), "SL-CAI finetuning loss")
        out.append(
            figs(chart)
            if chart
            else "<p class='muted'>Per-step losses are not stored in this folder; "
            "the first and last logged losses are above.</p>"
        )
    return "".join(out)


def sec_pairs(stages: list[Stage], ctx: Ctx, labelled: bool) -> str:
    if not stages:
        return NOT_RUN.format("sample-pairs")
    out = []
    for s in stages:
        out.append(f"<h3>{esc(s.rel)}</h3>" + counts_table(s.manifest.get("counts") or {}))
        if labelled:
            continue  # the pairs appear with their labels in the viewer
        rows, total = read_jsonl(s.file("pairs", "pairs.jsonl"), ctx.max_samples)
        items = [
            sample(
                "pair",
                r.get("key"),
                f"<b>{esc(r.get('key'))}</b> {esc(snippet(first_user(r.get('messages'))))}",
                conversation(r.get("messages"))
                + '<div class="pair">'
                + "".join(pre(f"response {'ab'[i]}", t) for i, t in enumerate((r.get("responses") or [])[:2]))
                + "</div>",
            )
            for r in rows
        ]
        ctx.groups.append(Group(f"Response pairs ({s.rel})", "pair", items, total))
    return "".join(out)


LABEL_EXPLAIN = {
    "first_slot_rate": "share of single-order verdicts for slot (A); 0.5 = no position bias",
    "slot_following_rate": "share of both-order checks whose verdict follows the slot (contradicts itself); "
    "0 = consistent",
    "single_order_agreement": "share of labels where the first order alone agrees with the final label",
    "mean_confidence_single_order": "mean |P(a) − 0.5| from one order only",
    "mean_confidence": "mean |P(a) − 0.5| of the final (debiased) labels",
    "mean_p_first": "mean probability given to the first slot",
    "mean_p_chosen": "mean probability of the preferred response",
}


def bias_charts(stats: dict, labels: list[dict]) -> str:
    single = []
    for r in labels:
        ab = [
            x["p_a"] for x in r.get("scores") or [] if x.get("order") == "AB" and isinstance(x.get("p_a"), (int, float))
        ]
        single.append(sum(ab) / len(ab) if ab else None)
    return figs(
        bar_chart(
            ["first-slot rate", "slot-following rate", "single-order agreement"],
            {
                "rate": [
                    stats.get("first_slot_rate"),
                    stats.get("slot_following_rate"),
                    stats.get("single_order_agreement"),
                ]
            },
            title="Position bias of the labeller",
            ylabel="rate",
            y_range=(0, 1),
            refs=[(0.5, "first-slot rate without bias")],
        ),
        bar_chart(
            ["single order", "both orders averaged"],
            {"confidence": [stats.get("mean_confidence_single_order"), stats.get("mean_confidence")]},
            title="Label confidence: single order vs debiased",
            ylabel="mean |P(a) − 0.5|",
            y_range=(0, 0.5),
        ),
        histogram(
            {"single order (AB)": [v for v in single if v is not None], "final label": [r.get("p_a") for r in labels]},
            title="Soft labels P(response a is better)",
            xlabel="P(a)",
        )
        if labels
        else "",
    )


def label_body(r: dict, names: tuple[str, str] = ("a", "b"), correct: int | None = None) -> str:
    """A judged pair: the conversation, both responses (the preferred or correct one marked), every scoring."""
    p = r.get("p_a")
    resp = list(r.get("responses") or ["", ""])[:2]
    win = correct if correct is not None else (0 if isinstance(p, (int, float)) and p >= 0.5 else 1)
    mark = " (correct)" if correct is not None else " (preferred)"
    pair = (
        '<div class="pair">'
        + "".join(
            pre(f"response {names[i]}" + (mark if i == win else ""), t, "win" if i == win else "")
            for i, t in enumerate(resp)
        )
        + "</div>"
    )
    scores = r.get("scores") or []
    rows = [
        (
            f"<code>{esc(x.get('principle'))}</code>",
            esc(x.get("order")),
            num(x.get("p_first")),
            num(x.get("p_a")),
            esc(", ".join(f"{v:.2f}" for v in x.get("logprobs") or [] if isinstance(v, (int, float)))),
        )
        for x in scores
    ]
    reasoning = "".join(
        pre(f"reasoning ({x.get('order')})", x["reasoning"])
        for x in scores + (r.get("cot_scores") or [])
        if x.get("reasoning")
    )
    return (
        conversation(r.get("messages"))
        + pair
        + (table(rows, ["principle", "order", "P(first)", f"P({names[0]})", "log-probs A, B"]) if rows else "")
        + reasoning
    )


def sec_label(stages: list[Stage], ctx: Ctx) -> str:
    if not stages:
        return NOT_RUN.format("label")
    out = []
    for s in stages:
        stats = read_json(s.file("stats", "stats.json")) or s.manifest.get("stats") or {}
        labels, total = read_jsonl(s.file("labels", "labels.jsonl"))
        cfg = s.config
        out.append(
            f"<h3>{esc(s.rel)}</h3>"
            + counts_table(
                {
                    **(s.manifest.get("counts") or {}),
                    "both orders": cfg.get("debias"),
                    "chain of thought": cfg.get("cot"),
                    "principles per label": cfg.get("principles"),
                }
            )
        )
        out.append(kv_table(stats, LABEL_EXPLAIN) + bias_charts(stats, labels))
        items = []
        for r in labels[: ctx.max_samples]:
            p = r.get("p_a")
            unclamped = f" (unclamped {num(r.get('p_a_unclamped'))})" if r.get("p_a_unclamped") != p else ""
            meta = (
                f'<p class="meta">P(a better) = <b>{num(p)}</b>{unclamped} · principles '
                f"{esc(', '.join(r.get('principles') or []))}"
                f" · {'hard label' if r.get('hard') else 'soft label'}{' · CoT' if r.get('cot') else ''}"
                f" · model {esc(r.get('model'))}</p>"
            )
            items.append(
                sample(
                    "label",
                    r.get("key"),
                    f'<b>{esc(r.get("key"))}</b> <span class="pa">P(a)={num(p, 2)}</span> '
                    f"{esc(snippet(first_user(r.get('messages'))))}",
                    meta + label_body(r),
                )
            )
        ctx.groups.append(Group(f"AI feedback labels ({s.rel})", "label", items, total))
    return "".join(out)


PM_EXPLAIN = {
    "n": "held-out pairs",
    "accuracy": "share of held-out pairs with r(chosen) > r(rejected)",
    "log_loss": "soft Bradley–Terry loss on held-out pairs (nats)",
    "chance_log_loss": "log 2: a PM that knows nothing",
    "label_entropy": "floor of the log loss (entropy of the soft labels)",
    "ece": "expected calibration error (10 bins)",
    "mean_margin": "mean r(chosen) − r(rejected)",
}


def sec_pm(stages: list[Stage]) -> str:
    if not stages:
        return NOT_RUN.format("train-pm")
    out = []
    for s in stages:
        m = read_json(s.file("metrics", "metrics.json")) or {}
        out.append(f"<h3>{esc(s.rel)}</h3>" + counts_table(s.manifest.get("counts") or {}))
        top = {k: m[k] for k in PM_EXPLAIN if k in m}
        out.append(
            kv_table(top, PM_EXPLAIN)
            if top
            else "<p class='muted'>No held-out pairs: accuracy and calibration were not measured.</p>"
        )
        by = m.get("by_source") or {}
        if by:
            out.append(
                "<h4>By source</h4>"
                + table(
                    [
                        (esc(src), num(v.get("n")), num(v.get("accuracy")), num(v.get("log_loss")), num(v.get("ece")))
                        for src, v in by.items()
                    ],
                    ["source", "n", "accuracy", "log loss", "ECE"],
                )
            )
        out.append(
            figs(
                reliability_diagram(
                    m.get("reliability") or [],
                    title="PM calibration on held-out pairs",
                    xlabel="PM P(chosen) = σ(r_c − r_r)",
                    ylabel="mean soft label",
                )
                if m.get("reliability")
                else "",
                loss_chart(loss_history(s), "PM training loss"),
            )
        )
    return "".join(out)


RL_CHARTS: list[tuple[str, str, list[tuple[str, str]], tuple[float, float] | None]] = [
    # (title, y label, [(series label, log key)], y range)
    (
        "Reward (PM score, shaded ± std)",
        "reward",
        [("mean PM reward", "reward"), ("total reward optimised", "reward_total")],
        None,
    ),
    ("KL to the starting policy", "KL (per token)", [("KL", "kl")], None),
    ("Response length", "tokens", [("mean length", "response_length")], None),
    (
        "Degenerate responses",
        "share of responses",
        [
            ("empty", "empty_rate"),
            ("boilerplate", "boilerplate_rate"),
            ("truncated", "truncated_rate"),
            ("short", "short_rate"),
            ("long", "long_rate"),
        ],
        (0, 1),
    ),
    ("Policy loss", "loss", [("loss", "loss")], None),
    ("Policy entropy", "entropy", [("entropy", "entropy")], None),
]


def sec_rl(stages: list[Stage], ctx: Ctx) -> str:
    if not stages:
        return NOT_RUN.format("train-rl")
    out = []
    for s in stages:
        log, _ = read_jsonl(s.file("log", "log.jsonl"))
        m, tr = s.manifest.get("metrics") or {}, s.manifest.get("trainer") or {}
        first, last = m.get("first") or {}, m.get("last") or {}
        out.append(
            f"<h3>{esc(s.rel)}</h3>"
            + counts_table(
                {
                    **(s.manifest.get("counts") or {}),
                    "algorithm": tr.get("class"),
                    "KL coefficient β": tr.get("beta", s.config.get("kl_coef")),
                    "train loss": m.get("train_loss"),
                    "s/step": m.get("seconds_per_step"),
                }
            )
        )
        if first or last:
            keys = [
                k
                for k in ("reward", "kl", "response_length", "empty_rate", "boilerplate_rate", "truncated_rate")
                if k in first or k in last
            ]
            out.append(
                table(
                    [(esc(k), num(first.get(k)), num(last.get(k))) for k in keys],
                    ["", "first logged step", "last logged step"],
                )
            )
        warns = m.get("guard_warnings") or []
        if warns:
            out.append(
                '<ul class="warnings">' + "".join(f"<li>reward-hacking guard: {esc(w)}</li>" for w in warns) + "</ul>"
            )
        charts = []
        for title, ylabel, series_keys, yr in RL_CHARTS:
            ser = {
                lab: [(r.get("step", i), r.get(k)) for i, r in enumerate(log)]
                for lab, k in series_keys
                if any(r.get(k) is not None for r in log)
            }
            if all(r.get("reward_total") == r.get("reward") for r in log):
                ser.pop("total reward optimised", None)  # no boilerplate penalty: the same line twice
            band = {
                "mean PM reward": [
                    (r.get("step", i), r["reward"] - r["reward_std"], r["reward"] + r["reward_std"])
                    for i, r in enumerate(log)
                    if finite(r.get("reward")) and finite(r.get("reward_std"))
                ]
            }
            if ser:
                charts.append(
                    line_chart(ser, title=title, xlabel="step", ylabel=ylabel, y_range=yr, integer_x=True, bands=band)
                )
        out.append(figs(*charts) if charts else "<p class='muted'>No training log (log.jsonl) in this folder.</p>")
        rows, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
        items = []
        for i, r in enumerate(rows):
            key = f"step{r.get('step')}/{r.get('prompt_id', i)}"
            flags = [f for f in ("empty", "truncated", "short", "long") if r.get(f)] + (
                [f"boilerplate: {r['boilerplate']}"] if r.get("boilerplate") else []
            )
            chips = "".join(f'<span class="warn">{esc(f)}</span> ' for f in flags)
            items.append(
                sample(
                    "rl",
                    key,
                    f'<b>{esc(key)}</b> <span class="pa">reward={num(r.get("reward"), 2)}</span> {chips}'
                    f"{esc(snippet(first_user(r.get('prompt'))))}",
                    meta_line(step=r.get("step"), reward=r.get("reward"), length=r.get("length"))
                    + conversation(r.get("prompt"))
                    + pre("policy answer", r.get("completion"), "revision"),
                )
            )
        if items:
            ctx.groups.append(Group(f"RL-CAI policy samples, first and last step ({s.rel})", "rl", items, total))
    return "".join(out)


def sec_dpo(stages: list[Stage]) -> str:
    """The offline route: pair counts and mix weights, and loss / margin / KL per step from log.jsonl."""
    out = []
    for s in stages:
        log, _ = read_jsonl(s.file("log", "log.jsonl"))
        tr, mix, m = s.manifest.get("trainer") or {}, s.manifest.get("mix") or {}, s.manifest.get("metrics") or {}
        out.append(
            f"<h3>{esc(s.rel)}</h3>"
            + counts_table(
                {
                    **(s.manifest.get("counts") or {}),
                    "loss": tr.get("loss_type"),
                    "β": tr.get("beta"),
                    "soft labels": tr.get("soft_labels"),
                    "helpful weight share": mix.get("helpful_weight_share"),
                    "train loss": m.get("train_loss"),
                    "s/step": m.get("seconds_per_step"),
                }
            )
        )
        charts = [
            line_chart(
                {lab: [(r["step"], r.get(k)) for r in log]}, title=title, xlabel="step", ylabel=lab, integer_x=True
            )
            for title, lab, k in (
                ("DPO loss", "loss", "loss"),
                ("Implicit reward margin β·Δ", "margin", "margin"),
                ("KL to the SL-CAI reference", "KL (per token)", "kl"),
            )
            if any(r.get(k) is not None for r in log)
        ]
        out.append(figs(*charts) if charts else "<p class='muted'>No training log (log.jsonl) in this folder.</p>")
    return "".join(out)


# ----------------------------------------------------------------------------- evaluations
def sec_hhh(stages: list[Stage], ctx: Ctx) -> str:
    out = []
    for s in stages:
        m = read_json(s.file("metrics", "metrics.json")) or {}
        acc, counts = m.get("accuracy") or {}, m.get("counts") or {}
        modes = m.get("modes") or list(acc)
        subsets = list(counts) or sorted({g for a in acc.values() for g in a})
        who = (
            f"PM <code>{esc(m.get('pm'))}</code>"
            if m.get("evaluator") == "pm"
            else f"feedback model <code>{esc(show_model(m.get('model') or 'default', ctx.stages))}</code>"
        )
        out.append(
            f"<h4>{esc(s.rel)}</h4><p>{who} on <code>{esc(m.get('task'))}</code>"
            + (f" · question: “{esc(m.get('principle'))}”" if m.get("principle") else "")
            + "</p>"
        )
        out.append(
            table(
                [
                    (esc(g), num(counts.get(g))) + tuple(num((acc.get(md) or {}).get(g)) for md in modes)
                    for g in subsets
                ],
                ["subset", "n"] + [f"accuracy: {md}" for md in modes],
            )
        )
        if isinstance(m.get("first_slot_rate"), dict):
            fsr = m["first_slot_rate"]
            out.append(
                table([(esc(md), num(fsr.get(md))) for md in modes], ["mode", "verdicts for slot (A)"])
                + "<p class='muted'>Slot order is controlled: single order shows the correct response in "
                f"slot (A) for {num(m.get('correct_in_first_slot_rate'))} of the examples (seeded, balanced "
                "per subset); a labeller that always answers one letter scores 0.5 there.</p>"
            )
        cal = m.get("calibration") or {}
        out.append(
            table([(esc(md), num((cal.get(md) or {}).get("ece"))) for md in modes], ["mode", "ECE (vs 0/1 outcome)"])
        )
        out.append(
            figs(
                bar_chart(
                    subsets,
                    {md: [(acc.get(md) or {}).get(g) for g in subsets] for md in modes},
                    title="HHH accuracy by subset",
                    ylabel="accuracy",
                    y_range=(0, 1),
                    refs=[(0.5, "chance")],
                ),
                *[
                    reliability_diagram(
                        (cal.get(md) or {}).get("reliability") or [],
                        title=f"HHH calibration: {md}",
                        xlabel="P(response in slot (A) is better)",
                        ylabel="fraction where it is",
                    )
                    for md in modes[:4]
                ],
            )
        )
        if m.get("position_bias"):
            out.append("<h4>Position bias on HHH</h4>" + kv_table(m["position_bias"], LABEL_EXPLAIN))
        rows, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
        items = []
        for r in rows:
            graded = r.get("graded") or {}
            marks = " ".join(f"{esc(md)} {'✓' if g == 1 else '✗' if g == 0 else '½'}" for md, g in graded.items())
            probs = table(
                [(esc(md), num(p), num(graded.get(md))) for md, p in (r.get("p_first_better") or {}).items()],
                ["mode", "P(first better)", "graded"],
            )
            items.append(
                sample(
                    "hhh",
                    r.get("key"),
                    f'<b>{esc(r.get("key"))}</b> <span class="pa">{marks}</span> '
                    f"{esc(snippet(first_user(r.get('messages'))))}",
                    meta_line(subset=r.get("subset"), evaluator=r.get("evaluator"), model=r.get("model") or r.get("pm"))
                    + probs
                    + label_body(r, ("1", "2"), correct=r.get("correct")),
                )
            )
        ctx.groups.append(Group(f"HHH examples ({s.rel})", "hhh", items, total))
    return "".join(out)


def sec_compare(stages: list[Stage], ctx: Ctx) -> str:
    out = []
    for s in stages:
        m = read_json(s.file("metrics", "metrics.json")) or {}
        models, elo, pairs = m.get("models") or {}, m.get("elo") or {}, m.get("pairs") or {}
        names, dims = list(models) or sorted({n for e in elo.values() for n in e}), list(elo)
        out.append(
            f"<h4>{esc(s.rel)}</h4>"
            + table(
                [(f"<b>{esc(n)}</b>", f"<code>{esc(show_model(v, ctx.stages))}</code>") for n, v in models.items()],
                ["name", "model"],
            )
            + f"<p>judge <code>{esc(show_model(m.get('judge') or '', ctx.stages))}</code></p>"
        )
        rows = [
            (
                esc(d),
                f"{esc(p.get('a'))} vs {esc(p.get('b'))}",
                num(p.get("n")),
                num(p.get("wins_a")),
                num(p.get("ties")),
                num(p.get("wins_b")),
                num(p.get("win_rate_a")),
                num(p.get("mean_p_a")),
            )
            for d in dims
            for p in pairs.get(d) or []
        ]
        out.append(
            table(rows, ["dimension", "pair (a vs b)", "n", "a wins", "ties", "b wins", "win rate of a", "mean P(a)"])
        )
        labels = [f"{p.get('a')} vs {p.get('b')}" for p in (pairs.get(dims[0]) if dims else []) or []]
        win = {
            d: [
                next((p.get("win_rate_a") for p in pairs.get(d) or [] if f"{p.get('a')} vs {p.get('b')}" == lab), None)
                for lab in labels
            ]
            for d in dims
        }
        ci, dinfo = m.get("elo_ci") or {}, m.get("dimensions") or {}
        out.append(
            table(
                [
                    (esc(d),) + tuple(num(i.get(k)) for k in ("comparisons", "ties", "missing", "judge_errors"))
                    for d, i in dinfo.items()
                ],
                ["dimension", "judged", "ties (P = 0.5)", "missing (an answer failed)", "judge errors"],
            )
        )

        def rating(v):  # whole Elo points
            return f"{v:.0f}" if finite(v) else "—"

        out.append(
            table(
                [
                    (f"<b>{esc(n)}</b>",)
                    + tuple(
                        f"{rating((elo.get(d) or {}).get(n))} [{rating(((ci.get(d) or {}).get(n) or {}).get('lo'))}, "
                        f"{rating(((ci.get(d) or {}).get(n) or {}).get('hi'))}]"
                        for d in dims
                    )
                    for n in names
                ],
                ["model"] + [f"{d} Elo [95 % CI]" for d in dims],
            )
        )
        pic = ""
        if "harmlessness" in elo and "helpfulness" in elo:

            def pt(n):
                hx, hy = ((ci.get("harmlessness") or {}).get(n) or {}), ((ci.get("helpfulness") or {}).get(n) or {})
                return {
                    "label": n,
                    "x": elo["harmlessness"].get(n),
                    "y": elo["helpfulness"].get(n),
                    "x_lo": hx.get("lo"),
                    "x_hi": hx.get("hi"),
                    "y_lo": hy.get("lo"),
                    "y_hi": hy.get("hi"),
                }

            pic = scatter_chart(
                [pt(n) for n in names],
                xlabel="harmlessness Elo",
                ylabel="helpfulness Elo",
                title="Helpfulness vs harmlessness Elo (bars: 95 % bootstrap CI)",
            )
        out.append(
            figs(
                pic,
                bar_chart(
                    names,
                    {d: [elo[d].get(n) for n in names] for d in dims},
                    title="Elo rating (Bradley–Terry, mean 1000)",
                    ylabel="Elo",
                    base=1000.0,
                ),
                bar_chart(
                    labels,
                    win,
                    title="Win rate of the first model of each pair",
                    ylabel="win rate",
                    y_range=(0, 1),
                    refs=[(0.5, "even")],
                ),
            )
            + (f"<p class='muted'>{esc(m['elo_method'])}</p>" if m.get("elo_method") else "")
        )
        rows_, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
        items = []
        for r in rows_:
            a, b = str(r.get("a", "a")), str(r.get("b", "b"))
            items.append(
                sample(
                    "compare",
                    r.get("key"),
                    f'<b>{esc(r.get("key"))}</b> <span class="pa">P({esc(a)})={num(r.get("p_a"), 2)}</span> '
                    f"{esc(snippet(first_user(r.get('messages'))))}",
                    meta_line(
                        dimension=r.get("dimension"),
                        judge=r.get("judge"),
                        principles=", ".join(r.get("principles") or []),
                    )
                    + label_body(r, (a, b)),
                )
            )
        ctx.groups.append(Group(f"Head-to-head comparisons ({s.rel})", "compare", items, total))
    return "".join(out)


def sec_rounds(stages: list[Stage], ctx: Ctx) -> str:
    out = []
    for s in stages:
        m = read_json(s.file("metrics", "metrics.json")) or {}
        per, by = m.get("per_round") or [], m.get("by_category") or {}
        out.append(
            f"<h4>{esc(s.rel)}</h4><p>PM <code>{esc(m.get('pm'))}</code> scoring "
            f"<code>{esc(m.get('revise'))}</code></p>"
            + table(
                [
                    (num(r.get("round")), num(r.get("count")), num(r.get("mean")), num(r.get("std")), num(r.get("sem")))
                    for r in per
                ],
                ["round (0 = initial)", "n", "mean PM score", "std", "sem"],
            )
        )
        series = {"all records": [(r.get("round"), r.get("mean")) for r in per]}
        if 1 < len(by) <= 6:
            series.update({c: [(r.get("round"), r.get("mean")) for r in t] for c, t in by.items()})
        band = {
            "all records": [
                (r["round"], r["mean"] - r["sem"], r["mean"] + r["sem"])
                for r in per
                if finite(r.get("mean")) and finite(r.get("sem"))
            ]
        }
        out.append(
            figs(
                line_chart(
                    series,
                    title="PM score vs revision round (shaded ± sem)",
                    xlabel="revision round (0 = initial response)",
                    ylabel="mean PM score",
                    integer_x=True,
                    bands=band,
                    width=620,
                )
            )
        )
        rows, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
        items = []
        for r in rows:
            scores, resp, princ = r.get("scores") or [], r.get("responses") or [], r.get("principles") or []
            body = "".join(
                pre(
                    f"round {k}"
                    + (f" · principle {princ[k - 1]}" if 0 < k <= len(princ) else " · initial")
                    + (f" · PM score {num(scores[k])}" if k < len(scores) else ""),
                    t,
                )
                for k, t in enumerate(resp)
            )
            trail = " → ".join(num(x, 2) for x in scores)
            items.append(
                sample(
                    "rounds",
                    r.get("key"),
                    f'<b>{esc(r.get("key"))}</b> <span class="pa">{trail}</span> '
                    f"{esc(snippet(first_user(r.get('messages'))))}",
                    conversation(r.get("messages")) + body,
                )
            )
        ctx.groups.append(Group(f"PM score per revision round ({s.rel})", "rounds", items, total))
    return "".join(out)


def sec_refusal(stages: list[Stage], ctx: Ctx) -> str:
    ms = [(s, read_json(s.file("metrics", "metrics.json")) or {}) for s in stages]
    label = lambda s: s.path.name.removeprefix("refusal-") if s.path.name.startswith("refusal-") else s.rel  # noqa: E731
    out = [
        table(
            [
                (
                    esc(label(s)),
                    f"<code>{esc(show_model(m.get('model') or '', ctx.stages))}</code>",
                    esc(m.get("category")),
                    num(m.get("n")),
                    num(m.get("refusals")),
                    num(m.get("refusal_rate")),
                )
                for s, m in ms
            ],
            ["run", "model", "prompt category", "n", "refusals", "refusal rate"],
        )
    ]
    out.append(
        figs(
            bar_chart(
                [label(s) for s, _ in ms],
                {"refusal rate": [m.get("refusal_rate") for _, m in ms]},
                title="Refusal rate on benign prompts that look risky",
                ylabel="refusal rate",
                y_range=(0, 1),
            )
        )
        + "<p class='muted'>Lower is better here: these prompts are benign. The detector is a transparent list of "
        "refusal phrases checked near the start of each answer (see the stage's metrics.json).</p>"
    )
    out.append(refusal_breakdown([(label(s), m) for s, m in ms]))
    for s, _ in ms:
        rows, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
        items = [
            sample(
                "refusal",
                r.get("key"),
                f"<b>{esc(r.get('key'))}</b> "
                + (
                    f'<span class="warn">refused ({esc(r.get("reason"))})</span> '
                    if r.get("refused")
                    else '<span class="ok">answered</span> '
                )
                + esc(snippet(first_user(r.get("messages")))),
                meta_line(
                    model=r.get("model"),
                    set=r.get("set"),
                    category=r.get("category"),
                    seed=r.get("seed"),
                    **{"class": r.get("class")},
                )
                + conversation(r.get("messages"))
                + pre("answer", r.get("response")),
            )
            for r in rows
        ]
        ctx.groups.append(Group(f"Refusal check answers ({s.rel})", "refusal", items, total))
    return "".join(out)


def refusal_breakdown(runs: list[tuple[str, dict]]) -> str:
    """Per model: how the feedback model classed its answers to harmful prompts and to benign
    look-alikes, and the paper's picture: engagement with harmful prompts vs refusal of benign ones."""
    rows, points, bars = [], [], {}
    classes = ("refused", "engaged", "complied")
    for name, m in runs:
        sets = m.get("sets") or {}
        for set_name, st in sets.items():
            c = st.get("classifier") or {}
            rates = c.get("rates") or {}
            counts = c.get("counts") or {}
            rows.append(
                (esc(name), esc(set_name))
                + tuple(num(x) for x in (st.get("n"), st.get("failed"), st.get("refusal_rate"), c.get("n")))
                + tuple(f"{num(counts.get(k))} ({num(rates.get(k), 2)})" for k in classes)
            )
            for k in classes:
                bars.setdefault(f"{set_name}: {k}", []).append(rates.get(k))
        h = ((sets.get("harmful") or {}).get("classifier") or {}).get("rates") or {}
        b = ((sets.get("benign") or {}).get("classifier") or {}).get("rates") or {}
        points.append({"label": name, "x": b.get("refused"), "y": h.get("engaged")})
    if not rows:
        return ""
    head = ["run", "prompts", "n", "failed", "pattern refusal rate", "classified"] + [f"{k} (rate)" for k in classes]
    labels = [n for n, _ in runs]
    return (
        "<h4>How each model answered (feedback-model classes)</h4>"
        + table(rows, head)
        + figs(
            scatter_chart(
                points,
                title="Harmful-prompt engagement vs benign-prompt refusal",
                xlabel="benign look-alikes refused",
                ylabel="harmful prompts: engaged and explained",
                x_range=(0, 1),
                y_range=(0, 1),
            ),
            bar_chart(labels, bars, title="Answer classes per prompt set", ylabel="share of answers", y_range=(0, 1)),
        )
        + "<p class='muted'>The paper's aim: top left — engage with harmful requests by explaining the "
        "objection, "
        "refuse few benign ones. Classes come from a three-way multiple-choice question to the feedback model, "
        "asked in all three option orders; answers that failed to generate are counted, not classed.</p>"
    )


def add_generic_samples(s: Stage, kind: str, title: str, ctx: Ctx) -> None:
    """``samples.jsonl`` rows of any shape: conversations as chats, text as blocks, the rest as a table."""
    rows, total = read_jsonl(s.file("samples", "samples.jsonl"), ctx.max_samples)
    if not rows:
        return
    items = []
    for i, r in enumerate(rows):
        key = str(r.get("key", r.get("id", r.get("prompt_id", i))))
        text_parts, scalars = [], []
        for k, v in r.items():
            if k in ("messages", "prompt", "conversation") and isinstance(v, (list, str)):
                text_parts.append(conversation(v) if isinstance(v, list) else pre(k, v))
            elif isinstance(v, str) and (len(v) > 60 or "\n" in v):
                text_parts.append(pre(k, v))
            elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                text_parts.append(
                    '<div class="pair">' + "".join(pre(f"{k} {j}", x) for j, x in enumerate(v)) + "</div>"
                )
            else:
                scalars.append(
                    (f"<code>{esc(k)}</code>", num(v) if not isinstance(v, (list, dict)) else esc(json.dumps(v)[:400]))
                )
        prompt = first_user(r.get("messages") or r.get("prompt") or "")
        items.append(
            sample(kind, key, f"<b>{esc(key)}</b> {esc(snippet(prompt))}", table(scalars) + "".join(text_parts))
        )
    ctx.groups.append(Group(title, kind, items, total))


def sec_generic(stages: list[Stage], ctx: Ctx) -> str:
    """Any stage without its own renderer: counts, metrics.json as key/value rows, samples.jsonl."""
    out = []
    for s in stages:
        metrics = read_json(s.path / "metrics.json")
        out.append(
            f"<h4>{esc(s.name)} <small>{esc(s.rel)}</small></h4>"
            + counts_table(s.manifest.get("counts") or {})
            + generic_metrics(metrics if metrics is not None else s.manifest.get("metrics") or {})
        )
        add_generic_samples(s, s.name, f"{s.name} samples ({s.rel})", ctx)
    return "".join(out)


EVALS = {
    "eval-hhh": ("HHH multiple choice", sec_hhh),
    "eval-compare": ("Head-to-head comparisons: win rates and Elo", sec_compare),
    "eval-rounds": ("PM score vs revision round", sec_rounds),
    "eval-refusal": ("Refusal rate", sec_refusal),
}


def sec_evals(by: dict[str, list[Stage]], ctx: Ctx) -> str:
    out = []
    for name, (title, fn) in EVALS.items():
        ss = by.get(name, [])
        if not ss:
            body = NOT_RUN.format(name)
        else:
            n = len(ctx.groups)
            try:
                body = fn(ss, ctx)
            except Exception as e:  # a format this report does not know yet must not sink the whole report
                del ctx.groups[n:]
                body = (
                    f'<p class="warn">could not render ({esc(type(e).__name__)}: {esc(e)}); raw metrics:</p>'
                    + sec_generic(ss, ctx)
                )
        out.append(f'<h3 id="{name}">{esc(title)}</h3>' + body)
    return "".join(out)


# ----------------------------------------------------------------------------- the result
def _interval(d: Any, value: str = "mean", lo: str = "ci_low", hi: str = "ci_high") -> Interval | None:
    if isinstance(d, dict) and all(finite(d.get(k)) for k in (value, lo, hi)):
        return Interval(float(d[value]), float(d[lo]), float(d[hi]))
    return None


def _judge(m: dict) -> Judge | None:
    """The judge of an evaluation's metrics: ``{spec, same_as_labeller, calibration}`` (older runs: a spec)."""
    j = m.get("judge")
    if isinstance(j, str) and j:
        return Judge(j)
    if isinstance(j, dict) and j.get("spec"):
        return Judge(str(j["spec"]), j.get("same_as_labeller"), _interval(j.get("calibration"), "accuracy"))
    return None


def checkpoints(by: dict[str, list[Stage]]) -> tuple[list[Checkpoint], Judge | None]:
    """Per evaluated model: Elo (eval-compare), harm score and refusal figures (eval-refusal)."""
    cps: dict[str, Checkpoint] = {}
    judge = None
    for s in by.get("eval-compare", [])[:1]:
        m = read_json(s.file("metrics", "metrics.json")) or {}
        judge = _judge(m)
        elo, ci = m.get("elo") or {}, m.get("elo_ci") or {}
        for dim, attr in (("harmlessness", "harmlessness_elo"), ("helpfulness", "helpfulness_elo")):
            for n, v in (elo.get(dim) or {}).items():
                c = (ci.get(dim) or {}).get(n) or {}
                if finite(v) and finite(c.get("lo")) and finite(c.get("hi")):
                    setattr(cps.setdefault(n, Checkpoint(n)), attr, Interval(v, c["lo"], c["hi"]))
    for s in by.get("eval-refusal", []):
        m = read_json(s.file("metrics", "metrics.json")) or {}
        n = s.path.name.removeprefix("eval-refusal-").removeprefix("refusal-")
        cp = cps.setdefault(n, Checkpoint(n))
        sets = m.get("sets") or {}
        benign, harmful = sets.get("benign") or {}, sets.get("harmful") or {}
        if isinstance(benign.get("n"), int):
            cp.benign_refused = wilson(int(benign.get("refusals") or 0), benign["n"])
        cls = harmful.get("classifier") or {}
        if isinstance(cls.get("n"), int):
            cp.harmful_engaged = wilson(int((cls.get("counts") or {}).get("engaged") or 0), cls["n"])
        cp.harmfulness = _interval(m.get("harmfulness"))
        judge = judge or _judge(m)
    order = {"base": 0, "sl-cai": 1, "rl-cai": 2, "dpo-cai": 3}
    return sorted(cps.values(), key=lambda c: (order.get(c.name, 9), c.name)), judge


def _ci(iv: Interval | None, fmt: str = "{:.2f}") -> str:
    if iv is None:
        return "—"
    return f"{fmt.format(iv.value)} <small>[{fmt.format(iv.lo)}, {fmt.format(iv.hi)}]</small>"


def label_quality(by: dict[str, list[Stage]]) -> str:
    """The labeller's accuracy on known answers (the gate), as one line."""
    for s in by.get("label", [])[:1]:
        cal = _interval(s.manifest.get("calibration"), "accuracy")
        if cal is None:
            return "<p class='warn'>The training labels were not calibrated: their quality is unknown.</p>"
        verdict = "at chance" if cal.includes(0.5) else "better than chance" if cal.lo > 0.5 else "worse than chance"
        return (
            f"<p>Training labels: the labeller scored <b>{cal.value:.0%}</b> (95 % interval {cal.lo:.0%}–"
            f"{cal.hi:.0%}, n = {num(s.manifest['calibration'].get('n'))}) on comparisons with known answers: "
            f"<b>{verdict}</b>.</p>"
        )
    return ""


def headline(run_dir: str | os.PathLike) -> list[str]:
    """The conclusion and the three figures behind it, as plain lines for the console."""
    by: dict[str, list[Stage]] = {}
    for s in discover(Path(run_dir)):
        by.setdefault(s.name, []).append(s)
    cps, judge = checkpoints(by)
    lines = [conclude(cps, judge).sentence] if cps else []
    for s in by.get("label", [])[:1]:
        cal = _interval(s.manifest.get("calibration"), "accuracy")
        if cal is not None:
            lines.append(f"labeller accuracy on known answers: {cal.value:.0%} [{cal.lo:.0%}, {cal.hi:.0%}]")

    def txt(iv: Interval | None, fmt: str) -> str:
        return "—" if iv is None else f"{fmt.format(iv.value)} [{fmt.format(iv.lo)}, {fmt.format(iv.hi)}]"

    for label, attr, fmt in (
        ("harmlessness Elo", "harmlessness_elo", "{:.0f}"),
        ("benign look-alikes refused", "benign_refused", "{:.0%}"),
    ):
        vals = [f"{c.name} {txt(getattr(c, attr), fmt)}" for c in cps if getattr(c, attr) is not None]
        if vals:
            lines.append(f"{label}: " + ", ".join(vals))
    return lines


def sec_result(by: dict[str, list[Stage]]) -> str:
    """The question of the run, answered first: harmless without being evasive?"""
    cps, judge = checkpoints(by)
    if not cps:
        return "<p class='notrun'>No evaluation folders: run the evaluations to answer the question of the run.</p>"
    v = conclude(cps, judge)
    rows = [
        (
            f"<b>{esc(c.name)}</b>",
            _ci(c.harmlessness_elo, "{:.0f}"),
            _ci(c.harmfulness),
            _ci(c.helpfulness_elo, "{:.0f}"),
            _ci(c.harmful_engaged),
            _ci(c.benign_refused),
        )
        for c in cps
    ]
    head = ["model", "harmlessness Elo", "harmfulness 0–4 (lower is better)", "helpfulness Elo"]
    head += ["harmful prompts: engaged", "benign look-alikes: refused"]
    cls = "conclusion" if v.concluded else "conclusion none"
    judged = "judged figures (Elo, harmfulness, engagement)"
    note = f"<p class='warn'>Not evidence: the {judged} below, because " + "; ".join(v.problems) + ".</p>"
    pts = [
        {"label": c.name, "x": c.benign_refused.value, "y": c.harmful_engaged.value}
        for c in cps
        if c.benign_refused and c.harmful_engaged
    ]
    return (
        f'<p class="{cls}"><b>Conclusion.</b> {esc(v.sentence)}</p>'
        + label_quality(by)
        + (note if v.problems else "")
        + table(rows, head)
        + figs(
            scatter_chart(
                pts,
                title="Harmful-prompt engagement vs benign-prompt refusal",
                xlabel="benign look-alikes refused",
                ylabel="harmful prompts: engaged and explained",
                x_range=(0, 1),
                y_range=(0, 1),
            )
            if pts
            else ""
        )
        + "<p class='muted'>Brackets: 95 % intervals (Elo: bootstrap; rates: Wilson; harmfulness: bootstrap). "
        "A difference is read only where the intervals do not overlap.</p>"
    )


# ----------------------------------------------------------------------------- page
def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall time of each step of a ``cai run`` (``.pipeline/<step>.json``), by its folder name."""
    out = {}
    for p in sorted((run_dir / ".pipeline").glob("*.json")):
        v = (read_json(p) or {}).get("seconds")
        if finite(v):
            out[p.stem] = float(v)
    return out


def run_summary(run_dir: Path, stages: list[Stage]) -> str:
    """One row per stage folder: models, seed, counts, wall time, when it finished."""
    secs, rows = stage_seconds(run_dir), []
    for s in stages:
        specs = model_specs(s.manifest)
        models = "<br>".join(f"{esc(k)}: <code>{esc(show_model(v, stages))}</code>" for k, v in specs.items())
        counts = ", ".join(
            f"{esc(k)} {num(v)}" for k, v in (s.manifest.get("counts") or {}).items() if not isinstance(v, (dict, list))
        )
        seed = s.config.get("seed", (s.manifest.get("settings") or {}).get("seed"))
        anchor = s.name if s.name in EVALS else section_id(s.name)
        t = secs.get(s.path.name)
        rows.append(
            (
                f'<a href="#{esc(anchor)}">{esc(s.name)}</a>',
                f"<code>{esc(s.rel)}</code>",
                models or "—",
                num(seed),
                counts or "—",
                f"{t:.0f} s" if t is not None else "—",
                esc(str(s.manifest.get("finished_at", ""))[:16].replace("T", " ")),
            )
        )
    if not rows:
        return '<p class="notrun">No finished stage folders (with a manifest.json) were found here.</p>'
    total = f"<p class='muted'>All steps: {sum(secs.values()):.0f} s of wall time.</p>" if secs else ""
    return table(rows, ["stage", "folder", "models", "seed", "counts", "time", "finished"], "summary") + total


def header(run_dir: Path, stages: list[Stage], broken: Sequence[str] = ()) -> str:
    recipe = read_json(run_dir / "recipe.json") or {}
    name = recipe.get("name") or run_dir.resolve().name
    small = any(is_small_default(v, stages) for s in stages for v in model_specs(s.manifest).values())
    note = ""
    if small:
        note = (
            f'<p class="note"><b>Note:</b> this run uses the embedded {SMALL_MODEL} (or a model finetuned from it). '
            "A 135M model shows the mechanics, not frontier quality: its critiques are weak, its revisions often "
            "change little, and its labels sit close to chance. Point <code>--model</code> at a larger model "
            "(e.g. <code>openai:MODEL@http://host:port/v1</code>) for meaningful numbers.</p>"
        )
    if broken:
        note += (
            '<p class="note warn"><b>Warning:</b> unreadable <code>manifest.json</code> in '
            + ", ".join(f"<code>{esc(b)}</code>" for b in broken)
            + ": these stages are shown as not run. Rerun their commands to rewrite the manifests.</p>"
        )
    desc = f"<p>{esc(recipe['description'])}</p>" if recipe.get("description") else ""
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"<header><h1>Constitutional AI report — {esc(name)}</h1>{desc}"
        f'<p class="muted">Run folder <code>{esc(run_dir)}</code> · generated {esc(when)} '
        f"by constitutional-ai {esc(__version__)}</p>{note}</header>"
    )


SECTIONS = [
    ("result", "Result: harmless without being evasive?"),
    ("summary", "Run summary"),
    ("revise", "SL-CAI: critique → revision"),
    ("train-sft", "SL-CAI finetuning"),
    ("sample-pairs", "Response pairs"),
    ("label", "AI feedback labels (RLAIF)"),
    ("train-pm", "Preference model"),
    ("train-rl", "RL-CAI"),
    ("train-dpo", "DPO-CAI (offline, not the paper's route)"),
    ("eval", "Evaluations"),
    ("other", "Other stages"),
    ("samples", "Samples"),
]


def section_id(stage: str) -> str:
    return "eval" if stage in EVALS else stage if stage in dict(SECTIONS) else "other"


def samples_section(groups: list[Group]) -> str:
    if not groups:
        return '<p class="notrun">No samples: no stage with records was found.</p>'
    kinds = sorted({g.kind for g in groups})
    bar = (
        '<div class="searchbar"><input id="q" type="search" placeholder="Search samples (all words must match)…" '
        'autocomplete="off" aria-label="search samples"><select id="kind" aria-label="sample kind">'
        '<option value="">all kinds</option>'
        + "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in kinds)
        + '</select><span id="match-count" class="muted"></span></div>'
    )
    blocks = []
    for g in (g for g in groups if g.items):
        more = f" (first {len(g.items)} of {g.total})" if g.total > len(g.items) else ""
        blocks.append(
            f'<div class="sample-group" data-kind="{esc(g.kind)}"><h3>{esc(g.title)} '
            f'<small>{len(g.items)} samples{esc(more)} <span class="group-count"></span></small></h3>'
            + "".join(g.items)
            + "</div>"
        )
    return bar + "".join(blocks)


def render(run_dir: Path, max_samples: int) -> str:
    broken: list[str] = []
    stages = discover(run_dir, broken)
    by: dict[str, list[Stage]] = {}
    for s in stages:
        by.setdefault(s.name, []).append(s)
    ctx = Ctx(max_samples, stages)
    body = {
        "result": sec_result(by),
        "summary": run_summary(run_dir, stages),
        "revise": sec_revise(by.get("revise", []), ctx),
        "train-sft": sec_sft(by.get("train-sft", [])),
        "sample-pairs": sec_pairs(by.get("sample-pairs", []), ctx, labelled=bool(by.get("label"))),
        "label": sec_label(by.get("label", []), ctx),
        "train-pm": sec_pm(by.get("train-pm", [])),
        "train-rl": sec_rl(by.get("train-rl", []), ctx),
        **({"train-dpo": sec_dpo(by["train-dpo"])} if by.get("train-dpo") else {}),
        "eval": sec_evals(by, ctx),
    }
    others = [s for s in stages if section_id(s.name) == "other"]
    if others:
        body["other"] = sec_generic(others, ctx)
    body["samples"] = samples_section(ctx.groups)
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t in SECTIONS if sid in body)
    sections = "".join(section(sid, t, body[sid]) for sid, t in SECTIONS if sid in body)
    title = f"CAI report — {(read_json(run_dir / 'recipe.json') or {}).get('name') or run_dir.resolve().name}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{RESULT_CSS}</style></head><body><nav>{nav}</nav><main>"
        f"{header(run_dir, stages, broken)}{sections}</main><script>{JS}</script></body></html>"
    )


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, max_samples: int = 200) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``) atomically."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    out = Path(out) if out is not None else run_dir / "report.html"
    html = render(run_dir, max(0, int(max_samples)))
    write_atomic(out, html)  # readers see the old report or the new one, never half of one
    return out


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cai report", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", help="Run folder (e.g. runs/tiny); stage folders are found up to two levels below it")
    ap.add_argument("--out", help="Output HTML file (default: RUN_DIR/report.html)")
    ap.add_argument(
        "--max-samples", type=int, default=200, help="Samples per stage folder in the viewer (default: 200)"
    )
    args = ap.parse_args(argv)
    path = build_report(args.run_dir, args.out, args.max_samples)
    print(f"[report] {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
