"""Summary statistics over seeds or datasets, shared by every study (pure; scipy only for the t quantile).

For a sample ``v_1 … v_n``: mean ``v̄``, sample standard deviation ``s`` (ddof 1), standard error ``s/√n`` and the
Student-t 95 % interval ``v̄ ± t_{0.975, n−1} · s/√n``.

>>> r = mean_ci([1.0, 2.0, 3.0])
>>> r["mean"], r["std"], round(r["ci95"][1], 4)
(2.0, 1.0, 4.4841)
>>> mean_ci([5.0])["ci95"] is None
True
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence


def t_quantile(df: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "sem", "ci95": [lo, hi], "n"}`` of a sample; ``std``, ``sem`` and ``ci95`` are None below
    two values (and ``mean`` is NaN for none)."""
    v = [float(x) for x in values]
    n = len(v)
    mean = statistics.fmean(v) if n else float("nan")
    if n < 2:
        return {"mean": mean, "std": None, "sem": None, "ci95": None, "n": n}
    sd = statistics.stdev(v)
    sem = sd / math.sqrt(n)
    half = t_quantile(n - 1) * sem
    return {"mean": mean, "std": sd, "sem": sem, "ci95": [mean - half, mean + half], "n": n}
