"""Merge the rows of several ``embedlab study benchmark`` files that share one protocol into one file for tables.

    python benchmarks/merge_benchmarks.py OUT.json A/benchmark.json B/benchmark.json \
        [--relabel A:dense_multimix=dense_multimix[global_weight=0.5]]

Used when a grid gains rows later (a re-run of one method under a changed default, say) without re-training the
others. Every file must have the same protocol (``config`` without ``method``/``method_options``/``seed``, seeds,
analyses, baseline) and **the same baseline values, seed by seed**, for every metric: the paired differences of a row
are then the same whichever file's baseline they were computed against, and the merge refuses otherwise. Rows keep
their own summaries; a label present in two files is an error unless one of them is relabelled (``FILE_INDEX:LABEL=
NEW``, 0-based; the row's ``variant`` text can be given after a ``|``: ``0:dense_multimix=dense_multimix[global_weight
=0.5]|Dense MultiMix + pooled MultiMix (embedlab variant)``). The output names its sources; it is a derived file,
the inputs stay the raw results.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROTOCOL_SKIP = {"method", "method_options", "seed"}


def protocol(b: dict) -> dict:
    return {"config": {k: v for k, v in b["config"].items() if k not in PROTOCOL_SKIP}, "seeds": b["seeds"],
            "analyses": b["analyses"], "analysis_settings": b.get("analysis_settings") or {},
            "baseline": b["baseline"]}


def merge(files: list[Path], relabel: dict[tuple[int, str], tuple[str, str | None]]) -> dict:
    data = [json.loads(f.read_text()) for f in files]
    first = protocol(data[0])
    base_label = first["baseline"]
    base_rows = []
    for f, b in zip(files, data):
        if protocol(b) != first:
            raise SystemExit(f"{f}: not the protocol of {files[0]} (config, seeds, analyses or baseline differ)")
        base = next((r for r in b["rows"] if r["label"] == base_label), None)
        if base is None:
            raise SystemExit(f"{f}: has no baseline row {base_label!r}")
        base_rows.append(base)
    ref = base_rows[0]["metrics"]
    for f, base in zip(files[1:], base_rows[1:]):
        for metric, e in ref.items():
            other = base["metrics"].get(metric)
            if other is None or other["per_seed"] != e["per_seed"]:
                raise SystemExit(f"{f}: its baseline's {metric} per seed differs from {files[0]}'s "
                                 f"({(other or {}).get('per_seed')} vs {e['per_seed']}): the rows are not comparable")
    rows, seen = [base_rows[0]], {base_label}
    for i, b in enumerate(data):
        for r in b["rows"]:
            if r["label"] == base_label:
                continue
            r = dict(r)
            new = relabel.get((i, r["label"]))
            if new is not None:
                r["label_in_source"], r["label"] = r["label"], new[0]
                if new[1]:
                    r["variant"] = new[1]
            if r["label"] in seen:
                raise SystemExit(f"row {r['label']!r} appears twice; relabel one of them")
            seen.add(r["label"])
            r["source"] = str(files[i])
            rows.append(r)
    return {**data[0], "rows": rows, "derived_from": [str(f) for f in files],
            "complete": all(b.get("complete") for b in data),
            "train_seconds_total": round(sum(b.get("train_seconds_total") or 0 for b in data), 1),
            "note": "merged by benchmarks/merge_benchmarks.py: rows from several grids of one protocol whose "
                    "baseline values agree seed by seed"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--relabel", action="append", default=[], metavar="I:LABEL=NEW[|VARIANT]")
    a = ap.parse_args(argv)
    relabel = {}
    for item in a.relabel:
        idx, _, rest = item.partition(":")
        old, _, new = rest.partition("=")
        label, _, variant = new.partition("|")
        relabel[(int(idx), old)] = (label, variant or None)
    merged = merge(a.files, relabel)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {a.out}: {len(merged['rows'])} rows from {len(a.files)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
