"""The "Seed 002 studies" section: tables from a study's ``summary`` and its PNG figures as data URIs.

The toy-depth study (``trainers/studies/toy_depth.py``) is read through its summary layout: ``all`` /
``by_mmlb_quartile`` / ``by_K`` blocks of ``{"excess_risk_pct": {method: {mean, ci95, n}}, "diff_to_baseline_pct":
…}`` and ``corr_mmlb_bayes_risk``. Any other study (``"kind": "embedlab.study"``) gets a generic two-column table of
its ``summary`` flattened to dotted keys, except the ConfMix study (``trainers/studies/confmix.py``, ``"study":
"confmix"``): its per-variant ``rows`` as one table (with per-seed accuracies) and an SVG chart of α per epoch.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from embedlab.reports import svg
from embedlab.errors import EmbedlabError
from embedlab.stats import interval, significant
from embedlab.reports.load import StudyResult
from embedlab.reports.study_figures import png_bytes, study_figures
from embedlab.reports.tables import MISSING, format_sig, label_noise_text

MAX_GENERIC_ROWS = 200
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return MISSING
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return format_sig(v)
    return f"{v:.{digits}f}"


def _mean_ci(entry: Any) -> str:
    """``1.650 [1.105, 2.194]`` from ``{"mean", "ci95": [lo, hi]}``."""
    if not isinstance(entry, Mapping):
        return MISSING
    text = _num(entry.get("mean"))
    ci = interval(entry)
    if ci is not None:
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    elif entry.get("ci95") is not None or entry.get("ci95_na"):
        text += " [n/a]"
    return text


def _duration(seconds: float) -> str:
    """``4,595 s (1 h 16 min)``."""
    h, m = int(seconds // 3600), int(seconds % 3600 // 60)
    return f"{seconds:,.0f} s" + (f" ({h} h {m} min)" if h else f" ({m} min)" if m else "")


def _table(caption: str, header: list[str], rows: list[list[str]], note: str = "") -> dict[str, Any]:
    return {"caption": caption, "header": header, "rows": rows, "note": note}


def _toy_depth_tables(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    tables = []
    overall = summary.get("all")
    if isinstance(overall, Mapping) and isinstance(overall.get("excess_risk_pct"), Mapping):
        diff = overall.get("diff_to_baseline_pct") if isinstance(overall.get("diff_to_baseline_pct"), Mapping) else {}
        rows = []
        for method, entry in overall["excess_risk_pct"].items():
            d = diff.get(method) if isinstance(diff, Mapping) else None
            frac = d.get("frac_better") if isinstance(d, Mapping) else None
            rows.append([str(method), _mean_ci(entry), _mean_ci(d) if d else MISSING,
                         f"{100 * frac:.0f} %" if isinstance(frac, (int, float)) else MISSING,
                         _num(entry.get("n") if isinstance(entry, Mapping) else None)])
        extra = []
        for key, label in (("bayes_risk_pct", "Bayes risk (%)"), ("mmlb", "normalised MMLB")):
            if isinstance(overall.get(key), Mapping):
                extra.append(f"{label}: {_mean_ci(overall[key])}")
        tables.append(_table(
            f"Excess 0-1 risk over all {overall.get('n', '?')} datasets (percentage points, mean [95 % CI])",
            ["method", "excess risk", "\u0394 vs baseline", "datasets better than baseline", "n"], rows,
            "; ".join(extra)))
    quartiles = summary.get("by_mmlb_quartile")
    if isinstance(quartiles, list) and quartiles and all(isinstance(q, Mapping) for q in quartiles):
        methods = list(dict.fromkeys(m for q in quartiles for m in (q.get("excess_risk_pct") or {})))
        header = ["method"]
        for q in quartiles:
            rng = q.get("mmlb_range")
            span = f" [{_num(rng[0], 2)}, {_num(rng[1], 2)}]" if isinstance(rng, list) and len(rng) == 2 else ""
            header.append(f"Q{q.get('quartile', '?')}{span}")
        rows = [[m] + [_mean_ci((q.get("excess_risk_pct") or {}).get(m)) for q in quartiles] for m in methods]
        tables.append(_table("Excess risk by quartile of the normalised MMLB (range in brackets)", header, rows))
    by_k = summary.get("by_K")
    if isinstance(by_k, Mapping) and by_k:
        ks = [k for k, v in by_k.items() if isinstance(v, Mapping)]
        methods = list(dict.fromkeys(m for k in ks for m in (by_k[k].get("excess_risk_pct") or {})))
        rows = [[m] + [_mean_ci((by_k[k].get("excess_risk_pct") or {}).get(m)) for k in ks] for m in methods]
        tables.append(_table("Excess risk by number of classes K", ["method"] + [f"K = {k}" for k in ks], rows))
    corr = summary.get("corr_mmlb_bayes_risk")
    if isinstance(corr, Mapping):
        tables.append(_table("Correlation of the normalised MMLB with the Bayes risk",
                             ["Pearson r", "p", "Spearman \u03c1", "p", "n"],
                             [[_num(corr.get("pearson")), _p(corr.get("pearson_p")), _num(corr.get("spearman")),
                               _p(corr.get("spearman_p")), _num(corr.get("n"))]]))
    return tables


def _confmix_tables(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Seed 002 §4 (``trainers/studies/confmix.py``): accuracy, paired change over the baseline, and per seed."""
    rows = [r for r in data.get("rows") or [] if isinstance(r, Mapping)]
    seeds = [str(s) for s in data.get("seeds") or []]
    if not rows:
        return []

    def pp(mean: Any, std: Any) -> str:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, std))
        return f"{100 * mean:+.2f} ± {100 * std:.2f}" if ok else MISSING

    body = []
    for r in rows:
        per_seed = r.get("per_seed") if isinstance(r.get("per_seed"), Mapping) else {}
        body.append([str(r.get("variant", "?")),
                     f"{_num(r.get('test_accuracy_mean'), 4)} ± {_num(r.get('test_accuracy_std'), 4)}",
                     pp(r.get("change_over_baseline_mean"), r.get("change_over_baseline_std"))]
                    + [_num(per_seed.get(sd), 4) for sd in seeds])
    return [_table("Test accuracy per variant", ["variant", "test accuracy (mean ± std)",
                                                 "change over baseline (pp)"] + [f"seed {sd}" for sd in seeds], body,
                   "Change: mean ± std over seeds of the paired difference to the baseline trained with the "
                   "same seed; test accuracy of the last epoch.")]


