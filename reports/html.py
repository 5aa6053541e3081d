"""Render loaded results as one self-contained HTML report (inline CSS + inline SVG) or a Markdown table.

All SVG markup is produced by small pure helpers that escape every interpolated string with
:func:`markupsafe.escape`; the Jinja template (autoescape on) marks only that markup safe.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import numpy as np
from markupsafe import escape

from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write_text
from reports.load import ModelResult
from reports.umap_embed import umap_2d

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
MISSING = "\u2013"  # en dash shown for absent values
ARROWS = {True: "\u2191", False: "\u2193", None: ""}
# Report defaults; ``max_points`` caps the inline SVG size (one <circle> per point).
DEFAULT_UMAP: dict[str, Any] = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "seed": 0, "max_points": 5000}
UMAP_OPTIONS = frozenset(DEFAULT_UMAP) | {"use_faiss"}
SERIES_COLORS = {"train_loss": "#1f77b4", "val_accuracy": "#ff7f0e"}
SERIES_LABELS = {"train_loss": "train loss", "val_accuracy": "val accuracy"}


# --------------------------------------------------------------------------------------------- summary table


@dataclass(frozen=True)
class Column:
    """One metric column of the summary table."""

    key: str
    higher_is_better: bool | None
    description: str  # analysis name and settings, for the header tooltip
    settings_differ: bool = False

    @property
    def arrow(self) -> str:
        return ARROWS[self.higher_is_better]


@dataclass(frozen=True)
class Cell:
    """One metric value: ``value`` is None when the model lacks the metric (or it is not a number)."""

    value: float | None
    text: str
    best: bool = False


@dataclass(frozen=True)
class SummaryTable:
    columns: list[Column]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)


def format_sig(value: float, digits: int = 4) -> str:
    """Format to ``digits`` significant digits, fixed-point for moderate magnitudes (``0.97 -> '0.9700'``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "\u221e" if value > 0 else "-\u221e"
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits - 1}e}")
    exp = math.floor(math.log10(abs(rounded)))
    if -4 <= exp < digits + 2:
        return f"{rounded:.{max(0, digits - 1 - exp)}f}"
    return f"{rounded:.{digits - 1}e}"


def _metric_value(entry: Any) -> float | None:
    raw = entry.get("value") if isinstance(entry, Mapping) else entry
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    return float(raw)


