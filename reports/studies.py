"""The "Seed 002 studies" section: tables from a study's ``summary`` and its PNG figures as data URIs.

The toy-depth study (``trainers/studies/toy_depth.py``) is read through its summary layout: ``all`` /
``by_mmlb_quartile`` / ``by_K`` blocks of ``{"excess_risk_pct": {method: {mean, ci95, n}}, "diff_to_baseline_pct":
…}`` and ``corr_mmlb_bayes_risk``. Any other study (``"kind": "embedlab.study"``) gets a generic two-column table of
its ``summary`` flattened to dotted keys.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from reports import svg
from reports.load import StudyResult
from reports.tables import MISSING, format_sig

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
    ci = entry.get("ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    return text


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
    tables = _toy_depth_tables(summary) if summary else []
    if summary and not tables:
        rows = [[k, v] for k, v in _flatten(summary)[:MAX_GENERIC_ROWS]]
        tables = [_table("Summary", ["key", "value"], rows)]
    facts = []
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    for key in ("realisations_per_k", "ks", "epochs", "n_train", "n_test", "seed"):
        if key in config:
            facts.append((key, json.dumps(config[key]) if not isinstance(config[key], str) else config[key]))
    for key in ("units", "ci_method"):
        if isinstance(summary.get(key), str):
            facts.append((key.replace("_", " "), summary[key]))
    timing = data.get("timing") if isinstance(data.get("timing"), Mapping) else {}
    if isinstance(timing.get("wall_s"), (int, float)):
        facts.append(("wall time", f"{timing['wall_s']:.0f} s"))
    figures = []
    for name, path in study.figures.items():
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if not raw.startswith(PNG_MAGIC):
            continue
        uri = svg.data_uri(raw)
        figures.append({"name": name.replace("_", " "), "uri": uri})
    title = data.get("study") if isinstance(data.get("study"), str) else study.name
    return {"title": title, "path": str(study.path), "facts": facts, "tables": tables, "figures": figures}
