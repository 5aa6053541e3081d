"""Figure data for the report from groups of results (see :mod:`embedlab.reports.aggregate`): the UMAP panels,
confusion matrices and training curves (from the arrays and the checkpoint metadata), and the analyses' plots drawn
by their kind (:data:`FIGURE_BUILDERS`), never by the analysis that wrote them.

Builders return plain dicts for the template: SVG strings (from :mod:`embedlab.reports.svg`, already escaped), JSON for the
interactive UMAP canvases (safe inside ``<script type="application/json">``), captions. Over seeds, a figure shows
what can be pooled (reliability bins and confusion counts are summed, robust accuracy and alignment/uniformity are
averaged) and otherwise the lowest seed, and its caption says which.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embedlab.errors import EmbedlabError
from embedlab.reports import svg
from embedlab.reports.aggregate import Group, metric_stat, metric_value, summarise
from embedlab.reports.load import ModelResult
from embedlab.reports.tables import format_sig
from embedlab.reports.umap_embed import umap_2d, umap_layouts, uses_faiss

DEFAULT_UMAP: dict[str, Any] = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "seed": 0,
                                "max_points": 10000, "n_epochs": 200}
UMAP_OPTIONS = frozenset(DEFAULT_UMAP) | {"use_faiss"}
QUANT = 65535  # UMAP coordinates are sent to the page as uint16
HISTORY_PANELS = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("val_accuracy", "validation accuracy"))


def json_for_script(obj: Any) -> str:
    """JSON that is safe verbatim inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the
    line separators are \\u-escaped, so no string in it can close the element or open a comment."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def model_colors(groups: Sequence[Group]) -> dict[str, str]:
    colors = svg.palette(len(groups))
    return {g.name: colors[i] for i, g in enumerate(groups)}


def _seed_note(g: Group, pooled: str | None = None) -> str:
    if g.n == 1:
        return ""
    if pooled:
        return f"{pooled} over {g.n} seeds"
    return f"seed {g.first.seed} shown (lowest of {g.n} seeds)"


# --------------------------------------------------------------------------------------------- UMAP