def _describe(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return ""
    analysis = str(entry.get("analysis") or "")
    settings = entry.get("settings")
    if isinstance(settings, Mapping) and settings:
        return f"{analysis}: {_format_options(settings)}" if analysis else _format_options(settings)
    return analysis


def summary_table(results: Sequence[ModelResult]) -> SummaryTable:
    """One row per model, one column per metric present in any model (first-seen order), bests marked.

    A column's direction is the models' common ``higher_is_better``; when it is null, absent or the models
    disagree, nothing is marked. Ties are all marked; a column with fewer than two numeric values has no best.
    """
    keys: list[str] = []
    for r in results:
        keys.extend(k for k in r.metrics if k not in keys)
    columns: list[Column] = []
    for key in keys:
        entries = [r.metrics[key] for r in results if key in r.metrics]
        dirs = {e.get("higher_is_better") for e in entries if isinstance(e, Mapping)}
        direction = dirs.pop() if len(dirs) == 1 and None not in dirs else None
        direction = direction if isinstance(direction, bool) else None
        descriptions = list(dict.fromkeys(_describe(e) for e in entries))
        columns.append(Column(key, direction, " | ".join(d for d in descriptions if d), len(descriptions) > 1))

    values = [[_metric_value(r.metrics[k]) if k in r.metrics else None for k in keys] for r in results]
    rows: list[tuple[str, list[Cell]]] = [(r.name, []) for r in results]
    for j, col in enumerate(columns):
        finite = [v[j] for v in values if v[j] is not None and math.isfinite(v[j])]
        best = None
        if col.higher_is_better is not None and len(finite) >= 2:
            best = max(finite) if col.higher_is_better else min(finite)
        for i, row in enumerate(rows):
            v = values[i][j]
            text = MISSING if v is None else format_sig(v)
            row[1].append(Cell(v, text, best is not None and v == best))
    return SummaryTable(columns, rows)


# --------------------------------------------------------------------------------------------- SVG helpers


@lru_cache(maxsize=64)
def class_palette(n: int) -> tuple[str, ...]:
    """``n`` distinct hex colours: seaborn "tab10" up to 10 classes, "husl" beyond (any count)."""
    import seaborn as sns  # deferred: pulls in matplotlib

    if n <= 0:
        return ()
    return tuple(sns.color_palette("tab10" if n <= 10 else "husl", n).as_hex())


def _num(x: float) -> str:
    """Compact SVG coordinate."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def svg_scatter(
    coords: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[str],
    *,
    size: int = 360,
    label: str = "UMAP scatter",
) -> str:
    """Inline ``<svg>``: one ``<circle>`` per 2-D point, filled by class, each with a ``<title>`` naming its class.

    Aspect ratio is preserved; points are drawn in a fixed pseudo-random order so no class is systematically
    painted over the others. All text is escaped.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    pad = 10.0
    n = len(coords)
    parts = [
        f'<svg class="scatter" viewBox="0 0 {size} {size}" role="img" aria-label="{escape(label)}">',
        f'<rect class="frame" x="0.5" y="0.5" width="{size - 1}" height="{size - 1}"/>',
    ]
    if n:
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        span = float(max((hi - lo).max(), 1e-12))
        scale = (size - 2 * pad) / span
        offset = pad + ((size - 2 * pad) - (hi - lo) * scale) / 2
        xy = (coords - lo) * scale + offset
        r = 3.0 if n <= 500 else 2.2 if n <= 2000 else 1.6 if n <= 6000 else 1.1
        for i in np.random.default_rng(0).permutation(n):
            lab = int(labels[i])
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            color = palette[lab % len(palette)] if palette and lab >= 0 else "#777777"
            parts.append(
                f'<circle cx="{_num(xy[i, 0])}" cy="{_num(size - xy[i, 1])}" r="{r}" fill="{escape(color)}">'
                f"<title>{escape(name)}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def nice_ticks(lo: float, hi: float, target: int = 4) -> tuple[list[float], float]:
    """Round tick positions (1/2/5 x 10^k steps) covering ``[lo, hi]``; returns ``(ticks, step)``."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks, step


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-12))
    return f"{v:.{decimals}f}"


def svg_line_plot(
    points: Sequence[tuple[float, float]],
    *,
    xlabel: str,
    ylabel: str,
    color: str = "#1f77b4",
    width: int = 300,
    height: int = 200,
    integer_x: bool = True,
) -> str:
    """Inline ``<svg>`` line plot of one series with labelled, ticked axes. All text is escaped."""
    ml, mr, mt, mb = 52, 12, 12, 40
    pw, ph = width - ml - mr, height - mt - mb
    parts = [f'<svg class="lineplot" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(ylabel)} by {escape(xlabel)}">']
    pts = [(float(x), float(y)) for x, y in points]
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ylo, yhi = min(ys), max(ys)
        ypad = (yhi - ylo) * 0.08 or max(abs(yhi) * 0.05, 0.05)
        yticks, ystep = nice_ticks(ylo - ypad, yhi + ypad)
        y0, y1 = min(yticks[0], ylo - ypad), max(yticks[-1], yhi + ypad)
        xlo, xhi = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
        xticks, xstep = nice_ticks(xlo, xhi, target=5)
        if integer_x and xstep < 1:
            xticks, xstep = [float(t) for t in range(math.ceil(xlo), math.floor(xhi) + 1)], 1.0

        def sx(x: float) -> float:
            return ml + (x - xlo) / (xhi - xlo) * pw

        def sy(y: float) -> float:
            return mt + ph - (y - y0) / (y1 - y0) * ph

        for t in yticks:
            if y0 <= t <= y1:
                parts.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{_num(sy(t))}" y2="{_num(sy(t))}"/>')
                parts.append(f'<text class="tick" x="{ml - 6}" y="{_num(sy(t) + 4)}" text-anchor="end">{escape(_tick_label(t, ystep))}</text>')
        for t in xticks:
            if xlo <= t <= xhi:
                parts.append(f'<text class="tick" x="{_num(sx(t))}" y="{mt + ph + 16}" text-anchor="middle">{escape(_tick_label(t, xstep))}</text>')
        parts.append(f'<path class="axis" d="M{ml},{mt} V{mt + ph} H{ml + pw}"/>')
        path = " ".join(f"{'M' if i == 0 else 'L'}{_num(sx(x))},{_num(sy(y))}" for i, (x, y) in enumerate(pts))
        parts.append(f'<path class="series" d="{path}" stroke="{escape(color)}"/>')
        if len(pts) <= 20:
            for x, y in pts:
                parts.append(
                    f'<circle class="marker" cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="2.5" fill="{escape(color)}">'
                    f"<title>{escape(xlabel)} {escape(format_sig(x).rstrip('0').rstrip('.'))}: {escape(format_sig(y))}</title></circle>"
                )
    else:
        parts.append(f'<text class="tick" x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text>')
    parts.append(f'<text class="label" x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(
        f'<text class="label" transform="translate(13 {mt + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- page data


def _format_value(v: Any) -> str:
    if v is None or v == "" or v == {} or v == []:
        return MISSING
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return format_sig(v) if not v.is_integer() else str(v)
    return json.dumps(v, sort_keys=False, ensure_ascii=False)


def _format_options(opts: Any) -> str:
    if isinstance(opts, Mapping):
        return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in opts.items()) or MISSING
    return _format_value(opts)


def _named(entry: Any) -> tuple[Any, Any]:
    """Checkpoint metadata stores ``{"name": …, "options": {…}}`` for the method and the model."""
    if isinstance(entry, Mapping):
        return entry.get("name"), entry.get("options")
    return entry, None


def _meta_row(r: ModelResult) -> dict[str, str]:
    meta = r.meta
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    method, method_opts = _named(meta.get("method"))
    arch, _ = _named(meta.get("model"))
    dataset, _ = _named(meta.get("dataset"))
    return {
        "method": _format_value(method),
        "options": _format_options(method_opts),
        "architecture": _format_value(arch),
        "dataset": _format_value(dataset),
        "epochs": _format_value(config.get("epochs", meta.get("epochs"))),
        "seed": _format_value(config.get("seed", meta.get("seed"))),
    }


def _provenance_row(r: ModelResult) -> dict[str, str]:
    model = r.results.get("model") or {}
    sha = str(model.get("sha256") or "")
    versions = r.results.get("versions")
    return {
        "results": str(r.path),
        "source": _format_value(model.get("source")),
        "sha256": sha,
        "sha256_short": sha[:12] if sha else MISSING,
        "created": _format_value(r.results.get("created_utc")),
        "versions": _format_options(versions) if isinstance(versions, Mapping) else MISSING,
    }


def _dataset_label(r: ModelResult) -> str:
    ds = r.dataset
    name = str(ds.get("name") or "unknown dataset")
    split = ds.get("split")
    return f"{name} / {split}" if split else name


def _history_points(history: Any, key: str) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    if not isinstance(history, list):
        return pts
    for i, h in enumerate(history):
        if not isinstance(h, Mapping):
            continue
        x, y = h.get("epoch", i + 1), h.get(key)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
            pts.append((float(x), float(y)))
    return pts


def _umap_settings(umap_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(DEFAULT_UMAP)
    if umap_kwargs:
        unknown = sorted(set(umap_kwargs) - UMAP_OPTIONS)
        if unknown:
            raise EmbedlabError(f"unknown UMAP option(s) {', '.join(unknown)}; known: {', '.join(sorted(UMAP_OPTIONS))}")
        settings.update(umap_kwargs)
    return settings


def _umap_figure(r: ModelResult, settings: Mapping[str, Any]) -> dict[str, Any]:
    class_names = r.class_names
    palette = class_palette(max(len(class_names), 1))
    n_total = len(r.embeddings)
    fig: dict[str, Any] = {
        "name": r.name,
        "legend": list(zip(class_names, palette)),
        "svg": None,
        "caption": "",
        "note": "",
    }
    if n_total == 0:
        fig["note"] = "no embeddings saved"
        return fig
    if not np.isfinite(r.embeddings).all():
        fig["note"] = "UMAP skipped: the embeddings contain NaN or infinite values"
        return fig
    coords, idx = umap_2d(r.embeddings, **settings)
    fig["svg"] = svg_scatter(coords, r.labels[idx], class_names, palette, label=f"UMAP of {r.name}")
    if len(idx) < n_total:
        fig["caption"] = f"showing {len(idx)} of {n_total} points (random subsample, seed {settings['seed']})"
    else:
        fig["caption"] = f"all {n_total} points"
    return fig


def _curve_figure(r: ModelResult) -> dict[str, Any] | None:
    history = r.meta.get("history")
    plots = []
    for key in ("train_loss", "val_accuracy"):
        pts = _history_points(history, key)
        if pts:
            plots.append(svg_line_plot(pts, xlabel="epoch", ylabel=SERIES_LABELS[key], color=SERIES_COLORS[key]))
    return {"name": r.name, "plots": plots} if plots else None


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # explicit: select_autoescape() would not match the ".html.j2" suffix
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --------------------------------------------------------------------------------------------- public API


def render_report(
    results: Sequence[ModelResult],
    out_path: str | Path,
    *,
    title: str = "embedlab report",
    umap_kwargs: Mapping[str, Any] | None = None,
    generated_at: datetime | None = None,
) -> Path:
    """Write one self-contained HTML report (no external resources) for ``results``; return its path.

    ``umap_kwargs`` override the UMAP settings shared by all models (keys of :func:`reports.umap_embed.umap_2d`;
    default ``max_points`` here is 5000 to keep the page light; pass ``max_points=None`` for all points).
    """
    if not results:
        raise EmbedlabError("no results to report")
    settings = _umap_settings(umap_kwargs)
    generated = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    datasets = list(dict.fromkeys(_dataset_label(r) for r in results))
    sizes = sorted({int(n) for r in results if isinstance(n := r.dataset.get("num_examples"), int)})
    table = summary_table(results)
    umap_desc = ", ".join(
        f"{k}={'all' if k == 'max_points' and v is None else v}" for k, v in settings.items() if k != "use_faiss"
    )
    context = {
        "title": title,
        "generated": generated.strftime("%Y-%m-%d %H:%M UTC"),
        "n_models": len(results),
        "datasets": datasets,
        "num_examples": ", ".join(map(str, sizes)),
        "table": table,
        "settings_differ": [c.key for c in table.columns if c.settings_differ],
        "meta_rows": [(r.name, _meta_row(r)) for r in results],
        "provenance_rows": [(r.name, _provenance_row(r)) for r in results],
        "figures": [_umap_figure(r, settings) for r in results],
        "umap_desc": umap_desc,
        "curves": [c for r in results if (c := _curve_figure(r)) is not None],
        "series_colors": SERIES_COLORS,
    }
    html = _environment().get_template(TEMPLATE_NAME).render(**context)
    out = Path(out_path)
    atomic_write_text(out, html)
    return out


def _md_escape(text: str) -> str:
    """Escape text for a Markdown table cell (pipes, emphasis/code markers, raw HTML, newlines)."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in ("\\", "|", "*", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


def render_markdown(results: Sequence[ModelResult]) -> str:
    """A Markdown summary table: one row per model, one column per metric (best in **bold**, arrows for direction)."""
    if not results:
        raise EmbedlabError("no results to report")
    table = summary_table(results)
    header = ["model"] + [f"{_md_escape(c.key)} {c.arrow}".rstrip() for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(table.columns)]
    for name, cells in table.rows:
        vals = [f"**{c.text}**" if c.best else c.text for c in cells]
        lines.append("| " + " | ".join([_md_escape(name)] + vals) + " |")
    return "\n".join(lines) + "\n"
