"""Every report figure as a PDF and a PNG file for a paper, drawn with matplotlib and seaborn.

:func:`write_figures` draws what the HTML report shows, from the same data: the UMAP panel of each model (the same
layouts and settings as :func:`embedlab.reports.html.render_report`), the analyses' plots by their kind
(:data:`PAPER_DRAWERS`: reliability diagrams, curves, score histograms with ROC curves, metric scatter plots,
grouped bars), the
training curves and the confusion matrices, plus the figures a study saved beside its JSON (copied as they are).
matplotlib and seaborn are imported on first use; figures are rendered with the Agg canvas, never through pyplot, so
no global backend is chosen. File names are lower-case ASCII slugs, stable for the same inputs.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embedlab.errors import EmbedlabError
from embedlab.reports import figures as F
from embedlab.reports import svg
from embedlab.reports.aggregate import Group, group_results, metric_stat
from embedlab.reports.load import ModelResult, StudyResult
from embedlab.reports.study_figures import study_figures
from embedlab.reports.tables import format_sig

__all__ = ["PAPER_DRAWERS", "safe_name", "write_figures"]

FORMATS = ("pdf", "png")
PNG_DPI = 200
MAX_LEGEND_CLASSES = 24  # as in the HTML report: more classes get no legend
ID_COLOR, OOD_COLOR = svg.ID_COLOR, svg.OOD_COLOR


def safe_name(text: str, max_len: int = 80) -> str:
    """A file-name stem: lower-case ASCII letters, digits and ``-`` (each run of anything else), at most
    ``max_len`` characters, never empty (``"figure"``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return slug[:max_len].rstrip("-") or "figure"


class _Writer:
    """Saves figures under ``directory`` as ``<stem>.pdf`` and ``<stem>.png`` with unique stems."""

    def __init__(self, directory: Path, *, dry_run: bool = False) -> None:
        self.directory = directory
        self.dry_run = dry_run  # draw, save nothing (to find which plot data cannot be drawn)
        self.taken: set[str] = set()
        self.paths: list[Path] = []

    def stem(self, *parts: str) -> str:
        base = "-".join(safe_name(p, 40) for p in parts if p)
        stem, i = base, 2
        while stem in self.taken:
            stem, i = f"{base}-{i}", i + 1
        self.taken.add(stem)
        return stem

    def save(self, fig: Any, *parts: str) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)  # the Agg canvas: no pyplot, no global backend
        if self.dry_run:
            return
        stem = self.stem(*parts)
        for ext in FORMATS:
            path = self.directory / f"{stem}.{ext}"
            meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
            fig.savefig(path, format=ext, dpi=PNG_DPI, bbox_inches="tight", metadata=meta)
            self.paths.append(path)

    def image(self, source: Path, *parts: str) -> None:
        """A PNG file as it is, and as a one-page PDF of that image (Pillow); an unreadable image is left out."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as img:
                img.load()
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return
        stem = self.stem(*parts)
        png, pdf = self.directory / f"{stem}.png", self.directory / f"{stem}.pdf"
        rgb.save(pdf, format="PDF", resolution=PNG_DPI)
        png.write_bytes(source.read_bytes())
        self.paths += [pdf, png]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _style() -> Any:
    """seaborn's "ticks" style for the figures drawn inside the ``with`` block (rcParams restored after)."""
    import seaborn as sns

    return sns.axes_style("ticks")


def _despine(ax: Any) -> None:
    import seaborn as sns

    sns.despine(ax=ax)


# --------------------------------------------------------------------------------------------- UMAP


