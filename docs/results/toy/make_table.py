"""Print the SENSITIVITY.md table from the toy_depth-<setting>.json files beside this script.

    .venv/bin/python docs/results/toy/make_table.py
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = sys.argv[1:] or None


def ci(st, sign=False):
    f = "{:+.2f}" if sign else "{:.2f}"
    lo, hi = st["ci95"]
    return f"{f.format(st['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def paired(records, a, b):
    """Mean and 95 % t-interval of the per-dataset difference a − b in pp (the study's _mean_ci, recomputed)."""
    from scipy import stats

    v = [100 * (r["excess_risk"][a] - r["excess_risk"][b]) for r in records]
    n = len(v)
    m = sum(v) / n
    sem = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1) / n)
    h = float(stats.t.ppf(0.975, n - 1)) * sem
    return {"mean": m, "ci95": [m - h, m + h]}


files = {p.stem.removeprefix("toy_depth-"): p for p in sorted(HERE.glob("toy_depth-*.json"))}
names = [n for n in (ORDER or files) if n in files]
print("| setting | optimiser, lr | epochs | n_train | means | datasets | wall (s) | Bayes risk % | baseline excess % "
      "| mixup_k0 − base | mixup_k1 − base | mixup_k2 − base | mixup_k3 − base | mixup_k3 − mixup_k0 "
      "| baseline final train loss |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    d = json.loads(files[n].read_text())
    c, s, t = d["config"], d["summary"]["all"], d["timing"]
    tr = c["train"]
    loss = sum(r["final_train_loss"]["baseline"] for r in d["records"]) / len(d["records"])
    diffs = [ci(s["diff_to_baseline_pct"][m], True) for m in ("mixup_k0", "mixup_k1", "mixup_k2", "mixup_k3")]
    print(f"| {n} | {tr['optimizer']} {tr['lr']:g} | {c['epochs']} | {c['n_train']} | {c.get('means', 'U([-1, 1]^2)')} "
          f"| {d['summary']['n_datasets']} | {t['wall_s']:.0f} | {s['bayes_risk_pct']['mean']:.1f} "
          f"| {ci(s['excess_risk_pct']['baseline'])} | " + " | ".join(diffs)
          + f" | {ci(paired(d['records'], 'mixup_k3', 'mixup_k0'), True)} | {loss:.3f} |")