def umap_settings(umap_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(DEFAULT_UMAP)
    if umap_kwargs:
        unknown = sorted(set(umap_kwargs) - UMAP_OPTIONS)
        if unknown:
            raise EmbedlabError(f"unknown UMAP option(s) {', '.join(unknown)}; known: {', '.join(sorted(UMAP_OPTIONS))}")
        settings.update(umap_kwargs)
    return settings


@dataclass
class Atlases:
    """Thumbnail sprite sheets, one per distinct thumbnail array (models evaluated on one test set share one)."""

    items: list[dict[str, Any]]
    _by_hash: dict[str, int]

    @classmethod
    def empty(cls) -> "Atlases":
        return cls([], {})

    def add(self, thumbs: np.ndarray) -> int:
        key = hashlib.sha1(np.ascontiguousarray(thumbs).tobytes() + str(thumbs.shape).encode()).hexdigest()
        if key not in self._by_hash:
            n, h, w, c = thumbs.shape
            cols = max(1, math.ceil(math.sqrt(n)))
            rows = max(1, math.ceil(n / cols))
            sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
            for i in range(n):
                r, q = divmod(i, cols)
                sheet[r * h:(r + 1) * h, q * w:(q + 1) * w] = thumbs[i]
            self._by_hash[key] = len(self.items)
            self.items.append({"id": f"atlas-{len(self.items)}", "uri": svg.data_uri(svg.png_bytes(sheet)),
                               "w": int(w), "h": int(h), "cols": int(cols), "count": int(n)})
        return self._by_hash[key]


def layoutable(r: ModelResult) -> bool:
    return len(r.embeddings) > 0 and bool(np.isfinite(r.embeddings).all())


def group_layouts(groups: Sequence[Group], settings: Mapping[str, Any],
                  workers: int | None = None) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The UMAP layout of each group's shown member (None where there is nothing to lay out), in parallel
    processes when the work is large (:func:`embedlab.reports.umap_embed.umap_layouts`)."""
    todo = [i for i, g in enumerate(groups) if layoutable(g.first)]
    keys = {i: _layout_key(groups[i].first.embeddings, settings) for i in todo}
    missing = [i for i in todo if keys[i] not in _LAYOUTS]
    done = umap_layouts([groups[i].first.embeddings for i in missing], settings, workers) if missing else []
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(groups)
    for i in todo:
        out[i] = _LAYOUTS.get(keys[i])
    for i, layout in zip(missing, done):
        for a in layout:
            a.flags.writeable = False  # shared by every caller of the cache
        out[i] = _LAYOUTS[keys[i]] = layout
        while len(_LAYOUTS) > MAX_CACHED_LAYOUTS:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
    return out


# The layouts of the last few (embeddings, settings) pairs: the HTML report and the paper figures of one
# `embedlab report --figures` run lay out the same embeddings once. Layouts are deterministic for their key.
MAX_CACHED_LAYOUTS = 32
_LAYOUTS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _layout_key(embeddings: np.ndarray, settings: Mapping[str, Any]) -> str:
    a = np.ascontiguousarray(embeddings)
    digest = hashlib.sha1(a.view(np.uint8).reshape(-1)).hexdigest()
    return f"{digest}:{a.dtype.str}:{a.shape}:{json.dumps(dict(settings), sort_keys=True, default=str)}"


def umap_figure(g: Group, settings: Mapping[str, Any], index: int, atlases: Atlases,
                layout: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """One model's UMAP panel: legend, caption (points shown, subsampling, kNN method, seed) and the canvas data.
    ``layout`` is ``umap_2d``'s result for the group's shown member when already computed."""
    r = g.first
    class_names = r.class_names
    colors = svg.palette(max(len(class_names), 1))
    n_total = len(r.embeddings)
    fig: dict[str, Any] = {"id": f"umap-{index}", "name": g.name, "legend": list(zip(class_names, colors)),
                           "data": None, "caption": "", "badge": "", "note": "", "n_shown": 0, "n_total": n_total}
    if n_total == 0:
        fig["note"] = "no embeddings saved"
        return fig
    if not np.isfinite(r.embeddings).all():
        fig["note"] = "UMAP skipped: the embeddings contain NaN or infinite values"
        return fig
    coords, idx = layout if layout is not None else umap_2d(r.embeddings, **settings)
    n = len(idx)
    faiss = n > 3 and uses_faiss(str(settings["metric"]), settings.get("use_faiss"))
    order = np.random.default_rng(int(settings["seed"])).permutation(n)  # draw order: no class always on top
    coords, idx = coords[order].astype(np.float64), idx[order]
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = float(max((hi - lo).max(), 1e-12))
    unit = (coords - lo) / span + (1.0 - (hi - lo) / span) / 2  # aspect kept, centred in [0, 1]^2
    q = np.clip(np.round(unit * QUANT), 0, QUANT).astype(np.uint16)
    labels = r.labels[idx]
    data: dict[str, Any] = {"n": int(n), "xy": _b64(q.reshape(-1)), "labels": _b64(labels.astype(np.uint16)),
                            "classes": class_names, "colors": list(colors), "thumbs": None, "atlas": None,
                            "model": g.name}
    with_thumbs = 0
    if r.thumbnails is not None and r.thumbnail_index is not None and len(r.thumbnails):
        slot = np.full(n_total, -1, dtype=np.int32)
        slot[r.thumbnail_index] = np.arange(len(r.thumbnail_index), dtype=np.int32)
        shown = slot[idx]
        with_thumbs = int((shown >= 0).sum())
        if with_thumbs:
            data["atlas"] = atlases.items[atlases.add(r.thumbnails)]["id"]
            data["thumbs"] = _b64(shown.astype(np.int32))
    fig["data"] = json_for_script(data)
    fig["n_shown"] = int(n)
    parts = [f"all {n_total:,} test points" if n == n_total else
             f"{n:,} of {n_total:,} test points (random subsample, seed {settings['seed']})"]
    parts.append("kNN graph: faiss, exact" if faiss else "kNN graph: umap-learn")
    if with_thumbs:
        parts.append(f"thumbnail on hover for {with_thumbs:,} points" if with_thumbs < n else "thumbnail on hover")
    if g.n > 1:
        parts.append(_seed_note(g))
    fig["caption"] = "; ".join(parts)
    fig["badge"] = "" if n == n_total else f"{n:,} of {n_total:,} shown"
    return fig


def umap_description(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={'all' if k == 'max_points' and v is None else v}" for k, v in settings.items()
                     if k != "use_faiss")


# --------------------------------------------------------------------------------------------- plots by kind
#
# Every analysis plot is a dict with a "kind" (docs/RESULTS_FORMAT.md). The figures of a report section are drawn by
# kind, never by analysis name: FIGURE_BUILDERS maps a kind to its drawer. Plots of one kind in one section are drawn
# together (e.g. "ood" and "ood_logits" both write score_histograms to section "ood"); a plot of a kind with no
# drawer is left out. A new kind needs a builder here and its markup in the template (macro ``fig_<kind>``).


@dataclass
class PlotSet:
    """The plots of one ``kind`` in one figure ``section``: per result (ModelResult), its plots in analysis order."""

    kind: str
    section: str
    analyses: list[str]
    by_member: dict[int, list[Mapping[str, Any]]]
    members: dict[int, ModelResult]
    analysis_of: dict[int, str] = field(default_factory=dict)  # id(plot) -> the analysis that wrote it

    def of(self, m: ModelResult) -> list[Mapping[str, Any]]:
        return self.by_member.get(id(m), [])

    def only(self, analysis: str) -> "PlotSet":
        """The same set restricted to one analysis's plots."""
        by_member = {k: [p for p in plots if self.analysis_of.get(id(p)) == analysis]
                     for k, plots in self.by_member.items()}
        by_member = {k: v for k, v in by_member.items() if v}
        return PlotSet(self.kind, self.section, [analysis], by_member,
                       {k: m for k, m in self.members.items() if k in by_member}, self.analysis_of)

    def first(self, key: str) -> Any:
        """The first non-empty ``key`` field over every plot of the set (captions, labels)."""
        for plots in self.by_member.values():
            for p in plots:
                if p.get(key) not in (None, ""):
                    return p[key]
        return None


def _str(v: Any, default: str = "") -> str:
    return v if isinstance(v, str) else default


def plot_section(m: ModelResult, analysis: str, plot: Mapping[str, Any]) -> str:
    """The figure section of ``analysis``'s plot: its ``"section"`` field, else the section its analysis's metrics
    name (other than the overview, which holds no figures), else the analysis name."""
    if isinstance(plot.get("section"), str) and plot["section"]:
        return plot["section"]
    for e in m.metrics.values():
        if isinstance(e, Mapping) and e.get("analysis") == analysis:
            sec = e.get("section")
            if isinstance(sec, str) and sec and sec != "overview":
                return sec
    return analysis


def check_plots(results: Sequence[ModelResult]) -> None:
    """Every plot is a JSON object with a string ``kind``; else one line naming the analysis and the file."""
    for m in results:
        for analysis, plot in m.plots.items():
            if not isinstance(plot, Mapping) or not isinstance(plot.get("kind"), str):
                what = f"a {type(plot).__name__}" if not isinstance(plot, Mapping) else "no string 'kind'"
                raise EmbedlabError(f"malformed {str(analysis)!r} plot data in {m.path}: a plot must be a JSON object "
                                    f"with a string 'kind', got {what}")


def plot_sets(groups: Sequence[Group]) -> list[PlotSet]:
    """The drawable plots of every result, grouped by (section, kind) in first-seen order (sections, then kinds)."""
    check_plots([m for g in groups for m in g.members])
    sets: dict[tuple[str, str], PlotSet] = {}
    order: list[str] = []
    for g in groups:
        for m in g.members:
            for analysis, plot in m.plots.items():
                kind = plot["kind"]
                if kind not in FIGURE_BUILDERS:
                    continue
                section = plot_section(m, str(analysis), plot)
                if section not in order:
                    order.append(section)
                ps = sets.setdefault((section, kind), PlotSet(kind, section, [], {}, {}))
                if analysis not in ps.analyses:
                    ps.analyses.append(str(analysis))
                ps.by_member.setdefault(id(m), []).append(plot)
                ps.members[id(m)] = m
                ps.analysis_of[id(plot)] = str(analysis)
    return sorted(sets.values(), key=lambda ps: order.index(ps.section))


PLOT_DATA_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, OverflowError,
                    ZeroDivisionError)


