"""Small pure functions that return inline SVG (and PNG data URIs) for the report's figures.

Every function takes plain numbers and strings and returns markup; every interpolated string goes through
:func:`markupsafe.escape`, so the results may be marked safe in the template. Styling (fonts, grid colours) lives in
the report's CSS (classes ``grid``, ``axis``, ``tick``, ``label``, ``title``, ``series``, ``marker``).
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from markupsafe import escape

TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ID_COLOR, OOD_COLOR = "#2b6cb0", "#e07b39"
BLUES = ((0.0, (247, 251, 255)), (0.25, (198, 219, 239)), (0.5, (107, 174, 214)), (0.75, (33, 113, 181)),
         (1.0, (8, 48, 107)))  # matplotlib "Blues" stops
CHAR_WIDTH = 6.3  # approximate px per character of 11 px sans-serif text, for label placement


@lru_cache(maxsize=64)
def palette(n: int) -> tuple[str, ...]:
    """``n`` distinct hex colours: "tab10" up to 10, seaborn "husl" beyond (any count)."""
    if n <= 0:
        return ()
    if n <= len(TAB10):
        return TAB10[:n]
    import seaborn as sns  # deferred: pulls in matplotlib

    return tuple(sns.color_palette("husl", n).as_hex())


def num(x: float) -> str:
    """Compact SVG coordinate."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else ("0" if s == "-0" else s)


def nice_ticks(lo: float, hi: float, target: int = 4) -> tuple[list[float], float]:
    """Round tick positions (1/2/5 x 10^k steps) covering ``[lo, hi]``; returns ``(ticks, step)``.

    >>> nice_ticks(0.0, 1.0)
    ([0.0, 0.25, 0.5, 0.75, 1.0], 0.25)
    """
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks, step


def tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-12))
    if decimals and not float(f"{step:.{decimals}f}") == step:  # 0.25 needs two decimals
        decimals += 1
    text = f"{v:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


# --------------------------------------------------------------------------------------------- PNG


def png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 image ``(h, w)``, ``(h, w, 1)``, ``(h, w, 3)`` or ``(h, w, 4)`` as PNG (Pillow, imported on
    first use): grey, RGB or RGBA, 8 bits per channel, lossless."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"png_bytes needs uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"png_bytes needs (h, w[, 1|3|4]), got {a.shape}")
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[2] == 1 else a))  # L, RGB or RGBA
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def blues(t: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the "Blues" colour map, shape ``t.shape + (3,)``."""
    t = np.clip(np.nan_to_num(np.asarray(t, dtype=np.float64)), 0.0, 1.0)
    xs = [s for s, _ in BLUES]
    channels = [np.interp(t, xs, [c[i] for _, c in BLUES]) for i in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


# --------------------------------------------------------------------------------------------- axes


class Axes:
    """A plot rectangle inside an SVG of ``width`` x ``height`` with linear scales for ``xlim`` and ``ylim``."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float], width: int, height: int, *,
                 margins: tuple[int, int, int, int] = (50, 12, 12, 38)) -> None:
        self.x0, self.x1 = xlim if xlim[1] > xlim[0] else (xlim[0] - 0.5, xlim[0] + 0.5)
        self.y0, self.y1 = ylim if ylim[1] > ylim[0] else (ylim[0] - 0.5, ylim[0] + 0.5)
        self.width, self.height = width, height
        self.ml, self.mr, self.mt, self.mb = margins
        self.pw, self.ph = width - self.ml - self.mr, height - self.mt - self.mb

    def sx(self, x: float) -> float:
        return self.ml + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        return self.mt + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def frame(self, xlabel: str, ylabel: str, *, xticks: tuple[list[float], float] | None = None,
              yticks: tuple[list[float], float] | None = None, xtick_text: Sequence[str] | None = None) -> list[str]:
        """Grid lines, tick labels, the L-shaped axis and the axis labels."""
        parts: list[str] = []
        yt, ys = yticks or nice_ticks(self.y0, self.y1)
        for t in yt:
            if self.y0 - 1e-9 <= t <= self.y1 + 1e-9:
                y = num(self.sy(t))
                parts.append(f'<line class="grid" x1="{self.ml}" x2="{num(self.ml + self.pw)}" y1="{y}" y2="{y}"/>')
                parts.append(f'<text class="tick" x="{self.ml - 5}" y="{num(self.sy(t) + 3.5)}" text-anchor="end">'
                             f"{escape(tick_label(t, ys))}</text>")
        xt, xs = xticks or nice_ticks(self.x0, self.x1, 5)
        for i, t in enumerate(xt):
            if self.x0 - 1e-9 <= t <= self.x1 + 1e-9:
                text = xtick_text[i] if xtick_text is not None else tick_label(t, xs)
                parts.append(f'<text class="tick" x="{num(self.sx(t))}" y="{self.mt + self.ph + 14}" '
                             f'text-anchor="middle">{escape(text)}</text>')
        parts.append(f'<path class="axis" d="M{self.ml},{self.mt} V{num(self.mt + self.ph)} H{num(self.ml + self.pw)}"/>')
        parts.append(f'<text class="label" x="{num(self.ml + self.pw / 2)}" y="{self.height - 5}" '
                     f'text-anchor="middle">{escape(xlabel)}</text>')
        parts.append(f'<text class="label" transform="translate(12 {num(self.mt + self.ph / 2)}) rotate(-90)" '
                     f'text-anchor="middle">{escape(ylabel)}</text>')
        return parts


