"""Figure data for the report, one builder per section, from groups of results (see :mod:`embedlab.reports.aggregate`).

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
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.reports import svg
from embedlab.reports.aggregate import Group, metric_stat, metric_value
from embedlab.reports.load import ModelResult
from embedlab.reports.tables import format_sig
from embedlab.reports.umap_embed import umap_2d, umap_layouts, uses_faiss

DEFAULT_UMAP: dict[str, Any] = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "seed": 0,
                                "max_points": 10000, "n_epochs": 200}
UMAP_OPTIONS = frozenset(DEFAULT_UMAP) | {"use_faiss"}
QUANT = 65535  # UMAP coordinates are sent to the page as uint16
OOD_DEFAULT_SCORE = "energy"
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
    from embedlab.errors import EmbedlabError

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
    done = umap_layouts([groups[i].first.embeddings for i in todo], settings, workers)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(groups)
    for i, layout in zip(todo, done):
        out[i] = layout
    return out


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


# --------------------------------------------------------------------------------------------- alignment / uniformity


def align_uniform_figure(groups: Sequence[Group], colors: Mapping[str, str]) -> dict[str, Any] | None:
    points = []
    for g in groups:
        a, u = metric_stat(g, "alignment"), metric_stat(g, "uniformity")
        if a is None or u is None:
            continue
        points.append(svg.LabelledPoint(g.name, colors[g.name], u.mean, a.mean, u.std, a.std))
    if not points:
        return None
    seeds = any(g.n > 1 for g in groups)
    return {"svg": svg.labelled_scatter(points, xlabel="uniformity (lower = more uniform)",
                                        ylabel="alignment (lower = more aligned)"),
            "models": [p.name for p in points],
            "caption": ("Wang & Isola (2020) on \u2113\u2082-normalised test embeddings: alignment is the mean "
                        "squared distance between same-class pairs, uniformity the log mean Gaussian potential; "
                        "lower-left is better on both." + (" Points are means over seeds, bars \u00b1 one std."
                                                           if seeds else ""))}


# --------------------------------------------------------------------------------------------- calibration


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


def reliability_figure(g: Group) -> dict[str, Any] | None:
    plots = [m.plots.get("calibration") for m in g.members]
    plots = [p for p in plots if isinstance(p, Mapping)]
    before = pool_reliability([p.get("reliability") for p in plots])
    after = pool_reliability([p.get("reliability_ts") for p in plots])
    if before is None and after is None:
        return None
    ece, ece_ts, t = metric_stat(g, "ece"), metric_stat(g, "ece_ts"), metric_stat(g, "temperature")
    panels = []
    if before is not None:
        panels.append(svg.reliability_chart(before, title="before" + (f" \u00b7 ECE {format_sig(ece.mean)}" if ece else "")))
    if after is not None:
        t_text = f" (T = {t.mean:.3g})" if t else ""
        panels.append(svg.reliability_chart(after, title=f"after{t_text}" + (f" \u00b7 ECE {format_sig(ece_ts.mean)}"
                                                                               if ece_ts else "")))
    return {"name": g.name, "panels": panels, "caption": _seed_note(g, "bins pooled")}


# --------------------------------------------------------------------------------------------- robustness


def robustness_figures(groups: Sequence[Group], colors: Mapping[str, str]) -> list[dict[str, Any]]:
    """One chart per attack: robust accuracy against ε, one line per model (mean over seeds with equal ε grids)."""
    attacks: dict[str, dict[str, Any]] = {}
    for g in groups:
        for m in g.members:
            for label, p in (m.plots.get("robustness") or {}).items():
                if isinstance(p, Mapping) and isinstance(p.get("eps"), list):
                    attacks.setdefault(label, {"norm": p.get("norm"), "unit": p.get("eps_unit")})
    figures = []
    for label, info in attacks.items():
        series = []
        for g in groups:
            curves = [(m.plots.get("robustness") or {}).get(label) for m in g.members]
            curves = [c for c in curves if isinstance(c, Mapping) and isinstance(c.get("eps"), list)]
            if not curves:
                continue
            same = [c for c in curves if c["eps"] == curves[0]["eps"]]
            acc = np.mean(np.array([c["accuracy"] for c in same], dtype=np.float64), axis=0)
            name = g.name + (f" (mean of {len(same)} seeds)" if len(same) > 1 else "")
            series.append(svg.Series(name, colors[g.name], list(zip(curves[0]["eps"], acc.tolist())), model=g.name,
                                     markers=True))
        linf = info.get("norm") == "Linf"
        xlabel = "\u03b5 (\u00d7 1/255, L\u221e)" if linf else "\u03b5 (L2, [0, 1] pixel units)"
        figures.append({"attack": label, "models": [s.model for s in series],
                        "svg": svg.line_chart(series, xlabel=xlabel, ylabel="robust accuracy", title=label,
                                              ylim=(0.0, 1.0), width=380, height=250)})
    return figures


# --------------------------------------------------------------------------------------------- OOD


def _ood_plots(m: ModelResult) -> dict[str, dict[str, Any]]:
    """set -> score -> {hist, roc}, merging the ``ood`` and ``ood_logits`` analyses (``ood`` first)."""
    out: dict[str, dict[str, Any]] = {}
    for analysis in ("ood", "ood_logits"):
        sets = (m.plots.get(analysis) or {}).get("sets")
        if not isinstance(sets, Mapping):
            continue
        for set_name, scores in sets.items():
            if isinstance(scores, Mapping):
                for score, data in scores.items():
                    if isinstance(data, Mapping):
                        out.setdefault(str(set_name), {}).setdefault(str(score), data)
    return out


def ood_figures(groups: Sequence[Group], colors: Mapping[str, str]) -> dict[str, Any] | None:
    """Per OOD set: ROC curves (one line per model) and score histograms (one small multiple per model), both for
    every score, of which the page shows one at a time (``data-score``)."""
    per_group = {g.name: _ood_plots(g.first) for g in groups}
    sets: list[str] = []
    scores: list[str] = []
    for plots in per_group.values():
        for s, by_score in plots.items():
            sets += [s] if s not in sets else []
            scores += [sc for sc in by_score if sc not in scores]
    if not sets:
        return None
    default = OOD_DEFAULT_SCORE if OOD_DEFAULT_SCORE in scores else scores[0]
    out_sets = []
    for s in sets:
        roc = {}
        for score in scores:
            series = []
            for g in groups:
                data = per_group[g.name].get(s, {}).get(score)
                curve = data.get("roc") if data else None
                if isinstance(curve, Mapping) and curve.get("fpr"):
                    auroc = metric_value(g.first.metrics.get(f"ood/{s}/{score}/auroc"))
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
                    auroc = metric_value(g.first.metrics.get(f"ood/{s}/{score}/auroc"))
                    title = g.name + (f" \u00b7 AUROC {auroc:.3f}" if auroc is not None else "")
                    views[score] = svg.score_histogram(h["edges"], h.get("id", []), h.get("ood", []), title=title,
                                                       xlabel=f"{score} score (higher = ID)")
            if views:
                hists.append({"name": g.name, "views": views})
        out_sets.append({"name": s, "roc": roc, "hists": hists})
    conventions: dict[str, str] = {}
    for g in groups:
        for analysis in ("ood", "ood_logits"):
            c = (g.first.plots.get(analysis) or {}).get("conventions")
            if isinstance(c, Mapping):
                conventions.update({str(k): str(v) for k, v in c.items() if str(k) not in conventions})
    seeds = any(g.n > 1 for g in groups)
    return {"scores": scores, "default": default, "sets": out_sets, "conventions": conventions,
            "models": [g.name for g in groups if per_group[g.name]],
            "caption": "Lowest seed of each model." if seeds else ""}


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