def malformed(ps: PlotSet, e: BaseException, build: Callable[[PlotSet], Any]) -> EmbedlabError:
    """One line naming the analysis whose plot data ``build`` cannot draw (found by drawing each analysis of the
    set alone; all of them when none fails alone) and the results files that hold it."""
    culprits = ps.analyses
    if len(ps.analyses) > 1:
        for a in ps.analyses:
            try:
                build(ps.only(a))
            except PLOT_DATA_ERRORS as alone:
                culprits, ps, e = [a], ps.only(a), alone
                break
    names = " / ".join(repr(a) for a in culprits)
    files = ", ".join(dict.fromkeys(str(m.path) for m in ps.members.values()))
    why = " ".join(str(e).split())[:200] or type(e).__name__
    return EmbedlabError(f"malformed {names} plot data in {files}: {why}")


def build_figure(ps: PlotSet, groups: Sequence[Group], colors: Mapping[str, str]) -> dict[str, Any] | None:
    """``FIGURE_BUILDERS[ps.kind]``; hand-edited or damaged plot data is one line naming the results files."""
    def build(plots: PlotSet) -> dict[str, Any] | None:
        return FIGURE_BUILDERS[plots.kind](groups, colors, plots)

    try:
        fig = build(ps)
    except PLOT_DATA_ERRORS as e:
        raise malformed(ps, e, build) from e
    if fig is not None:
        fig["kind"] = ps.kind
    return fig