def _open(cls: str, width: int, height: int, label: str) -> str:
    return (f'<svg class="{escape(cls)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{escape(label)}">')


def _title(text: str, width: int) -> str:
    return f'<text class="title" x="{width / 2:g}" y="13" text-anchor="middle">{escape(text)}</text>' if text else ""


def _no_data(width: int, height: int, text: str = "no data") -> str:
    return f'<text class="tick" x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle">{escape(text)}</text>'


# --------------------------------------------------------------------------------------------- line charts


@dataclass(frozen=True)
class Series:
    """One line: ``points`` (x, y); ``model`` names the model it belongs to (``data-model`` attribute)."""

    name: str
    color: str
    points: Sequence[tuple[float, float]]
    model: str | None = None
    dash: bool = False
    width: float = 1.8
    opacity: float = 1.0
    markers: bool = False


def _finite_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if math.isfinite(float(x)) and math.isfinite(float(y))]


def line_chart(series: Sequence[Series], *, xlabel: str, ylabel: str, title: str = "",
               xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
               width: int = 360, height: int = 240, integer_x: bool = False, diagonal: bool = False,
               cls: str = "chart", xticks: Sequence[float] | None = None,
               xtick_text: Sequence[str] | None = None) -> str:
    """Inline ``<svg>`` with one path per series (each in a ``<g data-model>`` with a ``<title>``) on shared axes.

    ``diagonal`` draws the dashed y = x line (ROC curves); ``xticks``/``xtick_text`` place custom x ticks.
    """
    cleaned = [(s, _finite_points(s.points)) for s in series]
    all_pts = [p for _, pts in cleaned for p in pts]
    parts = [_open(cls, width, height, title or f"{ylabel} by {xlabel}"), _title(title, width)]
    if not all_pts:
        parts += [_no_data(width, height), "</svg>"]
        return "".join(parts)
    xs, ys = [p[0] for p in all_pts], [p[1] for p in all_pts]
    if xlim is None:
        xlim = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    if ylim is None:
        lo, hi = min(ys), max(ys)
        pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 0.05)
        yt, _ = nice_ticks(lo - pad, hi + pad)
        ylim = (min(yt[0], lo - pad), max(yt[-1], hi + pad))
    ax = Axes(xlim, ylim, width, height, margins=(50, 12, 24 if title else 10, 36))
    xt = None
    if xticks is not None:
        xt = ([float(t) for t in xticks], 1.0)
    elif integer_x:
        ticks, step = nice_ticks(xlim[0], xlim[1], 5)
        if step != int(step):  # whole epochs only
            step = float(max(1, math.ceil(step)))
            ticks = [float(t) for t in range(math.ceil(xlim[0] / step) * int(step), math.floor(xlim[1]) + 1, int(step))]
        xt = (ticks, step)
    parts += ax.frame(xlabel, ylabel, xticks=xt, xtick_text=xtick_text)
    if diagonal:
        parts.append(f'<path class="diagonal" d="M{num(ax.sx(xlim[0]))},{num(ax.sy(ylim[0]))} '
                     f'L{num(ax.sx(xlim[1]))},{num(ax.sy(ylim[1]))}"/>')
    for s, pts in cleaned:
        if not pts:
            continue
        attr = f' data-model="{escape(s.model)}"' if s.model is not None else ""
        d = " ".join(f"{'M' if i == 0 else 'L'}{num(ax.sx(x))},{num(ax.sy(y))}" for i, (x, y) in enumerate(pts))
        style = f' stroke-dasharray="5 3"' if s.dash else ""
        opacity = f' stroke-opacity="{s.opacity:g}"' if s.opacity < 1 else ""
        parts.append(f'<g class="series-group"{attr}><title>{escape(s.name)}</title>'
                     f'<path class="series" d="{d}" stroke="{escape(s.color)}" stroke-width="{s.width:g}"{style}{opacity}/>')
        if s.markers or len(pts) == 1:
            for x, y in pts:
                parts.append(f'<circle class="marker" cx="{num(ax.sx(x))}" cy="{num(ax.sy(y))}" r="2.6" '
                             f'fill="{escape(s.color)}"><title>{escape(s.name)}: {escape(_short(x))}, '
                             f"{escape(_short(y))}</title></circle>")
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _short(v: float) -> str:
    return f"{v:.4g}"