def _confmix_charts(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """α per epoch (mean over seeds) of every variant that logged one: ConfMix's confidence α, or a schedule."""
    rows = [r for r in data.get("rows") or [] if isinstance(r, Mapping) and isinstance(r.get("alpha_per_epoch"),
                                                                                       Mapping)]
    series = []
    colors = svg.palette(max(len(rows), 1))
    for r, color in zip(rows, colors):
        by_epoch: dict[float, list[float]] = {}
        for curve in r["alpha_per_epoch"].values():
            for point in curve if isinstance(curve, list) else []:
                if isinstance(point, list) and len(point) == 2 and all(isinstance(v, (int, float)) for v in point):
                    by_epoch.setdefault(float(point[0]), []).append(float(point[1]))
        pts = [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]
        name = str(r.get("variant", "?"))
        series.append(svg.Series(name, color, pts, model=name, markers=len(pts) <= 20))
    if not series:
        return []
    chart = svg.line_chart(series, xlabel="epoch", ylabel="α", title="α per epoch (mean over seeds)",
                           ylim=(0.0, 1.0), integer_x=True, width=560, height=280)
    return [{"svg": chart, "legend": [(s.name, s.color) for s in series],
             "caption": "ConfMix: mean confidence \u03b1_i of the epoch (seed 002 \u00a74.3 saw \u03b1 ~ 0.2 early "
                        "and ~1 later); schedules: the scheduled \u03b1."}]


BENCHMARK_METRICS = ("accuracy", "knn_accuracy", "linear_probe_accuracy", "ece", "nll", "silhouette",
                     "alignment", "uniformity")


def _noise(ds: Mapping[str, Any]) -> str | None:
    """The label noise of a study's dataset options (``label_noise``, ``label_noise_kind``, ``label_noise_seed``) in
    the report's wording (:func:`embedlab.reports.tables.label_noise_text`); None without label noise."""
    frac = ds.get("label_noise")
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not frac:
        return None
    noise = {"fraction": frac, "kind": ds.get("label_noise_kind", "symmetric"), "seed": ds.get("label_noise_seed", 0)}
    return f"{label_noise_text(noise)} (training labels only)"


def benchmark_grid(data: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[str], dict[str, bool | None]]:
    """A benchmark file's rows that hold metrics, the key metrics (:data:`BENCHMARK_METRICS`) present in any of
    them, and each one's better direction (True: higher, False: lower, None: unknown); shared by the HTML and the
    LaTeX tables."""
    rows = [r for r in data.get("rows") or [] if isinstance(r, Mapping) and isinstance(r.get("metrics"), Mapping)]
    present = [m for m in BENCHMARK_METRICS if any(m in r["metrics"] for r in rows)]
    directions = data.get("directions") if isinstance(data.get("directions"), Mapping) else {}
    return rows, present, {m: {"higher": True, "lower": False}.get(str(directions.get(m))) for m in present}


def benchmark_entry(row: Mapping[str, Any], metric: str) -> Mapping[str, Any]:
    """One method's summary of one metric (mean, std, ci95, diff_to_baseline, ...); {} when absent or malformed."""
    e = row["metrics"].get(metric)
    return e if isinstance(e, Mapping) else {}


def _benchmark_tables(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``embedlab study benchmark`` (``trainers/studies/benchmark.py``): per method the mean ± std over seeds of key
    metrics, then the paired difference to the baseline with its 95 % Student-t interval."""
    rows, present, better = benchmark_grid(data)
    if not rows:
        return []

    def head(m: str) -> str:
        return m.replace("_", " ") + {True: " \u2191", False: " \u2193", None: ""}[better[m]]

    means = []
    for r in rows:
        cells = [str(r.get("label", "?")) + (f" ({r['variant']})" if r.get("variant") else ""), str(len(r.get("seeds_done") or []))]
        for m in present:
            e = benchmark_entry(r, m)
            std = e.get("std")
            cells.append(f"{_num(e.get('mean'), 4)} ± {_num(std, 4)}" if isinstance(std, (int, float))
                         else _num(e.get("mean"), 4))
        means.append(cells)
    tables = [_table("Metrics per method (mean ± std over seeds)", ["method", "seeds"] + [head(m) for m in present],
                     means, "Arrows: the better direction. Each seed's model is analysed on the clean test split.")]
    base = data.get("baseline")
    if isinstance(base, str):
        diffs = []
        for r in rows:
            if r.get("label") == base:
                continue
            cells = [str(r.get("label", "?")) + (f" ({r['variant']})" if r.get("variant") else "")]
            for m in present:
                d = benchmark_entry(r, m).get("diff_to_baseline")
                if not isinstance(d, Mapping):
                    cells.append(MISSING)
                    continue
                text = f"{_num(d.get('mean'), 4)}"
                ci = interval(d)
                if ci is not None:
                    text = f"{d['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]" + (" *" if significant(d) else "")
                elif isinstance(d.get("mean"), (int, float)):
                    text = f"{d['mean']:+.4f} [n/a]"
                cells.append(text)
            diffs.append(cells)
        tables.append(_table(f"Paired difference to {base} (mean [95 % interval] over seeds)",
                             ["method"] + [head(m) for m in present], diffs,
                             "Per seed s: metric(method, s) \u2212 metric(baseline, s); the interval is Student-t with "
                             "n \u2212 1 degrees of freedom over the n seeds; * marks an interval that excludes 0 (per "
                             "cell, not corrected for the number of cells). n/a: fewer than 3 seeds or a zero-width "
                             "interval, where no interval is reported and nothing is marked. The interval covers seed "
                             "variation only (one data split, one noise draw, one test set)."))
    return tables


def _p(v: Any) -> str:
    return f"{v:.2g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else MISSING


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, float):
        return [(prefix, format_sig(obj))]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return [(prefix, MISSING if obj is None else str(obj))]
    return [(prefix, json.dumps(obj, ensure_ascii=False)[:300])]


def study_section(study: StudyResult) -> dict[str, Any]:
    """Title, facts, tables and embedded figures of one study."""
    data, summary = study.data, study.summary
    confmix = data.get("study") == "confmix"
    benchmark = data.get("study") == "benchmark"
    if benchmark:
        tables = _benchmark_tables(data)
    else:
        tables = _confmix_tables(data) if confmix else (_toy_depth_tables(summary) if summary else [])
    if summary and not tables:
        rows = [[k, v] for k, v in _flatten(summary)[:MAX_GENERIC_ROWS]]
        tables = [_table("Summary", ["key", "value"], rows)]
    facts = []
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    for key in ("realisations_per_k", "ks", "epochs", "n_train", "n_test", "seed"):
        if key in config and not ((confmix or benchmark) and key == "seed"):  # their seeds are listed below
            facts.append((key, json.dumps(config[key]) if not isinstance(config[key], str) else config[key]))
    for key in ("units", "ci_method"):
        if isinstance(summary.get(key), str):
            facts.append((key.replace("_", " "), summary[key]))
    if confmix or benchmark:
        ds = config.get("dataset_options") if isinstance(config.get("dataset_options"), Mapping) else {}
        for key, value in (("dataset", config.get("dataset")), ("training images", ds.get("train_subset", "all")),
                           ("model", config.get("model")), ("batch size", config.get("batch_size")),
                           ("optimizer", f"{config.get('optimizer')} lr {config.get('lr')}"),
                           ("label noise", _noise(ds)),
                           ("seeds", ", ".join(str(x) for x in data.get("seeds") or [])),
                           ("α half-life H (epochs)", data.get("half_life")),
                           ("ConfMix warm-up M (epochs)", data.get("warmup"))):
            if value is not None:
                facts.append((key, str(value)))
    timing = data.get("timing") if isinstance(data.get("timing"), Mapping) else {}
    total = data.get("train_seconds_total")
    if benchmark and isinstance(total, (int, float)) and not isinstance(total, bool):
        # the runs' own epoch times summed (true also for runs an earlier invocation trained), not this call's time
        facts.append(("training time, summed over runs", _duration(total)))
        wall = data.get("seconds")
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            facts.append(("wall time of the last invocation", _duration(wall)))
    else:
        wall = timing.get("wall_s", data.get("seconds"))
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            facts.append(("wall time", f"{wall:.0f} s"))
    figures = []
    try:
        drawn = study_figures(study)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise EmbedlabError(f"cannot draw the figures of study {study.path}: {' '.join(str(e).split()) or type(e).__name__}"
                            f" (malformed study data)") from e
    for name, fig in drawn.items():
        figures.append({"name": name.replace("_", " "), "uri": svg.data_uri(png_bytes(fig))})
    for name, path in study.figures.items():
        if name in drawn:
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if not raw.startswith(PNG_MAGIC):
            continue
        uri = svg.data_uri(raw)
        figures.append({"name": name.replace("_", " "), "uri": uri})
    title = data.get("study") if isinstance(data.get("study"), str) else study.name
    if confmix:
        title = "ConfMix against fixed and scheduled \u03b1 (seed 002 \u00a74)"
    if benchmark:
        title = f"Benchmark: methods \u00d7 seeds on {config.get('dataset', '?')}"
    charts = _confmix_charts(data) if confmix else []
    return {"title": title, "path": str(study.path), "facts": facts, "tables": tables, "figures": figures,
            "charts": charts}
