"""Markdown tables for docs/RESULTS.md from an ``embedlab study benchmark`` result file.

    python benchmarks/results_tables.py docs/results/digits-noise40/benchmark.json accuracy ece silhouette

prints one table: per method, each metric's mean ± std over seeds and, for every method but the baseline, the paired
difference to the baseline with its 95 % Student-t interval (in percentage points for metrics in [0, 1] that are
rates: accuracies, ECE; plain units otherwise). A difference whose interval excludes 0 is marked with *; with
fewer than 3 seeds or a zero-width interval the interval is "n/a" and nothing is marked (embedlab.stats.interval).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedlab.stats import interval, significant

RATES = ("accuracy", "acc", "ece", "auroc", "fpr95", "mce", "brier")


def is_rate(metric: str) -> bool:
    return any(token in metric for token in RATES)


def cell(entry: dict | None, metric: str) -> tuple[str, str]:
    if not entry:
        return "–", "–"
    scale, unit = (100.0, "") if is_rate(metric) else (1.0, "")
    std = entry.get("std")
    mean = f"{scale * entry['mean']:.2f} ± {scale * std:.2f}" if std is not None else f"{scale * entry['mean']:.2f}"
    if scale == 1.0:
        mean = f"{entry['mean']:.3f} ± {std:.3f}" if std is not None else f"{entry['mean']:.3f}"
    d = entry.get("diff_to_baseline")
    if not d:
        return mean, "–"
    ci = interval(d)
    digits = 2 if scale == 100.0 else 3
    text = f"{scale * d['mean']:+.{digits}f}{unit}"
    if ci:
        text += f" [{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"
        if significant(d):
            text += " *"
    else:
        text += " [n/a]"
    return mean, text


def table(result: dict, metrics: list[str], with_diff: bool = True, relabel: dict[str, str] | None = None) -> str:
    base = result.get("baseline")
    head = ["method"]
    for m in metrics:
        unit = " (%)" if is_rate(m) else ""
        head += [m + unit] + ([f"Δ vs {base}"] if with_diff else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        label = (relabel or {}).get(row["label"])
        cells = [label if label else f"`{row['label']}`" + (f" ({row['variant']})" if row.get("variant") else "")]
        for m in metrics:
            mean, diff = cell(row["metrics"].get(m), m)
            cells += [mean] + ([diff] if with_diff else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance_count(result: dict, metrics: list[str], methods: list[str] | None = None) -> str:
    """How many of the paired comparisons (method − baseline, per metric) have an interval that excludes 0, and in
    which direction: the "k of n significant" of RESULTS.md's claims tables."""
    rows = [r for r in result["rows"] if r["label"] != result.get("baseline")
            and (methods is None or r["label"] in methods)]
    directions = result.get("directions") or {}
    n = better = worse = 0
    for r in rows:
        for m in metrics:
            d = (r["metrics"].get(m) or {}).get("diff_to_baseline")
            if not d:
                continue
            n += 1
            if significant(d):
                up = d["mean"] > 0
                good = up if directions.get(m, "higher") == "higher" else not up
                better += good
                worse += not good
    return f"{better + worse} of {n} significant ({better} better, {worse} worse)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", type=Path, help="benchmark.json")
    p.add_argument("metrics", nargs="+", help="metric names as in results.json")
    p.add_argument("--no-diff", action="store_true", help="means only")
    p.add_argument("--relabel", action="append", default=[], metavar="LABEL=>TEXT",
                   help="print row LABEL as TEXT (e.g. to name the embedlab variant a row written before "
                        "benchmark rows recorded it); LABEL=TEXT where LABEL has no '='; repeatable")
    p.add_argument("--count", metavar="METHODS", nargs="?", const="",
                   help="print how many paired comparisons of METHODS (comma-separated; default all) are significant")
    a = p.parse_args()
    result = json.loads(a.benchmark.read_text())
    if a.count is not None:
        print(significance_count(result, a.metrics, [m for m in a.count.split(",") if m] or None))
        return
    relabel = dict(r.split("=>", 1) if "=>" in r else r.split("=", 1) for r in a.relabel)
    print(table(result, a.metrics, not a.no_diff, relabel))


if __name__ == "__main__":
    main()
