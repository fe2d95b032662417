"""The report's building blocks: inline-SVG charts, small HTML pieces, the page's CSS and JS.

No matplotlib, no external fonts, scripts or styles: everything ends up inside one HTML file.
Each chart function returns one ``<svg>`` element as a string, with a title, axis labels and a
legend, sized by ``width``/``height`` in CSS pixels (the ``viewBox`` lets it shrink on narrow
screens). Missing values (``None``/NaN) leave gaps instead of failing; a chart with no data at
all says so inside the frame. Every piece of text — labels, and above all model output in
the HTML pieces — goes through ``html.escape``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f"]
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10000 or a < 0.001:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    if float(v).is_integer():
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if not (finite(lo) and finite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _extent(values: Iterable, pad: float = 0.05, include: Sequence[float] = ()) -> tuple[float, float]:
    vals = [v for v in values if finite(v)] + [v for v in include if finite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if lo == hi:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    span = hi - lo
    return lo - span * pad, hi + span * pad


class _Frame:
    """Plot area, coordinate mapping, axes, grid, title, labels and legend of one chart."""

    def __init__(self, width, height, title, xlabel, ylabel, x_range, y_range, left=62, legend_rows=0):
        self.w, self.h = width, height
        self.left, self.right = left, 16
        self.top = 34 + 16 * legend_rows
        self.bottom = 48
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.parts: list[str] = []

    @property
    def pw(self):
        return self.w - self.left - self.right

    @property
    def ph(self):
        return self.h - self.top - self.bottom

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def y(self, v: float) -> float:
        return self.top + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph

    def y_axis(self, ticks: Sequence[float] | None = None) -> None:
        """Grid lines and tick labels; call first: it widens the left margin to fit the labels."""
        ticks = [
            t
            for t in (ticks if ticks is not None else nice_ticks(self.y0, self.y1))
            if self.y0 - 1e-12 <= t <= self.y1 + 1e-12
        ]
        self.left = max(self.left, int(30 + 6.5 * max((len(_fmt(t)) for t in ticks), default=0)))
        for t in ticks:
            yy = self.y(t)
            self.parts.append(
                f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid" stroke="#e3e3e3"/>'
            )
            self.parts.append(
                f'<text x="{self.left - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{_fmt(t)}</text>'
            )

    def x_axis_numeric(self, integer: bool = False) -> None:
        ticks = nice_ticks(self.x0, self.x1, 6)
        if integer:
            ticks = sorted({round(t) for t in ticks if abs(t - round(t)) < 1e-9})
        for t in ticks:
            if self.x0 - 1e-12 <= t <= self.x1 + 1e-12:
                xx = self.x(t)
                self.parts.append(
                    f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{self.top + self.ph}" y2="{self.top + self.ph + 4}" stroke="#888"/>'
                )
                self.parts.append(
                    f'<text x="{xx:.1f}" y="{self.top + self.ph + 16}" text-anchor="middle" font-size="11" fill="#555">{_fmt(t)}</text>'
                )

    def legend(self, names: Sequence[str], colors: Sequence[str], dashed: Sequence[bool] = ()) -> None:
        x, row = self.left, 0
        for i, (name, color) in enumerate(zip(names, colors)):
            wtxt = 7 * len(name) + 30
            if x + wtxt > self.w - self.right and x > self.left:
                x, row = self.left, row + 1
            yy = 30 + 16 * row
            dash = ' stroke-dasharray="4 3"' if i < len(dashed) and dashed[i] else ""
            self.parts.append(
                f'<line x1="{x}" x2="{x + 18}" y1="{yy - 4}" y2="{yy - 4}" stroke="{color}" stroke-width="3"{dash}/>'
            )
            self.parts.append(
                f'<text x="{x + 23}" y="{yy}" font-size="11" fill="#333" class="legend">{escape(name)}</text>'
            )
            x += wtxt

    def render(self, empty: bool = False) -> str:
        bx, by = self.left, self.top + self.ph
        head = [
            f'<svg class="chart" viewBox="0 0 {self.w} {self.h}" width="{self.w}" '
            f'height="{self.h}" role="img" aria-label="{escape(self.title)}" {FONT}>',
            f"<title>{escape(self.title)}</title>",
            f'<rect x="0" y="0" width="{self.w}" height="{self.h}" fill="#fff"/>',
            f'<text x="{self.w / 2:.0f}" y="16" text-anchor="middle" font-size="13" font-weight="600" fill="#222">{escape(self.title)}</text>',
        ]
        axes = [
            f'<line x1="{bx}" x2="{bx + self.pw}" y1="{by}" y2="{by}" stroke="#888"/>',
            f'<line x1="{bx}" x2="{bx}" y1="{self.top}" y2="{by}" stroke="#888"/>',
            f'<text x="{bx + self.pw / 2:.0f}" y="{self.h - 8}" text-anchor="middle" font-size="12" fill="#333">{escape(self.xlabel)}</text>',
            f'<text transform="translate(14 {self.top + self.ph / 2:.0f}) rotate(-90)" text-anchor="middle" font-size="12" fill="#333">{escape(self.ylabel)}</text>',
        ]
        if empty:
            axes.append(
                f'<text x="{bx + self.pw / 2:.0f}" y="{self.top + self.ph / 2:.0f}" text-anchor="middle" font-size="13" fill="#999">no data</text>'
            )
        return "".join(head + self.parts + axes) + "</svg>"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 520,
    height: int = 300,
    y_range: tuple[float, float] | None = None,
    integer_x: bool = False,
    ref: tuple[float, str] | None = None,
    markers: bool | None = None,
    bands: Mapping[str, Sequence[tuple[float, float | None, float | None]]] | None = None,
) -> str:
    """Lines through (x, y) points, one per named series; ``None`` y values break the line.

    ``ref`` = (y, label) draws a dashed horizontal reference line (e.g. chance level).
    ``bands`` = {series name: [(x, lo, hi), ...]} shades a range around that series (± std).
    """
    pts = {k: [(x, y) for x, y in v if finite(x)] for k, v in series.items()}
    bands = {
        k: [(x, lo, hi) for x, lo, hi in v if finite(x) and finite(lo) and finite(hi)]
        for k, v in (bands or {}).items()
        if k in pts
    }
    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v if finite(y)] + [
        b for v in bands.values() for _, lo, hi in v for b in (lo, hi)
    ]
    x_range = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_range[0] == x_range[1]:
        x_range = (x_range[0] - 1, x_range[1] + 1)
    yr = y_range or _extent(ys, include=[ref[0]] if ref else ())
    names = list(pts) + ([ref[1]] if ref else [])
    f = _Frame(
        width,
        height,
        title,
        xlabel,
        ylabel,
        x_range,
        yr,
        legend_rows=_legend_rows(names, width) if len(names) > 1 else 0,
    )
    f.y_axis()
    f.x_axis_numeric(integer=integer_x)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(pts))]
    if ref and finite(ref[0]) and yr[0] <= ref[0] <= yr[1]:
        f.parts.append(
            f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{f.y(ref[0]):.1f}" y2="{f.y(ref[0]):.1f}" '
            f'stroke="#999" stroke-dasharray="5 4"/>'
        )
    for (name, v), color in zip(pts.items(), colors):
        band = bands.get(name) or []
        if len(band) > 1:
            poly = [f"{f.x(x):.1f},{f.y(hi):.1f}" for x, _, hi in band] + [
                f"{f.x(x):.1f},{f.y(lo):.1f}" for x, lo, _ in reversed(band)
            ]
            f.parts.append(
                f'<polygon points="{" ".join(poly)}" fill="{color}" fill-opacity="0.15" stroke="none" class="band"/>'
            )
        show_markers = markers if markers is not None else len(v) <= 30
        segs, cur = [], []
        for x, y in v:
            if finite(y):
                cur.append(f"{f.x(x):.1f},{f.y(y):.1f}")
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        for s in segs:
            if len(s) > 1:
                f.parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(s)}" class="series"/>'
                )
        if show_markers or any(len(s) == 1 for s in segs):
            for x, y in v:
                if finite(y):
                    f.parts.append(
                        f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{color}">'
                        f"<title>{escape(name)}: x={_fmt(x)}, y={_fmt(y)}</title></circle>"
                    )
    if len(names) > 1:
        f.legend(names, colors + (["#999"] if ref else []), dashed=[False] * len(pts) + [True])
    return f.render(empty=not ys)


def _legend_rows(names: Sequence[str], width: int) -> int:
    if len(names) <= 1:
        return 1 if names and len(names) == 1 else 0
    x, rows = 62, 1
    for n in names:
        w = 7 * len(n) + 30
        if x + w > width - 16 and x > 62:
            x, rows = 62, rows + 1
        x += w
    return rows


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    xlabel: str = "",
    width: int = 520,
    height: int = 300,
    y_range: tuple[float, float] | None = None,
    refs: Sequence[tuple[float, str]] = (),
    value_labels: bool = True,
    base: float = 0.0,
) -> str:
    """Grouped vertical bars: one group per category, one bar per named series.

    ``refs`` = [(y, label), ...] draws dashed reference lines (e.g. "no bias = 0.5").
    Bars grow from ``base`` (up or down), e.g. 1000 for Elo ratings.
    """
    vals = [v for s in series.values() for v in s if finite(v)]
    yr = y_range or _extent(vals + [base], pad=0.08, include=[r[0] for r in refs])
    if y_range is None and base != 0:  # a non-zero baseline (Elo 1000): symmetric, so ups and downs compare
        span = max([abs(v - base) for v in vals] + [0]) * 1.15 or 50.0
        yr = (base - span, base + span)
    elif y_range is None and vals and min(vals) >= base:
        yr = (base, yr[1])
    names = list(series) + [r[1] for r in refs]
    f = _Frame(
        width,
        height,
        title,
        xlabel,
        ylabel,
        (0, max(1, len(categories))),
        yr,
        legend_rows=_legend_rows(names, width) if len(series) > 1 or refs else 0,
    )
    f.y_axis()
    n_series = max(1, len(series))
    group_w = f.pw / max(1, len(categories))
    bar_w = min(48.0, group_w * 0.8 / n_series)
    base_px = f.y(max(yr[0], min(base, yr[1])))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for ci, cat in enumerate(categories):
        gx = f.left + group_w * ci + (group_w - bar_w * n_series) / 2
        for si, (name, s) in enumerate(series.items()):
            v = s[ci] if ci < len(s) else None
            if not finite(v):
                continue
            top = f.y(min(max(v, yr[0]), yr[1]))
            x = gx + si * bar_w
            f.parts.append(
                f'<rect x="{x:.1f}" y="{min(top, base_px):.1f}" width="{bar_w - 2:.1f}" height="{abs(base_px - top):.1f}" '
                f'fill="{colors[si]}" class="bar"><title>{escape(name)} · {escape(cat)}: {_fmt(v)}</title></rect>'
            )
            if value_labels:
                f.parts.append(
                    f'<text x="{x + bar_w / 2 - 1:.1f}" y="{min(top, base_px) - 3:.1f}" text-anchor="middle" '
                    f'font-size="10" fill="#333">{_fmt(v)}</text>'
                )
        label = cat if len(cat) <= max(4, int(group_w / 6.5)) else cat[: max(3, int(group_w / 6.5) - 1)] + "…"
        f.parts.append(
            f'<text x="{f.left + group_w * (ci + 0.5):.1f}" y="{f.top + f.ph + 16}" text-anchor="middle" '
            f'font-size="11" fill="#333">{escape(label)}<title>{escape(cat)}</title></text>'
        )
    ref_colors = ["#999", "#c44", "#4a4"]
    for i, (y, _) in enumerate(refs):
        if finite(y) and yr[0] <= y <= yr[1]:
            f.parts.append(
                f'<line x1="{f.left}" x2="{f.left + f.pw}" y1="{f.y(y):.1f}" y2="{f.y(y):.1f}" '
                f'stroke="{ref_colors[i % 3]}" stroke-dasharray="5 4"/>'
            )
    if len(series) > 1 or refs:
        f.legend(
            names,
            colors + [ref_colors[i % 3] for i in range(len(refs))],
            dashed=[False] * len(series) + [True] * len(refs),
        )
    return f.render(empty=not vals)


def hbar_chart(
    labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str, width: int = 520, bar_h: int = 16
) -> str:
    """Horizontal bars (long category names, e.g. principle ids), largest first as given."""
    label_w = min(220, 12 + 7 * max((len(s) for s in labels), default=4))
    height = 34 + 48 + max(1, len(labels)) * (bar_h + 4)
    vmax = max([v for v in values if finite(v)] + [0]) or 1
    f = _Frame(width, height, title, xlabel, "", (0, vmax * 1.08), (0, max(1, len(labels))), left=label_w)
    f.x_axis_numeric(integer=all(float(v).is_integer() for v in values if finite(v)))
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = f.top + i * (bar_h + 4) + 2
        if finite(v):
            f.parts.append(
                f'<rect x="{f.left}" y="{y}" width="{f.x(v) - f.left:.1f}" height="{bar_h}" fill="{PALETTE[0]}" class="bar">'
                f"<title>{escape(lab)}: {_fmt(v)}</title></rect>"
            )
            f.parts.append(
                f'<text x="{f.x(v) + 4:.1f}" y="{y + bar_h - 4}" font-size="10" fill="#333">{_fmt(v)}</text>'
            )
        f.parts.append(
            f'<text x="{f.left - 6}" y="{y + bar_h - 4}" text-anchor="end" font-size="11" fill="#333">{escape(lab)}</text>'
        )
    return f.render(empty=not labels)


def histogram(
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int = 10,
    lo: float = 0.0,
    hi: float = 1.0,
    width: int = 520,
    height: int = 300,
) -> str:
    """Counts of values in ``bins`` equal bins on [lo, hi], bars grouped by series."""
    cats = [f"{lo + (hi - lo) * b / bins:.1f}" for b in range(bins)]
    counts = {}
    for name, vals in series.items():
        c = [0] * bins
        for v in vals:
            if finite(v) and lo <= v <= hi:
                c[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
        counts[name] = c
    return bar_chart(
        cats,
        counts,
        title=title,
        xlabel=xlabel + " (bin start)",
        ylabel="count",
        width=width,
        height=height,
        value_labels=False,
    )


def reliability_diagram(
    rows: Sequence[dict],
    *,
    title: str,
    xlabel: str = "predicted probability",
    ylabel: str = "mean target",
    width: int = 420,
    height: int = 380,
) -> str:
    """Calibration: (mean prediction, mean target) per bin, marker area ∝ count, with the
    diagonal of perfect calibration and the bin counts as grey bars along the bottom.

    ``rows`` are ``{lo, hi, count, mean_pred, mean_target}`` (``expected_calibration_error``'s table).
    """
    f = _Frame(width, height, title, xlabel, ylabel, (0, 1), (0, 1), legend_rows=1)
    f.y_axis([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    f.x_axis_numeric()
    used = [r for r in rows if r.get("count") and finite(r.get("mean_pred")) and finite(r.get("mean_target"))]
    nmax = max([r["count"] for r in used] + [1])
    for r in rows:  # count histogram, scaled to a fifth of the plot height
        if r.get("count") and finite(r.get("lo")) and finite(r.get("hi")):
            h = r["count"] / nmax * f.ph * 0.2
            f.parts.append(
                f'<rect x="{f.x(r["lo"]) + 1:.1f}" y="{f.top + f.ph - h:.1f}" width="{f.x(r["hi"]) - f.x(r["lo"]) - 2:.1f}" '
                f'height="{h:.1f}" fill="#d5d5d5"><title>{r["count"]} in [{_fmt(r["lo"])}, {_fmt(r["hi"])})</title></rect>'
            )
    f.parts.append(
        f'<line x1="{f.x(0)}" y1="{f.y(0)}" x2="{f.x(1)}" y2="{f.y(1)}" stroke="#999" stroke-dasharray="5 4" class="diagonal"/>'
    )
    if len(used) > 1:
        pts = " ".join(f"{f.x(r['mean_pred']):.1f},{f.y(r['mean_target']):.1f}" for r in used)
        f.parts.append(f'<polyline fill="none" stroke="{PALETTE[0]}" stroke-width="2" points="{pts}"/>')
    for r in used:
        rad = 3 + 7 * math.sqrt(r["count"] / nmax)
        f.parts.append(
            f'<circle cx="{f.x(r["mean_pred"]):.1f}" cy="{f.y(r["mean_target"]):.1f}" r="{rad:.1f}" fill="{PALETTE[0]}" '
            f'fill-opacity="0.75"><title>n={r["count"]}: predicted {_fmt(r["mean_pred"])}, target {_fmt(r["mean_target"])}</title></circle>'
        )
    f.legend(["model (marker area ∝ count)", "perfect calibration"], [PALETTE[0], "#999"], dashed=[False, True])
    return f.render(empty=not used)


# ----------------------------------------------------------------------------- html pieces
def esc(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


def num(v: Any, digits: int = 3) -> str:
    """A number for a table: ints as they are, floats to ``digits`` significant digits."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return esc(v)


def table(rows: Iterable[Iterable[Any]], head: Iterable[str] | None = None, cls: str = "kv") -> str:
    """Rows of already-formatted HTML cells (use ``esc``/``num`` on raw values)."""
    h = "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{h}<tbody>{body}</tbody></table>'


def counts_table(d: dict) -> str:
    """A one-row table of counts and settings (keys as the header)."""
    d = {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
    return table([[num(v) for v in d.values()]], list(d), "counts") if d else ""


def meta_line(**kv: Any) -> str:
    return '<p class="meta">' + " · ".join(f"{esc(k)} {num(v)}" for k, v in kv.items() if v not in (None, "")) + "</p>"


def kv_table(d: dict, explain: dict[str, str] | None = None) -> str:
    explain = explain or {}
    rows = [(f"<code>{esc(k)}</code>", num(v), esc(explain.get(k, ""))) for k, v in d.items()]
    return table(rows, ["metric", "value", "meaning"] if explain else None)


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted key, scalar) rows; long lists are summarised, not dumped."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and len(d) > 12:
        out.append((prefix, f"[{len(d)} items]"))
    elif isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        for i, x in enumerate(d):
            out += flatten(x, f"{prefix}[{i}]")
    else:
        out.append((prefix, d))
    return out


def generic_metrics(d: Any) -> str:
    rows = [
        (f"<code>{esc(k)}</code>", num(v) if not isinstance(v, (list, dict)) else esc(json.dumps(v)))
        for k, v in flatten(d)
    ]
    return table(rows, ["key", "value"]) if rows else "<p class='muted'>no metrics</p>"


def figs(*svgs: str) -> str:
    return '<div class="figs">' + "".join(f"<figure>{s}</figure>" for s in svgs if s) + "</div>"


def pre(label: str, text: Any, cls: str = "") -> str:
    return f'<div class="field {cls}"><div class="lbl">{esc(label)}</div><pre>{esc(text)}</pre></div>'


def conversation(messages: Any) -> str:
    if isinstance(messages, str):
        return pre("prompt", messages)
    if not isinstance(messages, list):
        return ""
    parts = []
    for m in messages:
        if isinstance(m, dict):
            parts.append(
                f'<div class="msg {esc(m.get("role"))}"><span class="role">{esc(m.get("role"))}</span>'
                f"<pre>{esc(m.get('content'))}</pre></div>"
            )
    return '<div class="conv">' + "".join(parts) + "</div>"


def first_user(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return str(m.get("content", ""))
    return ""


def snippet(s: str, n: int = 110) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def sample(kind: str, key: str, summary: str, body: str) -> str:
    return (
        f'<details class="sample" data-kind="{esc(kind)}" data-key="{esc(key)}"><summary>'
        f'<span class="tag {esc(kind)}">{esc(kind)}</span> {summary}</summary><div class="body">{body}</div></details>'
    )


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b6b;--line:#e2e2e2;--bg:#f6f7f9;--accent:#4e79a7}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 24px;display:flex;flex-wrap:wrap;gap:4px 16px}
nav a{color:var(--accent);text-decoration:none;font-size:13px}nav a:hover{text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
header,section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 20px 16px;margin:16px 0}
h1{font-size:22px;margin:6px 0}h2{font-size:18px;margin:4px 0 8px}h3{font-size:15px;margin:16px 0 6px}h4{font-size:14px;margin:10px 0 4px}
small,.muted{color:var(--muted)}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f0f1f3;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}td,th{border-bottom:1px solid var(--line);padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#444}table.summary{width:100%}table.summary td:first-child,table.summary td:last-child,table.summary code{white-space:nowrap}table.counts th{font-weight:500;color:var(--muted);font-size:12px}
.ok{color:#2e6b27;font-size:12px}ul.warnings{color:#b3261e;margin:6px 0}
.note{background:#fff8e1;border:1px solid #f1d38a;border-radius:6px;padding:8px 12px}
.notrun{color:var(--muted);font-style:italic}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:8px 0}figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:4px;background:#fff}
svg.chart{max-width:100%;height:auto;display:block}
.searchbar{position:sticky;top:37px;z-index:4;background:#fff;padding:8px 0;display:flex;gap:10px;align-items:center;border-bottom:1px solid var(--line)}
#q{flex:1;font-size:15px;padding:7px 10px;border:1px solid #bbb;border-radius:6px}#kind{padding:6px;border-radius:6px}
.sample{border:1px solid var(--line);border-radius:6px;margin:6px 0;background:#fcfcfd}
.sample>summary{cursor:pointer;padding:6px 10px;list-style-position:inside;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.sample[open]>summary{border-bottom:1px solid var(--line);background:#f3f5f8}
.sample .body{padding:6px 12px 10px}.sample[hidden],.sample-group[hidden]{display:none}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#e6ecf4;color:#2f5480;margin-right:4px}
.tag.label{background:#fdebd9;color:#8a4d0f}.tag.rl{background:#e3f2e1;color:#2e6b27}
.pa{font:12px ui-monospace,monospace;color:#8a4d0f}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0 6px;font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f7f7f9;border:1px solid #eee;border-radius:4px;padding:6px 8px}
.lbl,.role{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.msg.user pre{background:#eef4fb}.msg.assistant pre{background:#f3f9f0}.field.initial pre{background:#fff5f5}.field.revision pre{background:#f1faf1}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}.field.win pre{border-color:#59a14f;box-shadow:inset 3px 0 0 #59a14f}
details.round{margin:4px 0 4px 10px;border-left:3px solid #d7dfea;padding-left:10px}details.round>summary{cursor:pointer;font-size:13px;color:#333}
.warn{color:#b3261e;font-size:12px}.meta{font-size:12px;color:var(--muted);margin:2px 0 6px}
"""

JS = r"""
(function () {
  var box = document.getElementById('q');
  if (!box) return;
  var kind = document.getElementById('kind'), count = document.getElementById('match-count');
  var samples = Array.prototype.slice.call(document.querySelectorAll('.sample'));
  var texts = samples.map(function (s) { return s.textContent.toLowerCase(); });
  function apply(q) {
    var terms = q.toLowerCase().split(/\s+/).filter(Boolean), k = kind.value, shown = [];
    samples.forEach(function (s, i) {
      var ok = (!k || s.getAttribute('data-kind') === k) && terms.every(function (t) { return texts[i].indexOf(t) >= 0; });
      s.hidden = !ok;
      s.classList.toggle('nomatch', !ok);
      if (ok) shown.push(s);
    });
    if (terms.length && shown.length <= 10) shown.forEach(function (s) { s.open = true; });
    document.querySelectorAll('.sample-group').forEach(function (g) {
      var n = g.querySelectorAll('.sample:not([hidden])').length;
      g.querySelector('.group-count').textContent = (terms.length || k) ? '· ' + n + ' match' : '';
      g.hidden = (terms.length > 0 || !!k) && n === 0;
    });
    count.textContent = shown.length + ' of ' + samples.length + ' samples ' + (terms.length || k ? 'match' : 'shown');
  }
  function fromUrl() {
    var h = location.hash.replace(/^#/, '');
    if (h.indexOf('q=') === 0) return new URLSearchParams(h).get('q') || '';
    return new URLSearchParams(location.search).get('q') || '';
  }
  function update() {
    apply(box.value);
    try { history.replaceState(null, '', box.value ? '#q=' + encodeURIComponent(box.value) : location.pathname + location.search); } catch (e) {}
  }
  box.addEventListener('input', update);
  kind.addEventListener('change', update);
  var q0 = fromUrl();
  box.value = q0;
  apply(q0);
  if (q0) document.getElementById('samples').scrollIntoView();
})();
"""


def scatter_chart(
    points: Sequence[dict],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 460,
    height: int = 340,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Labelled points with optional error bars: each point ``{"label", "x", "y"}`` plus
    ``x_lo, x_hi, y_lo, y_hi`` (an interval); points with a missing coordinate are left out."""
    pts = [p for p in points if finite(p.get("x")) and finite(p.get("y"))]
    xs = [v for p in pts for v in (p["x"], p.get("x_lo"), p.get("x_hi"))]
    ys = [v for p in pts for v in (p["y"], p.get("y_lo"), p.get("y_hi"))]
    f = _Frame(width, height, title, xlabel, ylabel, x_range or _extent(xs, 0.12), y_range or _extent(ys, 0.12))
    f.y_axis()
    f.x_axis_numeric()
    for i, p in enumerate(pts):
        c = PALETTE[i % len(PALETTE)]
        cx, cy = f.x(p["x"]), f.y(p["y"])
        if finite(p.get("x_lo")) and finite(p.get("x_hi")):
            f.parts.append(
                f'<line x1="{f.x(p["x_lo"]):.1f}" x2="{f.x(p["x_hi"]):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                f'stroke="{c}" stroke-width="1.5"/>'
            )
        if finite(p.get("y_lo")) and finite(p.get("y_hi")):
            f.parts.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{f.y(p["y_lo"]):.1f}" y2="{f.y(p["y_hi"]):.1f}" '
                f'stroke="{c}" stroke-width="1.5"/>'
            )
        f.parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}"><title>{escape(str(p.get("label")))}: '
            f"({_fmt(p['x'])}, {_fmt(p['y'])})</title></circle>"
        )
        right = cx > f.left + 0.75 * f.pw  # labels near the right edge go to the left of their point
        anchor = ' text-anchor="end"' if right else ""
        f.parts.append(
            f'<text x="{cx - 8 if right else cx + 8:.1f}" y="{cy - 7:.1f}" font-size="11" fill="#333"'
            f"{anchor}>{escape(str(p.get('label')))}</text>"
        )
    return f.render(empty=not pts)