def _umap(groups: Sequence[Group], out: _Writer, umap_kwargs: Mapping[str, Any] | None) -> None:
    settings = F.umap_settings(umap_kwargs)
    layouts = F.group_layouts(groups, settings)
    for g, layout in zip(groups, layouts):
        if layout is None:
            continue
        coords, idx = layout
        r = g.first
        names = r.class_names
        colors = svg.palette(max(len(names), 1))
        order = np.random.default_rng(int(settings["seed"])).permutation(len(idx))  # as the page draws them
        xy, labels = coords[order], r.labels[idx][order]
        point_colors = [colors[int(c)] if int(c) < len(colors) else "#777777" for c in labels]
        fig = _figure(4.6, 4.2)
        ax = fig.add_subplot()
        ax.scatter(xy[:, 0], xy[:, 1], c=point_colors, s=max(1.0, min(8.0, 4000.0 / max(len(xy), 1))),
                   linewidths=0, rasterized=len(xy) > 2000)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        shown = f"{len(idx):,} of {len(r.embeddings):,} points" if len(idx) < len(r.embeddings) else \
            f"{len(idx):,} points"
        ax.set_title(f"{g.name}\n{shown}", fontsize=9)
        if len(names) <= MAX_LEGEND_CLASSES:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", linestyle="", color=colors[i], markersize=5, label=n)
                       for i, n in enumerate(names)]
            fig.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False)
        out.save(fig, "umap", g.name)


# --------------------------------------------------------------------------------------------- plot kinds


def draw_metric_scatter(groups: Sequence[Group], colors: Mapping[str, str], ps: F.PlotSet, out: _Writer) -> None:
    pairs: dict[tuple[str, str], Mapping[str, Any]] = {}
    for plots in ps.by_member.values():
        for p in plots:
            if isinstance(p.get("x"), str) and isinstance(p.get("y"), str):
                pairs.setdefault((p["x"], p["y"]), p)
            else:
                raise ValueError("a metric_scatter plot names its metrics as strings 'x' and 'y'")
    for (x, y), p in pairs.items():
        points = [(g, sx, sy) for g in groups if (sx := metric_stat(g, x)) and (sy := metric_stat(g, y))]
        if not points:
            continue
        fig = _figure(4.8, 3.8)
        ax = fig.add_subplot()
        for g, sx, sy in points:
            ax.errorbar(sx.mean, sy.mean, xerr=sx.std, yerr=sy.std, fmt="o", color=colors[g.name], capsize=2,
                        markersize=6, label=g.name)
            ax.annotate(g.name, (sx.mean, sy.mean), xytext=(5, 4), textcoords="offset points", fontsize=8)
        ax.set_xlabel(str(p.get("x_label") or x))
        ax.set_ylabel(str(p.get("y_label") or y))
        if isinstance(p.get("title"), str) and p["title"]:
            ax.set_title(p["title"], fontsize=10)
        _despine(ax)
        out.save(fig, "scatter", ps.section, x, "vs", y)


def draw_reliability(groups: Sequence[Group], colors: Mapping[str, str], ps: F.PlotSet, out: _Writer) -> None:
    for g in groups:
        diagrams = F.pooled_diagrams(g, ps)
        if not diagrams:
            continue
        fig = _figure(2.9 * len(diagrams), 3.1)
        axes = fig.subplots(1, len(diagrams), squeeze=False)[0]
        for ax, (label, d) in zip(axes, diagrams.items()):
            for lo, hi, count, conf, acc in zip(d["lower"], d["upper"], d["count"], d["confidence"], d["accuracy"]):
                if not count or acc is None or conf is None:
                    continue
                ax.bar(lo, acc, width=hi - lo, align="edge", color="#4a78c2", edgecolor="white", linewidth=0.5)
                over = conf > acc  # over-confident: the gap sits above the bar, else inside it (as in the page)
                ax.bar(lo, conf - acc, bottom=acc, width=hi - lo, align="edge", color="#e15759" if over else "white",
                       alpha=0.3 if over else 0.55, edgecolor="#d64545", linewidth=0.6)
            ax.plot([0, 1], [0, 1], linestyle="--", color="#9aa3ae", linewidth=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ece = F.expected_calibration_error(d)
            ax.set_title(label, fontsize=9)
            if ece is not None:
                ax.text(0.04, 0.94, f"ECE {format_sig(ece)}", transform=ax.transAxes, fontsize=8, va="top")
            _despine(ax)
        fig.suptitle(g.name + (f" ({F._seed_note(g, 'bins pooled')})" if g.n > 1 else ""), fontsize=10)
        out.save(fig, "reliability", ps.section, g.name)


def draw_curves(groups: Sequence[Group], colors: Mapping[str, str], ps: F.PlotSet, out: _Writer) -> None:
    import seaborn as sns

    _, notes, charts = F.curve_series(groups, ps)
    x_label, y_label = str(ps.first("x_label") or "x"), str(ps.first("y_label") or "y")
    for label, lines in charts:
        if not lines:
            continue
        fig = _figure(4.6, 3.3)
        ax = fig.add_subplot()
        ys = []
        for g, name, x, y in lines:
            keep = np.isfinite(x) & np.isfinite(y)
            sns.lineplot(x=x[keep], y=y[keep], ax=ax, color=colors[g.name], marker="o", markersize=4, label=name)
            ys.append(y[keep])
        values = np.concatenate(ys) if ys else np.array([])
        if values.size and values.min() >= 0 and values.max() <= 1:
            ax.set_ylim(0, 1)
        ax.set_xlabel(f"{x_label} ({notes[label]})" if notes.get(label) else x_label)
        ax.set_ylabel(y_label)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, frameon=False)
        _despine(ax)
        out.save(fig, "curves", ps.section, label)