def figure_sections(groups: Sequence[Group], colors: Mapping[str, str],
                    info: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The report's figure sections, one per section with drawable plots: ``{"key", "id", "title", "note",
    "figures"}``; ``info``: section id -> {"title", "note"} (:func:`embedlab.reports.tables.section_info`)."""
    out: dict[str, dict[str, Any]] = {}
    for ps in plot_sets(groups):
        fig = build_figure(ps, groups, colors)
        if fig is None:
            continue
        meta = info.get(ps.section, {})
        sec = out.setdefault(ps.section, {"key": ps.section, "title": "", "note": meta.get("note", ""), "figures": []})
        sec["title"] = sec["title"] or _str(ps.first("title")) or meta.get("title") or ps.section
        sec["figures"].append(fig)
    return list(out.values())


def _numbers(v: Any, what: str) -> np.ndarray:
    """A JSON list of numbers as float64 (null -> NaN); anything else raises ValueError naming ``what``."""
    if not isinstance(v, list):
        raise ValueError(f"{what} must be a list of numbers, got {type(v).__name__}")
    if any(isinstance(x, bool) or not (x is None or isinstance(x, (int, float))) for x in v):
        raise ValueError(f"{what} must be a list of numbers")
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64)


# --------------------------------------------------------------------------------------------- metric_scatter


def metric_scatter_figure(groups: Sequence[Group], colors: Mapping[str, str], ps: PlotSet) -> dict[str, Any] | None:
    """One point per model (mean over seeds, bars ± one std) for each distinct (x, y) metric pair of the plots."""
    pairs: dict[tuple[str, str], Mapping[str, Any]] = {}
    for plots in ps.by_member.values():
        for p in plots:
            x, y = p.get("x"), p.get("y")
            if not isinstance(x, str) or not isinstance(y, str):
                raise ValueError("a metric_scatter plot names its metrics as strings 'x' and 'y'")
            pairs.setdefault((x, y), p)
    charts = []
    seeds = any(g.n > 1 for g in groups)
    for (x, y), p in pairs.items():
        points = []
        for g in groups:
            sx, sy = metric_stat(g, x), metric_stat(g, y)
            if sx is None or sy is None:
                continue
            points.append(svg.LabelledPoint(g.name, colors[g.name], sx.mean, sy.mean, sx.std, sy.std))
        if not points:
            continue
        caption = _str(p.get("caption"))
        if seeds:
            caption = (caption + " Points are means over seeds, bars \u00b1 one std.").strip()
        charts.append({"svg": svg.labelled_scatter(points, xlabel=_str(p.get("x_label"), x),
                                                   ylabel=_str(p.get("y_label"), y)),
                       "models": [pt.name for pt in points], "caption": caption})
    if not charts:
        return None
    return {"charts": charts, "models": list(dict.fromkeys(n for c in charts for n in c["models"]))}


# --------------------------------------------------------------------------------------------- reliability


def pool_reliability(diagrams: Sequence[Mapping[str, Any]]) -> dict[str, list] | None:
    """Sum reliability bins over seeds: counts add, mean confidence and accuracy are count-weighted."""
    valid = [d for d in diagrams if isinstance(d, Mapping) and isinstance(d.get("count"), list)]
    if not valid:
        return None
    ref = valid[0]
    same = [d for d in valid if d.get("lower") == ref.get("lower") and d.get("upper") == ref.get("upper")]
    count = np.zeros(len(ref["count"]))
    conf = np.zeros(len(ref["count"]))
    acc = np.zeros(len(ref["count"]))
    for d in same:
        for i, (c, cf, ac) in enumerate(zip(d["count"], d["confidence"], d["accuracy"])):
            if c:
                count[i] += c
                conf[i] += c * float(cf)
                acc[i] += c * float(ac)
    return {"lower": list(ref["lower"]), "upper": list(ref["upper"]), "count": [int(c) for c in count],
            "confidence": [conf[i] / count[i] if count[i] else None for i in range(len(count))],
            "accuracy": [acc[i] / count[i] if count[i] else None for i in range(len(count))]}


def expected_calibration_error(diagram: Mapping[str, Any]) -> float | None:
    """ECE of a reliability diagram: the count-weighted mean |accuracy - confidence| over its bins."""
    total = 0.0
    gap = 0.0
    for c, cf, ac in zip(diagram["count"], diagram["confidence"], diagram["accuracy"]):
        if c and cf is not None and ac is not None:
            total += c
            gap += c * abs(float(ac) - float(cf))
    return gap / total if total else None


def pooled_diagrams(g: Group, ps: PlotSet) -> dict[str, dict[str, list]]:
    """Label -> the group's reliability diagram of that label pooled over seeds (labels in first-seen order)."""
    labels: list[str] = []
    per_member: list[dict[str, Any]] = []
    for m in g.members:
        merged: dict[str, Any] = {}
        for p in ps.of(m):
            diagrams = p.get("diagrams")
            if not isinstance(diagrams, Mapping):
                raise ValueError("a reliability plot holds its diagrams as an object 'diagrams'")
            for label, d in diagrams.items():
                merged.setdefault(str(label), d)
        labels += [lb for lb in merged if lb not in labels]
        per_member.append(merged)
    out = {}
    for label in labels:
        pooled = pool_reliability([d[label] for d in per_member if label in d])
        if pooled is not None:
            out[label] = pooled
    return out


