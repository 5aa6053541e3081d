"""Summary statistics over seeds or datasets, shared by every study (pure; scipy only for the t quantile).

For a sample ``v_1 … v_n``: mean ``v̄``, sample standard deviation ``s`` (ddof 1), standard error ``s/√n`` and the
Student-t 95 % interval ``v̄ ± t_{0.975, n−1} · s/√n``.

>>> r = mean_ci([1.0, 2.0, 3.0])
>>> r["mean"], r["std"], round(r["ci95"][1], 4)
(2.0, 1.0, 4.4841)
>>> mean_ci([5.0])["ci95"] is None
True

An interval is reported only where it means something: from **three** values on (with two, t_{0.975,1} = 12.7 and
the interval is the range stretched, not an estimate) and only with a positive width (identical values give a
zero-width "interval" that would look infinitely precise). Elsewhere ``ci95`` is None and ``ci95_na`` says why;
renderers print "n/a" and never mark such a difference as significant. :func:`interval` and :func:`significant`
apply the same rule to entries read from older files.

>>> mean_ci([0.1, 0.3])["ci95"], mean_ci([0.1, 0.3])["ci95_na"]
(None, 'n ≤ 2')
>>> mean_ci([0.2, 0.2, 0.2])["ci95_na"]
'zero width'
>>> significant({"mean": 0.166, "ci95": [0.166, 0.166], "n": 2})
False
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence


def t_quantile(df: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


MIN_N = 3  # fewest values an interval is reported for


def _zero_width(lo: float, hi: float, mean: float) -> bool:
    """Width at rounding level: the values were identical (up to float error in their differences)."""
    return hi - lo <= 1e-9 * max(1.0, abs(mean))


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "sem", "ci95": [lo, hi], "n"}`` of a sample: mean ``v̄``, sample std ``s`` (ddof 1),
    ``sem = s/√n``, ``ci95 = v̄ ± t_{0.975, n−1}·sem``. ``std`` and ``sem`` are None below two values (``mean`` NaN for
    none); ``ci95`` is None below :data:`MIN_N` values or at zero width, with ``ci95_na`` giving the reason."""
    v = [float(x) for x in values]
    n = len(v)
    mean = statistics.fmean(v) if n else float("nan")
    if n < 2:
        return {"mean": mean, "std": None, "sem": None, "ci95": None, "ci95_na": f"n = {n}", "n": n}
    sd = statistics.stdev(v)
    sem = sd / math.sqrt(n)
    half = t_quantile(n - 1) * sem
    out: dict[str, Any] = {"mean": mean, "std": sd, "sem": sem, "ci95": [mean - half, mean + half], "n": n}
    if n < MIN_N:
        out.update(ci95=None, ci95_na="n ≤ 2")
    elif _zero_width(mean - half, mean + half, mean):
        out.update(ci95=None, ci95_na="zero width")
    return out


def interval(entry: Any) -> tuple[float, float] | None:
    """The 95 % interval of a summary entry (``{"mean", "ci95", "n" | "per_seed"}``) where the rule above allows one,
    else None — also for entries written before the rule (an interval over 2 seeds, or of zero width)."""
    if not isinstance(entry, Mapping):
        return None
    ci = entry.get("ci95")
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in ci)):
        return None
    n = entry.get("n")
    if not isinstance(n, int) or isinstance(n, bool):
        per_seed = entry.get("per_seed")
        n = len(per_seed) if isinstance(per_seed, Mapping) else None
    mean = entry.get("mean")
    mean = float(mean) if isinstance(mean, (int, float)) and not isinstance(mean, bool) else 0.5 * (ci[0] + ci[1])
    if n is None or n < MIN_N or _zero_width(float(ci[0]), float(ci[1]), mean):
        return None
    return float(ci[0]), float(ci[1])


def significant(entry: Any) -> bool:
    """True where :func:`interval` gives an interval that excludes 0 (per comparison, not corrected for
    multiplicity)."""
    iv = interval(entry)
    return iv is not None and (iv[0] > 0 or iv[1] < 0)