def draw_score_histograms(groups: Sequence[Group], colors: Mapping[str, str], ps: F.PlotSet, out: _Writer) -> None:
    """Per set and score: the ROC curves of every model, then one ID-vs-set histogram (densities) per model."""
    per_group, sets, scores = F.score_axes(groups, ps)
    for s in sets:
        for score in scores:
            entries = [(g, per_group[g.name].get(s, {}).get(score)) for g in groups]
            entries = [(g, d) for g, d in entries if isinstance(d, Mapping)]
            if not entries:
                continue
            fig = _figure(3.2 * (1 + len(entries)), 3.0)
            axes = fig.subplots(1, 1 + len(entries), squeeze=False)[0]
            roc_ax = axes[0]
            for g, d in entries:
                roc = d.get("roc")
                if isinstance(roc, Mapping) and roc.get("fpr"):
                    fpr = F._numbers(roc.get("fpr"), "roc fpr")
                    tpr = F._numbers(roc.get("tpr"), "roc tpr")
                    auroc = F.score_auroc(g.first, ps, s, score)
                    roc_ax.plot(fpr, tpr, color=colors[g.name], linewidth=1.5,
                                label=g.name + (f" ({auroc:.3f})" if auroc is not None else ""))
            roc_ax.plot([0, 1], [0, 1], linestyle="--", color="#9aa3ae", linewidth=1)
            roc_ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false-positive rate", ylabel="true-positive rate",
                       title=f"ROC \u00b7 {score}")
            roc_ax.legend(fontsize=7, frameon=False, loc="lower right")
            _despine(roc_ax)
            for ax, (g, d) in zip(axes[1:], entries):
                h = d.get("hist")
                if isinstance(h, Mapping) and h.get("edges"):
                    edges = F._numbers(h.get("edges"), "hist edges")
                    for key, color, name in (("id", ID_COLOR, "ID"), ("ood", OOD_COLOR, s)):
                        counts = F._numbers(h.get(key, []), f"hist {key}")
                        if len(counts) != len(edges) - 1 or not np.isfinite(edges).all():
                            continue
                        widths = np.diff(edges)
                        total = counts.sum()
                        dens = counts / (total * np.where(widths > 0, widths, 1.0)) if total > 0 else counts * 0
                        ax.stairs(dens, edges, fill=True, alpha=0.45, color=color, label=name)
                    ax.legend(fontsize=7, frameon=False)
                auroc = F.score_auroc(g.first, ps, s, score)
                ax.set_title(g.name + (f" \u00b7 AUROC {auroc:.3f}" if auroc is not None else ""), fontsize=9)
                ax.set_xlabel(f"{score} score (higher = ID)")
                ax.set_yticks([])
                _despine(ax)
            out.save(fig, "scores", ps.section, s, score)