def reliability_figure(groups: Sequence[Group], colors: Mapping[str, str], ps: PlotSet) -> dict[str, Any] | None:
    """Per model: one reliability diagram per label (bins pooled over seeds), its ECE computed from the bins."""
    items = []
    for g in groups:
        diagrams = pooled_diagrams(g, ps)
        if not diagrams:
            continue
        panels = []
        for label, d in diagrams.items():
            ece = expected_calibration_error(d)
            panels.append(svg.reliability_chart(d, title=label,
                                                note=f"ECE {format_sig(ece)}" if ece is not None else ""))
        items.append({"name": g.name, "panels": panels, "caption": _seed_note(g, "bins pooled")})
    if not items:
        return None
    return {"items": items, "models": [i["name"] for i in items], "caption": _str(ps.first("caption"))}


# --------------------------------------------------------------------------------------------- curves


def _curves_of(m: ModelResult, ps: PlotSet) -> dict[str, Mapping[str, Any]]:
    merged: dict[str, Mapping[str, Any]] = {}
    for p in ps.of(m):
        curves = p.get("curves")
        if not isinstance(curves, Mapping):
            raise ValueError("a curves plot holds its curves as an object 'curves'")
        for label, c in curves.items():
            if not isinstance(c, Mapping):
                raise ValueError(f"curve {str(label)!r} must be an object with 'x' and 'y'")
            merged.setdefault(str(label), c)
    return merged