# --------------------------------------------------------------------------------------------- labelled scatter


@dataclass(frozen=True)
class LabelledPoint:
    """One model in a 2-D plane: position, optional ± error bars (std over seeds)."""

    name: str
    color: str
    x: float
    y: float
    xerr: float | None = None
    yerr: float | None = None


def labelled_scatter(points: Sequence[LabelledPoint], *, xlabel: str, ylabel: str, width: int = 560,
                     height: int = 380, cls: str = "chart plane") -> str:
    """Inline ``<svg>``: one labelled dot per model (``<g data-model>``), error bars where given; labels are placed
    beside their dot, on the side with room, avoiding the labels already placed."""
    pts = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    parts = [_open(cls, width, height, f"{ylabel} against {xlabel}")]
    if not pts:
        parts += [_no_data(width, height), "</svg>"]
        return "".join(parts)

    def extent(vals: list[float], errs: list[float]) -> tuple[float, float]:
        lo = min(v - e for v, e in zip(vals, errs))
        hi = max(v + e for v, e in zip(vals, errs))
        pad = (hi - lo) * 0.12 or max(abs(hi) * 0.05, 0.05)
        return lo - pad, hi + pad

    xlim = extent([p.x for p in pts], [p.xerr or 0.0 for p in pts])
    ylim = extent([p.y for p in pts], [p.yerr or 0.0 for p in pts])
    ax = Axes(xlim, ylim, width, height, margins=(56, 16, 12, 38))
    parts += ax.frame(xlabel, ylabel)
    placed: list[tuple[float, float, float, float]] = []  # label boxes (x0, y0, x1, y1)
    dots = [(p, ax.sx(p.x), ax.sy(p.y)) for p in pts]
    for _, cx, cy in dots:  # the dots themselves are obstacles for labels
        placed.append((cx - 5, cy - 5, cx + 5, cy + 5))
    for p, cx, cy in dots:
        g = [f'<g class="point" data-model="{escape(p.name)}"><title>{escape(p.name)}: {escape(xlabel)} '
             f"{escape(_short(p.x))}{_pm(p.xerr)}, {escape(ylabel)} {escape(_short(p.y))}{_pm(p.yerr)}</title>"]
        if p.xerr:
            g.append(f'<path class="errorbar" d="M{num(ax.sx(p.x - p.xerr))},{num(cy)} H{num(ax.sx(p.x + p.xerr))}" '
                     f'stroke="{escape(p.color)}"/>')
        if p.yerr:
            g.append(f'<path class="errorbar" d="M{num(cx)},{num(ax.sy(p.y - p.yerr))} V{num(ax.sy(p.y + p.yerr))}" '
                     f'stroke="{escape(p.color)}"/>')
        g.append(f'<circle class="dot" cx="{num(cx)}" cy="{num(cy)}" r="5" fill="{escape(p.color)}"/>')
        tw, th = CHAR_WIDTH * len(p.name), 12.0
        options = [(cx + 8, cy + 4, "start"), (cx - 8, cy + 4, "end"), (cx, cy - 9, "middle"), (cx, cy + 17, "middle"),
                   (cx + 8, cy - 8, "start"), (cx + 8, cy + 16, "start"), (cx - 8, cy - 8, "end"), (cx - 8, cy + 16, "end")]
        best = None
        for tx, ty, anchor in options:
            x0 = tx if anchor == "start" else tx - tw if anchor == "end" else tx - tw / 2
            box = (x0, ty - th + 2, x0 + tw, ty + 2)
            inside = box[0] >= 2 and box[2] <= width - 2 and box[1] >= 2 and box[3] <= height - 2
            clash = sum(_overlap(box, b) for b in placed)
            score = clash + (0 if inside else 1e6)
            if best is None or score < best[0]:
                best = (score, tx, ty, anchor, box)
        assert best is not None
        _, tx, ty, anchor, box = best
        placed.append(box)
        g.append(f'<text class="point-label" x="{num(tx)}" y="{num(ty)}" text-anchor="{anchor}">{escape(p.name)}</text>')
        g.append("</g>")
        parts.append("".join(g))
    parts.append("</svg>")
    return "".join(parts)


