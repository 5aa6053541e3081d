"""``embedlab study benchmark``: a method × seed grid under one protocol, each run analysed, with paired statistics.

Every method of the grid is trained with every seed from one base :class:`~embedlab.config.TrainConfig` (the
method and its options replaced), analysed by a callback (the composition root passes the analysis runner), and
summarised per metric: mean and standard deviation over seeds, and for every method other than the baseline the
**paired difference** to the baseline trained with the same seed, ``d_s = v_{method,s} − v_{baseline,s}``, with a
95 % Student-t interval ``mean(d) ± t_{0.975, n−1} · sd(d) / √n`` over the n seeds.

Method specs: ``NAME`` or ``NAME[key=value;key=value]`` (options as with ``-O``), e.g.
``dense_multimix[attention=none;p=1]``; the spec text is the row's label. Runs go to ``OUT/runs/<label>/seed<S>``;
a finished run (its checkpoint and a training state whose config matches) is reused, an interrupted one resumed
(epoch by epoch), and a run already analysed with the same weights and analyses is not analysed again, so an
interrupted benchmark continues run by run. Runs go **seed-major** (every method's seed 0, then seed 1, …), so a grid
stopped part-way already holds paired comparisons. Each run folder is locked while it trains and its results while
they are written; a run another process holds is skipped and come back to, so two invocations of one grid never
train the same run at once. ``OUT/benchmark.json`` is rewritten atomically after every run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from embedlab.checkpoint import utc_now, versions
from embedlab.config import TrainConfig, auto_type
from embedlab.errors import BusyError, EmbedlabError
from embedlab.io import atomic_write_json
from embedlab.stats import interval, mean_ci, significant
from embedlab.trainers.studies import register_study

KIND = "embedlab.study"
STUDY = "benchmark"
FILENAME = "benchmark.json"
PLAN = "grid.json"  # the grid's runs, written when an invocation starts: what `embedlab study status` reads
SCHEMA_VERSION = 1
_SPEC = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\[(.*)\])?\s*$")


@dataclass(frozen=True)
class MethodSpec:
    """One row of the grid: a registered method with options; ``label`` is the spec as written."""

    label: str
    method: str
    options: dict[str, Any]
    variant: str | None = None  # the embedlab-variant label these options select (MixMethod.variant), else None


def split_specs(text: str) -> list[str]:
    """Split ``"erm,multimix[p=1;alpha=0.5]"`` on the commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise EmbedlabError(f"--methods: unbalanced ']' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise EmbedlabError(f"--methods: unbalanced '[' in {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_method_specs(text: str) -> list[MethodSpec]:
    """Parse and check ``--methods``: every method registered, every option accepted by it, labels distinct."""
    from embedlab.methods import create_method

    specs = []
    for raw in split_specs(text):
        m = _SPEC.match(raw)
        if not m:
            raise EmbedlabError(f"--methods: expected NAME or NAME[key=value;...], got {raw!r}")
        name, body = m.group(1), m.group(2)
        opts: dict[str, Any] = {}
        for item in (body or "").split(";"):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise EmbedlabError(f"--methods: option {item!r} of {raw!r} is not key=value")
            if key.strip() in opts:
                raise EmbedlabError(f"--methods: option {key.strip()!r} is given twice in {raw!r}")
            opts[key.strip()] = auto_type(value.strip())
        variant = create_method(name, opts).variant()  # unknown method or bad option: one line, before training
        label = name if not opts else f"{name}[{';'.join(f'{k}={v}' for k, v in opts.items())}]"
        specs.append(MethodSpec(label, name, opts, variant))
    if not specs:
        raise EmbedlabError("--methods: give at least one method")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise EmbedlabError(f"--methods: a method spec is repeated: {', '.join(labels)}")
    return specs


def slug(label: str) -> str:
    """A directory name for a label: ``dense_multimix[p=1;attention=none]`` → ``dense_multimix-p1-attention-none``."""
    s = re.sub(r"[^A-Za-z0-9_.]+", "-", label.replace("=", "")).strip("-.")
    return s or "method"


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> dict[str, Any] | None:
    """Mean and 95 % t-interval of ``values[s] − baseline[s]`` over the seeds both have (None if none)."""
    common = sorted(set(values) & set(baseline))
    if not common:
        return None
    d = [values[s] - baseline[s] for s in common]
    out = {**mean_ci(d), "per_seed": {str(s): x for s, x in zip(common, d)},
           "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d)}
    out["significant"] = significant(out)  # the interval exists (n ≥ 3, width > 0) and excludes 0
    return out


def _numeric_metrics(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, entry in (results.get("metrics") or {}).items():
        v = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def _directions(results: dict[str, Any]) -> dict[str, str]:
    """``{metric: "higher" | "lower"}``, the better direction of each metric that states one."""
    return {k: "higher" if e["higher_is_better"] else "lower" for k, e in (results.get("metrics") or {}).items()
            if isinstance(e, dict) and isinstance(e.get("higher_is_better"), bool)}


def _training_seconds(run: Path, fallback: float) -> float:
    """The run's training time: the sum of its epochs' ``seconds`` in meta.json (true also for a run finished by an
    earlier invocation and only reused now), else ``fallback``."""
    try:
        history = json.loads((run / "meta.json").read_text()).get("history") or []
        return float(sum(float(h.get("seconds", 0.0)) for h in history)) or fallback
    except (OSError, ValueError, TypeError, AttributeError):
        return fallback


def summarise(specs: Sequence[MethodSpec], seeds: Sequence[int], per_run: dict[str, dict[str, dict[str, float]]],
              baseline: str | None) -> list[dict[str, Any]]:
    """One row per method: per metric the mean/std/CI over seeds and the paired difference to ``baseline``.

    ``per_run[label][str(seed)]`` holds the run's numeric metrics."""
    rows = []
    base_runs = per_run.get(baseline, {}) if baseline else {}
    for spec in specs:
        runs = per_run.get(spec.label, {})
        names = sorted({m for r in runs.values() for m in r})
        metrics = {}
        for name in names:
            vals = {int(s): r[name] for s, r in runs.items() if name in r}
            entry: dict[str, Any] = {**mean_ci(list(vals.values())), "per_seed": {str(s): v for s, v in vals.items()}}
            if baseline and spec.label != baseline:
                base = {int(s): r[name] for s, r in base_runs.items() if name in r}
                entry["diff_to_baseline"] = paired_difference(vals, base)
            metrics[name] = entry
        rows.append({"label": spec.label, "method": spec.method, "options": spec.options, "variant": spec.variant,
                     "seeds_done": sorted(int(s) for s in runs), "metrics": metrics})
    return rows


@dataclass(frozen=True)
class GridJob:
    """One (method, seed) run of a grid, as a launcher needs it: picklable, self-contained. ``config`` is the run's
    full :class:`TrainConfig` as a dict, ``run`` its folder, ``name`` its results folder under ``OUT/results``."""

    label: str
    seed: int
    config: dict[str, Any]
    run: str
    name: str


# trains + analyses the jobs, calling on_done(job) after each finished run; returns {name: failure}
Launcher = Callable[[Sequence[GridJob], Callable[[GridJob], None]], dict[str, str]]


def grid_jobs(base: TrainConfig, out_dir: str | Path, specs: Sequence[MethodSpec],
              seeds: Sequence[int]) -> list[GridJob]:
    """Every run of the grid, **seed-major** (every method's seed 0 first, so a grid stopped part-way already holds
    paired comparisons)."""
    out = Path(out_dir)
    return [GridJob(spec.label, seed, dataclasses.replace(base, method=spec.method, method_options=dict(spec.options),
                                                          seed=seed).to_dict(),
                    str(out / "runs" / slug(spec.label) / f"seed{seed}"), f"{slug(spec.label)}-seed{seed}")
            for seed in seeds for spec in specs]


def run_benchmark(base: TrainConfig, out_dir: str | Path, *, specs: Sequence[MethodSpec], seeds: Sequence[int],
                  analyze: Callable[[Path, str], Path], analyses: Sequence[str],
                  analysis_settings: dict[str, dict[str, Any]] | None = None, baseline: str | None = "erm",
                  progress: bool = True, log: Callable[[str], None] = print,
                  poll_seconds: float = 30.0, launch: Launcher | None = None) -> dict[str, Any]:
    """Train, analyse and summarise every (method, seed); returns what is written to ``OUT/benchmark.json``.

    ``analyze(checkpoint, name)`` analyses one checkpoint into ``OUT/results/<name>/`` and returns that folder.
    ``baseline`` is the label paired differences are taken against (None, or absent from ``specs``: none).
    ``launch``: None runs the grid here, one run after the other; otherwise a launcher (``embedlab.launch``: a local
    pool or SLURM through submitit) that trains and analyses the jobs it is given and returns the failures; the
    grid is then summarised from the run and results folders, and a failure is one line after benchmark.json is
    written with the runs that finished.
    """
    from embedlab.config import TrainConfig as _Config
    from embedlab.trainers import train

    out = Path(out_dir)
    if baseline is not None and baseline not in {s.label for s in specs}:
        baseline = None
    t0 = time.perf_counter()
    per_run: dict[str, dict[str, dict[str, float]]] = {}
    directions: dict[str, str] = {}
    runs_index: dict[str, dict[str, str]] = {}
    timing: dict[str, dict[str, float]] = {}
    jobs = grid_jobs(base, out, specs, seeds)
    total = len(jobs)
    result: dict[str, Any] = {}
    atomic_write_json(out / PLAN, {"kind": KIND, "study": STUDY, "created_utc": utc_now(), "seeds": list(seeds),
                                   "jobs": [dataclasses.asdict(j) for j in jobs]})

    def collect(job: GridJob, fallback_seconds: float) -> None:
        nonlocal result
        results = json.loads((out / "results" / job.name / "results.json").read_text())
        per_run.setdefault(job.label, {})[str(job.seed)] = _numeric_metrics(results)
        directions.update(_directions(results))
        runs_index.setdefault(job.label, {})[str(job.seed)] = job.name
        timing.setdefault(job.label, {})[str(job.seed)] = round(_training_seconds(Path(job.run), fallback_seconds), 2)
        done = sum(len(v) for v in runs_index.values())
        result = {
            "kind": KIND, "study": STUDY, "schema_version": SCHEMA_VERSION, "created_utc": utc_now(),
            "config": dataclasses.asdict(base), "seeds": list(seeds), "baseline": baseline,
            "analyses": list(analyses), "analysis_settings": analysis_settings or {},
            "methods": [dataclasses.asdict(s) for s in specs],
            "complete": done == total, "rows": summarise(specs, seeds, per_run, baseline),
            "directions": directions, "results": runs_index, "train_seconds": timing,
            "train_seconds_total": round(sum(v for m in timing.values() for v in m.values()), 1),
            "seconds": time.perf_counter() - t0, "versions": versions(),
            "statistics": "per metric: mean, sample std and Student-t 95 % interval over seeds (none below 3 seeds "
                          "or at zero width: ci95_na); diff_to_baseline: the same over the seeds of the paired "
                          "difference method − baseline (same seed), with significant = the interval excludes 0 "
                          "(per cell, uncorrected)",
        }
        atomic_write_json(out / FILENAME, result)

    def one(job: GridJob) -> None:
        t_run = time.perf_counter()
        ckpt = train(_Config.from_dict(job.config), job.run, progress=progress, log=log, resume=True)
        analyze(ckpt, job.name)
        collect(job, time.perf_counter() - t_run)

    if launch is not None:  # benchmark.json is rewritten as each run finishes, and once more at the end
        failures = launch(jobs, lambda job: collect(job, 0.0))
        for job in jobs:
            if job.name not in failures:
                collect(job, 0.0)
        if failures:
            raise EmbedlabError(f"{len(failures)} of {total} runs failed ({'; '.join(f'{k}: {v}' for k, v in failures.items())}); "
                                f"{out / FILENAME} holds the {total - len(failures)} that finished; run the same "
                                f"command again to retry them")
        return result

    # Here, one run after the other. A run another process is training or analysing (its folder lock is held) is
    # left for later, then waited for.
    pending = jobs
    waited = False
    while pending:
        deferred = []
        for job in pending:
            log(f"[benchmark {sum(len(v) for v in runs_index.values()) + 1}/{total}] {job.label}, seed {job.seed}")
            try:
                one(job)
            except BusyError:
                log(f"[benchmark] {job.label}, seed {job.seed}: another process holds it; coming back to it later")
                deferred.append(job)
        pending = deferred
        if pending:
            if not waited:
                log(f"[benchmark] waiting for {len(pending)} run(s) held by another process")
                waited = True
            time.sleep(poll_seconds)
    return result


KEY_METRICS = ("accuracy", "knn_accuracy", "ece", "nll", "silhouette", "alignment", "uniformity")


def markdown_table(result: dict[str, Any], metrics: Sequence[str] = KEY_METRICS, *, pp: bool = True) -> str:
    """Per method: mean ± std of each metric, and Δ to the baseline with its 95 % interval (in points × 100 for
    metrics in [0, 1] when ``pp``)."""
    rows = result.get("rows") or []
    present = [m for m in metrics if any(m in r["metrics"] for r in rows)]
    head = ["method", "seeds"] + [h for m in present for h in (m, f"Δ {m} vs {result.get('baseline')}")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"] + (f" ({r['variant']})" if r.get("variant") else ""), str(len(r["seeds_done"]))]
        for m in present:
            e = r["metrics"].get(m)
            if not e:
                cells += ["–", "–"]
                continue
            cells.append(f"{e['mean']:.4f} ± {e['std']:.4f}" if e.get("std") is not None else f"{e['mean']:.4f}")
            d = e.get("diff_to_baseline")
            if not d:
                cells.append("–")
            else:
                scale = 100.0 if pp and m in PERCENT_METRICS else 1.0
                unit = " pp" if scale == 100.0 else ""
                ci = interval(d)
                cells.append(f"{scale * d['mean']:+.2f}{unit}" + (f" [{scale * ci[0]:+.2f}, {scale * ci[1]:+.2f}]"
                                                                   + (" *" if significant(d) else "")
                                                                   if ci else " [n/a]"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PERCENT_METRICS = frozenset({"accuracy", "knn_accuracy", "linear_probe_accuracy", "ece", "ece_scaled", "adaptive_ece",
                             "mce", "brier"})


@register_study("benchmark", description="a method × seed grid under one protocol, every run analysed; mean, std and "
                "95 % interval per metric, paired differences to a baseline", table=markdown_table, analyses=True,
                filename=FILENAME)
def benchmark_study(out_dir: str | Path, *, config: TrainConfig, methods: str | Sequence[MethodSpec],
                    seeds: Sequence[int] = (0, 1, 2), analyze: Callable[[Path, str], Path], analyses: Sequence[str],
                    analysis_settings: dict[str, dict[str, Any]] | None = None, baseline: str | None = "erm",
                    progress: bool = True, launch: Launcher | None = None, **_: Any) -> dict[str, Any]:
    """The registered study: ``methods`` as specs (``"erm,multimix[p=1]"``) or :class:`MethodSpec` objects;
    ``baseline``: a method label, or None / ``"none"``; ``launch``: see :func:`run_benchmark`."""
    specs = parse_method_specs(methods) if isinstance(methods, str) else list(methods)
    labels = [sp.label for sp in specs]
    baseline = None if baseline in (None, "none") else baseline
    if baseline is not None and baseline not in labels:
        raise EmbedlabError(f"--baseline {baseline!r} is not one of --methods ({', '.join(labels)}); add it to "
                            f"--methods or pass --baseline none")
    return run_benchmark(config, out_dir, specs=specs, seeds=seeds, analyze=analyze, analyses=analyses,
                         analysis_settings=analysis_settings, baseline=baseline, progress=progress, launch=launch)