def curve_series(groups: Sequence[Group], ps: PlotSet) -> tuple[list[str], dict[str, str], list[tuple[str, list]]]:
    """``(labels, notes, [(label, [(group, name, x, y)])])``: per curve label, one line per model, the mean over
    the seeds that share the first seed's x grid."""
    labels: list[str] = []
    notes: dict[str, str] = {}
    per_group: dict[str, list[dict[str, Mapping[str, Any]]]] = {}
    for g in groups:
        per_group[g.name] = [_curves_of(m, ps) for m in g.members]
        for curves in per_group[g.name]:
            for label, c in curves.items():
                if label not in labels:
                    labels.append(label)
                    notes[label] = _str(c.get("note"))
    out = []
    for label in labels:
        lines = []
        for g in groups:
            curves = [c[label] for c in per_group[g.name] if label in c]
            if not curves:
                continue
            xy = []
            for c in curves:
                x, y = _numbers(c.get("x"), f"curve {label!r} x"), _numbers(c.get("y"), f"curve {label!r} y")
                if len(x) != len(y):
                    raise ValueError(f"curve {label!r}: {len(x)} x values but {len(y)} y values")
                xy.append((x, y))
            same = [y for x, y in xy if np.array_equal(x, xy[0][0])]
            name = g.name + (f" (mean of {len(same)} seeds)" if len(same) > 1 else "")
            lines.append((g, name, xy[0][0], np.mean(np.stack(same), axis=0)))
        out.append((label, lines))
    return labels, notes, out


def curves_figure(groups: Sequence[Group], colors: Mapping[str, str], ps: PlotSet) -> dict[str, Any] | None:
    """One chart per curve label, one line per model (mean over seeds with equal x grids). A y axis whose values all
    lie in [0, 1] spans [0, 1]; the x label carries the curve's note (e.g. its unit)."""
    _, notes, charts = curve_series(groups, ps)
    x_label, y_label = _str(ps.first("x_label"), "x"), _str(ps.first("y_label"), "y")
    out = []
    for label, lines in charts:
        if not lines:
            continue
        series = [svg.Series(name, colors[g.name], list(zip(x.tolist(), y.tolist())), model=g.name, markers=True)
                  for g, name, x, y in lines]
        ys = np.concatenate([y for *_, y in lines])
        ys = ys[np.isfinite(ys)]
        unit = bool(ys.size) and float(ys.min()) >= 0.0 and float(ys.max()) <= 1.0
        xlabel = f"{x_label} ({notes[label]})" if notes.get(label) else x_label
        out.append({"label": label, "models": [s.model for s in series],
                    "svg": svg.line_chart(series, xlabel=xlabel, ylabel=y_label, title=label,
                                          ylim=(0.0, 1.0) if unit else None, width=380, height=250)})
    if not out:
        return None
    return {"charts": out, "models": list(dict.fromkeys(m for c in out for m in c["models"])),
            "caption": _str(ps.first("caption"))}


# --------------------------------------------------------------------------------------------- score_histograms

DEFAULT_SCORE = "energy"  # the score shown first when present


def score_sets(m: ModelResult, ps: PlotSet) -> dict[str, dict[str, Mapping[str, Any]]]:
    """set -> score -> {hist, roc} of one result, merging its score_histograms plots (first plot wins)."""
    out: dict[str, dict[str, Any]] = {}
    for p in ps.of(m):
        sets = p.get("sets")
        if not isinstance(sets, Mapping):
            raise ValueError("a score_histograms plot holds its sets as an object 'sets'")
        for set_name, scores in sets.items():
            if isinstance(scores, Mapping):
                for score, data in scores.items():
                    if isinstance(data, Mapping):
                        out.setdefault(str(set_name), {}).setdefault(str(score), data)
    return out


def score_auroc(m: ModelResult, ps: PlotSet, set_name: str, score: str) -> float | None:
    """The AUROC metric of (set, score) among the plots' analyses, found by its ``key`` coordinates."""
    for e in m.metrics.values():
        if not isinstance(e, Mapping) or e.get("analysis") not in ps.analyses:
            continue
        key = e.get("key")
        if (isinstance(key, Mapping) and str(key.get("set")) == set_name and str(key.get("score")) == score
                and str(key.get("metric", "")).lower() == "auroc"):
            return metric_value(e)
    return None