def _pm(err: float | None) -> str:
    return f" \u00b1 {err:.2g}" if err else ""


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


# --------------------------------------------------------------------------------------------- grouped bars


@dataclass(frozen=True)
class BarSeries:
    """One model's bars: a value (and optional ± error) per category, None where it has none."""

    name: str
    color: str
    values: Sequence[float | None]
    errors: Sequence[float | None] | None = None


def bar_chart(categories: Sequence[str], series: Sequence[BarSeries], *, xlabel: str, ylabel: str, title: str = "",
              width: int = 560, height: int = 260, max_labelled: int = 40) -> str:
    """Inline ``<svg>``: one group of bars per category, one bar per series (``<g data-model>``, ``<title>`` per
    bar), error bars where given; category labels under the groups when there are at most ``max_labelled``."""
    parts = [_open("chart bars", width, height, title or f"{ylabel} by {xlabel}"), _title(title, width)]
    vals = [float(v) for s in series for v in s.values if v is not None and math.isfinite(float(v))]
    if not categories or not series or not vals:
        parts += [_no_data(width, height), "</svg>"]
        return "".join(parts)
    tops = [float(v) + float(e or 0.0) for s in series for v, e in zip(s.values, s.errors or [None] * len(s.values))
            if v is not None and math.isfinite(float(v))]
    lo, hi = min(0.0, min(vals)), max(0.0, max(tops))
    yt, _ = nice_ticks(lo, hi if hi > lo else lo + 1)
    ylim = (min(yt[0], lo), max(yt[-1], hi if hi > lo else lo + 1))
    ax = Axes((0.0, float(len(categories))), ylim, width, height, margins=(50, 12, 24 if title else 10, 36))
    labelled = len(categories) <= max_labelled
    ticks = ([i + 0.5 for i in range(len(categories))], 1.0) if labelled else ([], 1.0)
    parts += ax.frame(xlabel, ylabel, xticks=ticks, xtick_text=[str(c) for c in categories] if labelled else None)
    slot = 0.8 / len(series)
    for j, s in enumerate(series):
        g = [f'<g class="series-group" data-model="{escape(s.name)}">']
        errors = list(s.errors) if s.errors is not None else [None] * len(s.values)
        for i, (v, e) in enumerate(zip(s.values, errors)):
            if v is None or not math.isfinite(float(v)):
                continue
            v = float(v)
            x0 = ax.sx(i + 0.1 + j * slot)
            x1 = ax.sx(i + 0.1 + (j + 1) * slot)
            y0, y1 = sorted((ax.sy(0.0 if ylim[0] <= 0 <= ylim[1] else ylim[0]), ax.sy(v)))
            tip = f"{s.name} · {categories[i]}: {_short(v)}" + (_pm(e) if e else "")
            g.append(f'<rect class="bar" x="{num(x0)}" y="{num(y0)}" width="{num(max(x1 - x0 - 0.5, 0.5))}" '
                     f'height="{num(max(y1 - y0, 0.5))}" fill="{escape(s.color)}"><title>{escape(tip)}</title></rect>')
            if e:
                cx = (x0 + x1) / 2
                g.append(f'<path class="errorbar" d="M{num(cx)},{num(ax.sy(v - float(e)))} '
                         f'V{num(ax.sy(v + float(e)))}" stroke="#333333"/>')
        g.append("</g>")
        parts.append("".join(g))
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- reliability


