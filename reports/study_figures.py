"""Figures of studies, drawn by the report layer from the data a study saved (studies return data, never plots).

Seed 002's toy-depth study (``toy_depth.json`` and ``decision_boundaries.npz`` beside it):

* ``excess_vs_mmlb_quartile``: mean excess risk (%) per method and quartile of the normalised MMLB, ± 95 % CI;
* ``mmlb_vs_bayes_risk``: the normalised MMLB of every dataset against its Bayes risk, by K;
* ``decision_boundaries``: the Bayes classifier and every method's decision regions on one dataset.

Each is a matplotlib ``Figure`` on the Agg canvas (no pyplot): the HTML report embeds it as PNG and
``report --figures`` saves it as PDF and PNG. Older study folders hold these as PNG files; those are used as they are.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.reports.load import StudyResult

TOY_METHOD_LABELS = {"baseline": "Baseline", "mixup_k0": "Mixup 0", "mixup_k1": "Mixup 1", "mixup_k2": "Mixup 2",
                     "mixup_k3": "Mixup 3"}
BOUNDARIES_FILE = "decision_boundaries.npz"


def is_toy_depth(data: Mapping[str, Any]) -> bool:
    return isinstance(data.get("records"), list) and str(data.get("study", "")).startswith("toy-depth")


def study_figures(study: StudyResult) -> dict[str, Any]:
    """``{name: Figure}`` drawn from the study's data (empty for studies with no figures of their own).
    Raises ``ValueError``/``KeyError``/``TypeError`` on malformed data (the caller names the file)."""
    data = study.data
    if not is_toy_depth(data):
        return {}
    records = [r for r in data["records"] if isinstance(r, Mapping)]
    summary = data.get("summary") if isinstance(data.get("summary"), Mapping) else {}
    methods = [m for m in (summary.get("methods") or _methods(records)) if isinstance(m, str)]
    figs: dict[str, Any] = {}
    if len(records) >= 4 and summary.get("by_mmlb_quartile"):
        figs["excess_vs_mmlb_quartile"] = _quartiles(summary, methods)
    if records:
        figs["mmlb_vs_bayes_risk"] = _mmlb_bayes(records, summary)
    bpath = study.path.parent / BOUNDARIES_FILE
    if bpath.is_file():
        with np.load(bpath, allow_pickle=False) as z:
            bd = {k: z[k] for k in z.files}
        title = f"K={int(bd['K'])}, realisation {int(bd['realisation'])}, \u03c3={float(bd['sigma']):.3f}"
        figs["decision_boundaries"] = _boundaries(bd, [m for m in methods if m in bd], title)
    return figs


def png_bytes(fig: Any, dpi: int = 120) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _methods(records: Sequence[Mapping[str, Any]]) -> list[str]:
    first = records[0].get("excess_risk") if records else None
    return list(first) if isinstance(first, Mapping) else []


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _quartiles(summary: Mapping[str, Any], methods: Sequence[str]) -> Any:
    qs = summary["by_mmlb_quartile"]
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    w = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        stats = [q["excess_risk_pct"][m] for q in qs]
        mean = [float(st["mean"]) for st in stats]
        lo = [st["mean"] - st["ci95"][0] if st.get("ci95") else 0.0 for st in stats]
        hi = [st["ci95"][1] - st["mean"] if st.get("ci95") else 0.0 for st in stats]
        ax.bar(np.arange(len(qs)) + (j - (len(methods) - 1) / 2) * w, mean, w, yerr=[lo, hi], capsize=2,
               label=TOY_METHOD_LABELS.get(m, m))
    ax.set_xticks(np.arange(len(qs)))
    ax.set_xticklabels([f"Q{q['quartile']}\n[{q['mmlb_range'][0]:.2f}, {q['mmlb_range'][1]:.2f}]" for q in qs])
    ax.set_xlabel("quartile of normalised MMLB (range)")
    ax.set_ylabel("mean excess risk (%)  \u00b1 95 % CI")
    ax.set_title("Excess risk against normalised MMLB quartile")
    ax.legend(fontsize=8)
    return fig


def _mmlb_bayes(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Any:
    fig = _figure(5, 4)
    ax = fig.add_subplot()
    for k in sorted({int(r["K"]) for r in records}):
        sel = [r for r in records if int(r["K"]) == k]
        ax.scatter([float(r["mmlb"]) for r in sel], [100 * float(r["bayes_risk"]) for r in sel], s=8, label=f"K={k}")
    c = summary.get("corr_mmlb_bayes_risk")
    corr = f"\nPearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f}" if isinstance(c, Mapping) else ""
    ax.set_title("normalised MMLB vs Bayes risk" + corr)
    ax.set_xlabel("normalised MMLB")
    ax.set_ylabel("Bayes risk on test sample (%)")
    ax.legend(fontsize=8)
    return fig


def _boundaries(data: Mapping[str, np.ndarray], methods: Sequence[str], title: str) -> Any:
    from matplotlib import colormaps

    lim, n = float(data["lim"]), int(data["n"])
    g = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(g, g)
    panels = [("Bayes h*", data["bayes"])] + [(TOY_METHOD_LABELS.get(m, m), data[m]) for m in methods]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.3 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    K = int(data["K"])
    cmap = colormaps["tab10"]
    for ax, (name, pred) in zip(axes.ravel(), panels):
        ax.contourf(gx, gy, pred.reshape(gx.shape), levels=np.arange(K + 1) - 0.5,
                    colors=[cmap(i) for i in range(K)], alpha=0.35)
        ax.contour(gx, gy, data["bayes"].reshape(gx.shape), levels=np.arange(K) + 0.5, colors="k", linewidths=0.6)
        ax.scatter(data["x_train"][:, 0], data["x_train"][:, 1], c=[cmap(int(i)) for i in data["y_train"]], s=2)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(title + " (black: Bayes boundary)", fontsize=10)
    return fig