def draw_bars(groups: Sequence[Group], colors: Mapping[str, str], ps: F.PlotSet, out: _Writer) -> None:
    categories, values = F.bar_values(groups, ps)
    if not values:
        return
    fig = _figure(min(14.0, max(4.6, 0.8 + len(categories) * (0.25 + 0.12 * len(values)))), 3.4)
    ax = fig.add_subplot()
    slot = 0.8 / len(values)
    x = np.arange(len(categories), dtype=np.float64)
    for j, (g, stats) in enumerate(values):
        mean = np.array([st.mean if st else np.nan for st in stats])
        std = np.array([st.std if st and st.std is not None else 0.0 for st in stats])
        ax.bar(x - 0.4 + (j + 0.5) * slot, mean, width=slot * 0.95, yerr=std if std.any() else None,
               color=colors[g.name], label=g.name, capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(x, categories if len(categories) <= 40 else [""] * len(categories),
                  rotation=45 if max(map(len, categories)) > 3 else 0, ha="right" if max(map(len, categories)) > 3
                  else "center", fontsize=7)
    ax.set_xlabel(str(ps.first("x_label") or ""))
    ax.set_ylabel(str(ps.first("y_label") or ""))
    if isinstance(ps.first("title"), str):
        ax.set_title(ps.first("title"), fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    _despine(ax)
    out.save(fig, "bars", ps.section)


PAPER_DRAWERS: dict[str, Callable[[Sequence[Group], Mapping[str, str], F.PlotSet, _Writer], None]] = {
    "metric_scatter": draw_metric_scatter,
    "reliability": draw_reliability,
    "curves": draw_curves,
    "score_histograms": draw_score_histograms,
    "bars": draw_bars,
}


# --------------------------------------------------------------------------------------------- metadata figures


def _training(groups: Sequence[Group], colors: Mapping[str, str], out: _Writer) -> None:
    for key, label in F.HISTORY_PANELS:
        lines = []
        for g in groups:
            for m in g.members:
                pts = F._history_points(m.meta.get("history"), key)
                if pts:
                    lines.append((g, m, pts))
        if not lines:
            continue
        fig = _figure(4.6, 3.2)
        ax = fig.add_subplot()
        labelled: set[str] = set()
        for g, m, pts in lines:
            x, y = zip(*pts)
            ax.plot(x, y, color=colors[g.name], linewidth=1.4, alpha=0.9 if g.n == 1 else 0.6,
                    label=None if g.name in labelled else g.name)
            labelled.add(g.name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, frameon=False)
        _despine(ax)
        out.save(fig, "training", key)


def _confusion(groups: Sequence[Group], out: _Writer) -> None:
    import seaborn as sns

    for g in groups:
        members = [m for m in g.members if m.logits is not None and len(m.logits)]
        if not members:
            continue
        names = members[0].class_names
        k = max(len(names), members[0].logits.shape[1])  # type: ignore[union-attr]
        if k > F.MAX_CONFUSION_CLASSES:
            continue
        counts = np.sum([F.confusion_counts(m.logits, m.labels, k) for m in members
                         if m.logits.shape[1] <= k], axis=0)  # type: ignore[union-attr]
        rows = counts.sum(axis=1, keepdims=True)
        pct = np.divide(100.0 * counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        labels = (names + [str(i) for i in range(len(names), k)])[:k]
        size = min(12.0, 2.5 + 0.35 * k)
        fig = _figure(size + 1.0, size)
        ax = fig.add_subplot()
        show = k <= 30
        sns.heatmap(pct, ax=ax, cmap="Blues", vmin=0, vmax=100, square=True, annot=k <= 12, fmt=".0f",
                    annot_kws={"fontsize": 7}, xticklabels=labels if show else False,
                    yticklabels=labels if show else False, cbar_kws={"label": "% of true class"})
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        acc = float(np.trace(counts) / max(counts.sum(), 1))
        ax.set_title(f"{g.name} \u00b7 accuracy {acc:.4f}", fontsize=10)
        out.save(fig, "confusion", g.name)


# --------------------------------------------------------------------------------------------- entry point


def check_figures_folder(directory: str | Path) -> Path:
    """``directory`` as a figures folder: never a symbolic link (figures are not written through one) and, where it
    exists, a folder; one line otherwise."""
    out_dir = Path(directory)
    if out_dir.is_symlink():
        raise EmbedlabError(f"figures folder {out_dir} is a symbolic link; embedlab never writes through one (give "
                            f"the folder it points to, or another --figures)")
    if out_dir.exists() and not out_dir.is_dir():
        raise EmbedlabError(f"figures folder {out_dir} exists and is not a folder")
    return out_dir


def write_figures(results: Sequence[ModelResult], directory: str | Path, *, studies: Sequence[StudyResult] = (),
                  umap_kwargs: Mapping[str, Any] | None = None, force: bool = False,
                  protected: Sequence[Path] = ()) -> list[Path]:
    """Draw every report figure of ``results`` (grouped over seeds as in the report) and ``studies`` into
    ``directory`` (created when missing), each as ``<name>.pdf`` and ``<name>.png``; return the paths written, in
    drawing order. ``umap_kwargs``: the UMAP settings, as for :func:`embedlab.reports.html.render_report` (the same
    settings give the same layouts). Malformed plot data is one :class:`EmbedlabError` line naming the files.

    The figures are drawn into a hidden folder inside ``directory`` first and moved to their names only when none
    of those names is taken: a file already there is one line naming the first (unless ``force``), and a symbolic
    link there, a non-regular file or one of ``protected`` (the report's inputs) is refused even with ``force``;
    nothing in ``directory`` changes on refusal, and a replaced file is replaced by a rename, never written through."""
    if not results and not studies:
        raise EmbedlabError("no results to draw figures for")
    out_dir = check_figures_folder(directory)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".embedlab-figures-", suffix=".tmp", dir=out_dir))
    except OSError as e:
        raise EmbedlabError(f"cannot create figures folder {out_dir}: {' '.join(str(e).split())}") from e
    try:
        drawn = _draw_figures(results, stage, out_dir, studies, umap_kwargs)
        return _move_into(drawn, out_dir, force, protected)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into(drawn: list[Path], out_dir: Path, force: bool, protected: Sequence[Path]) -> list[Path]:
    """Move the drawn files into ``out_dir`` under their names, after checking every target first."""
    targets = [out_dir / p.name for p in drawn]
    for t in targets:
        if t.is_symlink():
            raise EmbedlabError(f"{t} is a symbolic link; embedlab never writes through one (remove it or choose "
                                f"another --figures)")
        if not t.exists():
            continue
        if not t.is_file():
            raise EmbedlabError(f"{t} exists and is not a regular file; choose another --figures")
        if any(p.exists() and os.path.samefile(t, p) for p in protected):
            raise EmbedlabError(f"{t} is one of the report's inputs; choose another --figures")
        if not force:
            raise EmbedlabError(f"{t} already exists; choose another --figures or pass --force to replace the "
                                f"figures there")
    try:
        for p, t in zip(drawn, targets):
            os.replace(p, t)
    except OSError as e:
        raise EmbedlabError(f"cannot write figures into {out_dir}: {' '.join(str(e).split())}") from e
    return targets


def _draw_figures(results: Sequence[ModelResult], stage: Path, out_dir: Path, studies: Sequence[StudyResult],
                  umap_kwargs: Mapping[str, Any] | None) -> list[Path]:
    out = _Writer(stage)
    settings = F.umap_settings(umap_kwargs)  # unknown options fail before any drawing
    try:
        with _style():
            if results:
                groups = group_results(results)
                colors = F.model_colors(groups)
                plot_sets = F.plot_sets(groups)  # plots without a kind fail before the UMAP layouts
                _umap(groups, out, settings)
                for ps in plot_sets:
                    try:
                        PAPER_DRAWERS[ps.kind](groups, colors, ps, out)
                    except F.PLOT_DATA_ERRORS as e:
                        scratch = _Writer(stage, dry_run=True)
                        raise F.malformed(ps, e, lambda one: PAPER_DRAWERS[one.kind](groups, colors, one, scratch)) \
                            from e
                _training(groups, colors, out)
                _confusion(groups, out)
            for study in studies:
                try:
                    drawn = study_figures(study)
                except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                    raise EmbedlabError(f"cannot draw the figures of study {study.path}: "
                                        f"{' '.join(str(e).split()) or type(e).__name__} (malformed study data)") from e
                for name, fig in drawn.items():
                    out.save(fig, "study", study.name, name)
                for name, path in study.figures.items():
                    if name not in drawn:
                        out.image(path, "study", study.name, name)
    except OSError as e:
        raise EmbedlabError(f"cannot write figures into {out_dir}: {' '.join(str(e).split())}") from e
    return out.paths