def reliability_chart(diagram: dict[str, list], *, title: str, width: int = 250, height: int = 250,
                      note: str = "") -> str:
    """Reliability diagram: accuracy per confidence bin (bars), the gap to the bin's mean confidence (red), and the
    diagonal of perfect calibration. ``diagram`` has ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``.
    ``note`` (e.g. the ECE) is written in the plot's upper-left corner."""
    ax = Axes((0.0, 1.0), (0.0, 1.0), width, height, margins=(44, 10, 24, 36))
    ticks = ([0.0, 0.25, 0.5, 0.75, 1.0], 0.25)
    parts = [_open("chart reliability", width, height, title), _title(title, width)]
    parts += ax.frame("confidence", "accuracy", xticks=ticks, yticks=ticks)
    if note:
        parts.append(f'<text class="note" x="{ax.ml + 6}" y="{ax.mt + 13}">{escape(note)}</text>')
    total = sum(int(c) for c in diagram.get("count", []) if c) or 1
    for lo, hi, count, conf, acc in zip(diagram.get("lower", []), diagram.get("upper", []), diagram.get("count", []),
                                        diagram.get("confidence", []), diagram.get("accuracy", [])):
        if not count or acc is None or conf is None:
            continue
        x0, x1 = ax.sx(lo), ax.sx(hi)
        tip = (f"confidence ({lo:.2f}, {hi:.2f}]: {count} examples ({100 * count / total:.1f} %), "
               f"accuracy {acc:.3f}, mean confidence {conf:.3f}")
        parts.append(f'<g class="bin"><title>{escape(tip)}</title>'
                     f'<rect class="acc" x="{num(x0 + 0.5)}" y="{num(ax.sy(acc))}" width="{num(max(x1 - x0 - 1, 0.5))}" '
                     f'height="{num(max(ax.sy(0) - ax.sy(acc), 0))}"/>')
        top, bottom = (conf, acc) if conf > acc else (acc, conf)
        side = "over" if conf > acc else "under"  # over-confident: the gap sits above the bar, else inside it
        parts.append(f'<rect class="gap {side}" x="{num(x0 + 0.5)}" y="{num(ax.sy(top))}" width="{num(max(x1 - x0 - 1, 0.5))}" '
                     f'height="{num(max(ax.sy(bottom) - ax.sy(top), 0))}"/></g>')
    parts.append(f'<path class="diagonal" d="M{num(ax.sx(0))},{num(ax.sy(0))} L{num(ax.sx(1))},{num(ax.sy(1))}"/>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- histograms


def score_histogram(edges: Sequence[float], id_counts: Sequence[float], ood_counts: Sequence[float], *, title: str,
                    xlabel: str = "score (higher = ID)", width: int = 280, height: int = 170) -> str:
    """ID and OOD score histograms as overlaid filled steps, each normalised to a density (area 1)."""
    e = np.asarray(edges, dtype=np.float64)
    parts = [_open("chart histogram", width, height, title), _title(title, width)]
    if len(e) < 2 or len(id_counts) != len(e) - 1 or len(ood_counts) != len(e) - 1 or not np.isfinite(e).all():
        parts += [_no_data(width, height), "</svg>"]
        return "".join(parts)
    widths = np.diff(e)
    widths[widths <= 0] = 1.0

    def density(c: Sequence[float]) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        return c / (c.sum() * widths) if c.sum() > 0 else np.zeros_like(c)

    d_id, d_ood = density(id_counts), density(ood_counts)
    top = float(max(d_id.max(), d_ood.max(), 1e-12))
    ax = Axes((float(e[0]), float(e[-1])), (0.0, top * 1.08), width, height, margins=(12, 8, 22, 34))
    xt, xs = nice_ticks(float(e[0]), float(e[-1]), 4)
    parts += [p for p in ax.frame(xlabel, "", xticks=(xt, xs)) if 'class="grid"' not in p and 'text-anchor="end"' not in p]
    for cls, d, color, name, counts in (("id", d_id, ID_COLOR, "ID", id_counts), ("ood", d_ood, OOD_COLOR, "OOD", ood_counts)):
        path = [f"M{num(ax.sx(e[0]))},{num(ax.sy(0))}"]
        for i, v in enumerate(d):
            path.append(f"L{num(ax.sx(e[i]))},{num(ax.sy(v))} L{num(ax.sx(e[i + 1]))},{num(ax.sy(v))}")
        path.append(f"L{num(ax.sx(e[-1]))},{num(ax.sy(0))} Z")
        n = int(np.sum(counts))
        parts.append(f'<path class="hist {cls}" d="{" ".join(path)}" fill="{color}" stroke="{color}">'
                     f"<title>{name}: {n} examples</title></path>")
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- heatmaps


def confusion_heatmap(counts: np.ndarray, class_names: Sequence[str], *, title: str, max_labelled: int = 30,
                      size: int = 340) -> str:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class) as SVG rects with tooltips;
    above ``max_labelled`` classes, one embedded PNG (nearest-neighbour scaled) without per-class labels."""
    counts = np.asarray(counts, dtype=np.int64)
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    labelled = k <= max_labelled
    longest = max((len(str(c)) for c in class_names[:k]), default=1) if labelled else 0
    lab = min(int(CHAR_WIDTH * 0.9 * longest) + 10, 90) if labelled else 6
    ml, mt, mb = lab + 18, 24, lab + 18
    cell = (size - ml - 8) / max(k, 1)
    width, height = size, int(mt + cell * k + mb)
    parts = [_open("chart confusion", width, height, title), _title(title, width)]
    colors = blues(frac)
    if labelled:
        show_text = k <= 12
        for i in range(k):
            for j in range(k):
                x, y = ml + j * cell, mt + i * cell
                tip = (f"true {class_names[i] if i < len(class_names) else i} \u2192 predicted "
                       f"{class_names[j] if j < len(class_names) else j}: {counts[i, j]} ({100 * frac[i, j]:.1f} % of row)")
                parts.append(f'<rect x="{num(x)}" y="{num(y)}" width="{num(cell + 0.3)}" height="{num(cell + 0.3)}" '
                             f'fill="{_hex(colors[i, j])}"><title>{escape(tip)}</title></rect>')
                if show_text and counts[i, j]:
                    dark = frac[i, j] > 0.55
                    txt = f"{100 * frac[i, j]:.0f}"
                    parts.append(f'<text class="cell{" dark" if dark else ""}" x="{num(x + cell / 2)}" '
                                 f'y="{num(y + cell / 2 + 3.5)}" text-anchor="middle">{txt}</text>')
        for i in range(k):
            name = str(class_names[i]) if i < len(class_names) else str(i)
            name = name if len(name) <= 14 else name[:13] + "\u2026"
            parts.append(f'<text class="tick" x="{ml - 4}" y="{num(mt + (i + 0.5) * cell + 3.5)}" '
                         f'text-anchor="end">{escape(name)}</text>')
            bx, by = ml + (i + 0.5) * cell, mt + k * cell + 5
            parts.append(f'<text class="tick" transform="translate({num(bx + 3.5)} {num(by)}) rotate(-90)" '
                         f'text-anchor="end">{escape(name)}</text>')
    else:
        uri = data_uri(png_bytes(colors))
        parts.append(f'<image x="{ml}" y="{mt}" width="{num(cell * k)}" height="{num(cell * k)}" '
                     f'preserveAspectRatio="none" style="image-rendering:pixelated" href="{uri}"/>')
    parts.append(f'<rect class="frame-line" x="{ml}" y="{mt}" width="{num(cell * k)}" height="{num(cell * k)}"/>')
    parts.append(f'<text class="label" x="{num(ml + cell * k / 2)}" y="{height - 4}" text-anchor="middle">predicted</text>')
    parts.append(f'<text class="label" transform="translate(11 {num(mt + cell * k / 2)}) rotate(-90)" '
                 f'text-anchor="middle">true</text>')
    parts.append("</svg>")
    return "".join(parts)