def score_axes(groups: Sequence[Group], ps: PlotSet) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(group name -> set -> score -> data, sets, scores)`` of the lowest seed of each model, sets and scores in
    first-seen order: what both the HTML figure and the paper figures lay out."""
    per_group = {g.name: score_sets(g.first, ps) for g in groups}
    sets: list[str] = []
    scores: list[str] = []
    for plots in per_group.values():
        for s, by_score in plots.items():
            sets += [s] if s not in sets else []
            scores += [sc for sc in by_score if sc not in scores]
    return per_group, sets, scores


def score_histograms_figure(groups: Sequence[Group], colors: Mapping[str, str], ps: PlotSet) -> dict[str, Any] | None:
    """Per set: ROC curves (one line per model) and ID-vs-set score histograms (one small multiple per model), for
    every score, of which the page shows one at a time (``data-score``). The lowest seed of each model."""
    per_group, sets, scores = score_axes(groups, ps)
    if not sets:
        return None
    default = DEFAULT_SCORE if DEFAULT_SCORE in scores else scores[0]
    out_sets = []
    for s in sets:
        roc = {}
        for score in scores:
            series = []
            for g in groups:
                data = per_group[g.name].get(s, {}).get(score)
                curve = data.get("roc") if data else None
                if isinstance(curve, Mapping) and curve.get("fpr"):
                    auroc = score_auroc(g.first, ps, s, score)
                    name = g.name + (f" (AUROC {auroc:.3f})" if auroc is not None else "")
                    series.append(svg.Series(name, colors[g.name], list(zip(curve["fpr"], curve["tpr"])), model=g.name))
            if series:
                roc[score] = svg.line_chart(series, xlabel="false-positive rate (OOD accepted)",
                                            ylabel="true-positive rate (ID accepted)", title=f"ROC \u00b7 {score}",
                                            xlim=(0.0, 1.0), ylim=(0.0, 1.0), diagonal=True, width=300, height=280)
        hists = []
        for g in groups:
            views = {}
            for score in scores:
                data = per_group[g.name].get(s, {}).get(score)
                h = data.get("hist") if data else None
                if isinstance(h, Mapping) and h.get("edges"):
                    auroc = score_auroc(g.first, ps, s, score)
                    title = g.name + (f" \u00b7 AUROC {auroc:.3f}" if auroc is not None else "")
                    views[score] = svg.score_histogram(h["edges"], h.get("id", []), h.get("ood", []), title=title,
                                                       xlabel=f"{score} score (higher = ID)")
            if views:
                hists.append({"name": g.name, "views": views})
        out_sets.append({"name": s, "roc": roc, "hists": hists})
    conventions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for g in groups:
        for p in ps.of(g.first):
            for field_name, into in (("conventions", conventions), ("skipped_scores", skipped)):
                c = p.get(field_name)
                if isinstance(c, Mapping):
                    into.update({str(k): str(v) for k, v in c.items() if str(k) not in into})
    seeds = any(g.n > 1 for g in groups)
    return {"scores": scores, "default": default, "sets": out_sets, "conventions": conventions,
            "skipped_scores": skipped, "models": [g.name for g in groups if per_group[g.name]],
            "caption": " ".join(t for t in (_str(ps.first("caption")), "Lowest seed of each model." if seeds else "")
                                if t)}


# --------------------------------------------------------------------------------------------- bars


def bar_values(groups: Sequence[Group], ps: PlotSet) -> tuple[list[str], list[tuple[Group, list]]]:
    """``(categories, [(group, [Stat | None per category])])``: each model's bar per category, mean ± std over its
    seeds (the plots of one result merged, first wins); categories in first-seen order."""
    categories: list[str] = []
    per_group = []
    for g in groups:
        members = []
        for m in g.members:
            merged: dict[str, float] = {}
            for p in ps.of(m):
                bars = p.get("bars")
                if not isinstance(bars, Mapping):
                    raise ValueError("a bars plot holds its values as an object 'bars'")
                for label, v in bars.items():
                    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                        raise ValueError(f"bar {str(label)!r} must be a number, got {type(v).__name__}")
                    if v is not None:
                        merged.setdefault(str(label), float(v))
            categories += [c for c in merged if c not in categories]
            members.append(merged)
        per_group.append((g, members))
    out = []
    for g, members in per_group:
        stats = [summarise([m[c] for m in members if c in m]) for c in categories]
        if any(st is not None for st in stats):
            out.append((g, stats))
    return categories, out


def bars_figure(groups: Sequence[Group], colors: Mapping[str, str], ps: PlotSet) -> dict[str, Any] | None:
    """One grouped bar chart: a group of bars per category, a bar per model (mean over seeds, ± one std)."""
    categories, values = bar_values(groups, ps)
    if not values:
        return None
    series = [svg.BarSeries(g.name, colors[g.name], [st.mean if st else None for st in stats],
                            [st.std if st else None for st in stats]) for g, stats in values]
    seeds = any(g.n > 1 for g, _ in values)
    caption = " ".join(t for t in (_str(ps.first("caption")),
                                   "Bars are means over seeds, whiskers \u00b1 one std." if seeds else "") if t)
    width = int(min(1100, max(420, 60 + len(categories) * (14 + 10 * len(series)))))
    return {"svg": svg.bar_chart(categories, series, xlabel=_str(ps.first("x_label")), ylabel=_str(ps.first("y_label")),
                                 title=_str(ps.first("title")), width=width),
            "models": [g.name for g, _ in values], "caption": caption}


FIGURE_BUILDERS: dict[str, Callable[[Sequence[Group], Mapping[str, str], PlotSet], dict[str, Any] | None]] = {
    "metric_scatter": metric_scatter_figure,
    "reliability": reliability_figure,
    "curves": curves_figure,
    "score_histograms": score_histograms_figure,
    "bars": bars_figure,
}


# --------------------------------------------------------------------------------------------- confusion


MAX_CONFUSION_CLASSES = 2000


def confusion_counts(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts: row = true class, column = predicted class (argmax of the logits, ties to the lowest)."""
    pred = np.argmax(logits, axis=1)
    keep = (labels >= 0) & (labels < k) & (pred < k)
    return np.bincount(labels[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def confusion_figure(g: Group) -> dict[str, Any] | None:
    members = [m for m in g.members if m.logits is not None and len(m.logits)]
    if not members:
        return None
    names = members[0].class_names
    k = max(len(names), members[0].logits.shape[1])  # type: ignore[union-attr]
    if k > MAX_CONFUSION_CLASSES:  # k × k counts and pixels: beyond this the figure is neither readable nor cheap
        return None
    matrices = [confusion_counts(m.logits, m.labels, k) for m in members if m.logits.shape[1] <= k]  # type: ignore
    if not matrices:
        return None
    total = np.sum(matrices, axis=0)
    acc = float(np.trace(total) / max(total.sum(), 1))
    title = f"{g.name} \u00b7 accuracy {acc:.4f}"
    return {"name": g.name, "svg": svg.confusion_heatmap(np.asarray(total), names, title=title),
            "caption": ("Row-normalised (% of each true class). " +
                        (f"Counts summed over {len(matrices)} seeds." if len(matrices) > 1 else "")).strip()}


# --------------------------------------------------------------------------------------------- training curves


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


def training_figures(groups: Sequence[Group], colors: Mapping[str, str]) -> list[dict[str, Any]]:
    """One chart per logged quantity (train loss, validation loss, validation accuracy): a line per run."""
    out = []
    for key, label in HISTORY_PANELS:
        series = []
        for g in groups:
            for m in g.members:
                pts = _history_points(m.meta.get("history"), key)
                if pts:
                    name = g.name + (f" (seed {m.seed})" if g.n > 1 else "")
                    series.append(svg.Series(name, colors[g.name], pts, model=g.name,
                                             opacity=0.85 if g.n == 1 else 0.6, width=1.6))
        if series:
            out.append({"key": key, "models": list(dict.fromkeys(s.model for s in series)),
                        "svg": svg.line_chart(series, xlabel="epoch", ylabel=label, title=label, integer_x=True,
                                              width=380, height=240)})
    return out
