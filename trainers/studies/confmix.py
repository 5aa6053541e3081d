"""Seed 002 §4: ConfMix against a fixed α and α schedules on CIFAR-10, over seeds.

Variants (each trained with the ``cifar10-small-cnn`` recipe unless overridden): the ERM baseline, and for input
mixing and manifold mixing "immediately before the first fully connected layer" (depth 2 of ``small-cnn``): mixup
with α = 0.5, ConfMix, ½-ConfMix, and mixup with the exponential α schedules 0→1 and 1→0 (half-life H = 25 epochs,
α_max = 1). Mixup uses one λ per pair, as seed 002 does (§3.3). ConfMix is turned on after M = 5 ERM epochs.
A shortened study (fewer than 50 epochs) scales H and M with the epoch budget unless they are given.
Reported: test accuracy per variant (mean ± std over seeds) and its change over the baseline (mean ± std of the
per-seed paired differences; the baseline of seed s is trained with seed s), and per run the α of each epoch
(ConfMix: the mean confidence α_i, which seed 002 §4.3 saw rise from ~0.2 to ~1; schedules: the scheduled α).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from embedlab.checkpoint import load_model, utc_now, versions
from embedlab.config import TrainConfig
from embedlab.data import create_dataset
from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write_json
from embedlab.trainers.studies import register_study

KIND = "embedlab.study"

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline (ERM)": ("erm", {}),
    "input mixup α=0.5": ("mixup", {"alpha": 0.5, "per_sample": True}),
    "input ConfMix": ("confmix", {"variant": "input"}),
    "½ input ConfMix": ("confmix", {"variant": "input", "half": True}),
    "input mixup α 0→1": ("mixup", {"alpha": 1.0, "alpha_schedule": "0->1", "per_sample": True}),
    "input mixup α 1→0": ("mixup", {"alpha": 1.0, "alpha_schedule": "1->0", "per_sample": True}),
    "manifold mixup α=0.5": ("manifold_mixup", {"alpha": 0.5, "layers": ("2",), "per_sample": True}),
    "manifold ConfMix": ("confmix", {"variant": "manifold", "layer": "2"}),
    "½ manifold ConfMix": ("confmix", {"variant": "manifold", "layer": "2", "half": True}),
    "manifold mixup α 0→1": ("manifold_mixup", {"alpha": 1.0, "alpha_schedule": "0->1", "layers": ("2",),
                                                "per_sample": True}),
    "manifold mixup α 1→0": ("manifold_mixup", {"alpha": 1.0, "alpha_schedule": "1->0", "layers": ("2",),
                                                "per_sample": True}),
}
BASELINE = "baseline (ERM)"


def _slug(name: str) -> str:
    ascii_name = name.replace("½", "half").replace("→", "to").replace("α", "alpha")
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in ascii_name).strip("-")


@torch.no_grad()
def test_accuracy(ckpt: Path, device: str) -> float:
    """Top-1 accuracy of a checkpoint on its dataset's test split."""
    from embedlab.trainers.loop import evaluate, make_loader

    model, meta = load_model(ckpt, device)
    cfg = meta["config"]
    data = create_dataset(cfg["dataset"], cfg.get("data_root"), False, **cfg.get("dataset_options", {}))
    return evaluate(model, make_loader(data.split("test"), 500, shuffle=False), torch.device(device))["accuracy"]


def variant_options(name: str, half_life: float, warmup: int) -> dict[str, Any]:
    """The method options of a variant with the study's time constants: ``half_life`` for the α schedules,
    ``warmup`` (ERM epochs before mixing) for ConfMix."""
    method, opts = VARIANTS[name]
    opts = dict(opts)
    if "alpha_schedule" in opts:
        opts["half_life"] = half_life
    if method == "confmix":
        opts["warmup"] = warmup
    return opts


ALPHA_KEYS = ("confmix_alpha", "alpha")  # per-epoch α logged by the methods (MixMethod.epoch_stats)


def alpha_curve(run_dir: Path) -> list[list[float]]:
    """``[[epoch, α], …]`` from a run's ``metrics.jsonl``: ConfMix's mean confidence α or a scheduled α
    (empty for ERM, a constant α, and ConfMix's warm-up epochs)."""
    path = Path(run_dir) / "metrics.jsonl"
    curve: list[list[float]] = []
    if not path.is_file():
        return curve
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        value = next((rec[k] for k in ALPHA_KEYS if isinstance(rec.get(k), (int, float))), None)
        if value is not None:
            curve.append([rec["epoch"], float(value)])
    return curve


def scaled_time_constants(epochs: int) -> tuple[float, int]:
    """Seed 002's time constants scaled to an epoch budget: half-life 25 and warmup M = 5 at 50 epochs, i.e.
    ``H = epochs / 2`` and ``M = max(1, round(epochs / 10))``, so that a shortened study keeps the schedules' shape."""
    return epochs / 2, max(1, round(epochs / 10))


def run_confmix_study(base: TrainConfig, out_dir: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2),
                      variants: list[str] | None = None, half_life: float | None = None, warmup: int | None = None,
                      progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every variant for every seed from ``base`` (method fields replaced), evaluate on test, write
    ``out_dir/confmix.json``. ``half_life``/``warmup`` default to :func:`scaled_time_constants` of ``base.epochs``
    (the paper's 25 and 5 at 50 epochs). Finished runs (a run directory with ``model.safetensors`` whose config
    matches) are reused, so an interrupted study continues where it stopped."""
    from embedlab.trainers import train

    out = Path(out_dir)
    names = variants or list(VARIANTS)
    if BASELINE not in names:
        names = [BASELINE, *names]
    default_h, default_m = scaled_time_constants(base.epochs)
    half_life = default_h if half_life is None else half_life
    warmup = default_m if warmup is None else warmup
    t0 = time.perf_counter()
    acc: dict[str, dict[int, float]] = {n: {} for n in names}
    curves: dict[str, dict[str, list[list[float]]]] = {n: {} for n in names}
    for name in names:
        method, opts = VARIANTS[name][0], variant_options(name, half_life, warmup)
        for seed in seeds:
            cfg = dataclasses.replace(base, method=method, method_options=dict(opts), seed=seed)
            run = out / "runs" / f"{_slug(name)}-seed{seed}"
            log(f"[confmix study] {name}, seed {seed}")
            ckpt = train(cfg, run, progress=progress, log=log, resume=True)
            acc[name][seed] = test_accuracy(ckpt, base.device if base.device != "auto" else "cpu")
            if curve := alpha_curve(run):
                curves[name][str(seed)] = curve
    rows = []
    for name in names:
        vals = [acc[name][s] for s in seeds]
        diffs = [acc[name][s] - acc[BASELINE][s] for s in seeds]
        rows.append({"variant": name, "method": VARIANTS[name][0],
                     "options": variant_options(name, half_life, warmup),
                     "test_accuracy_mean": statistics.fmean(vals),
                     "test_accuracy_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "change_over_baseline_mean": statistics.fmean(diffs),
                     "change_over_baseline_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                     "per_seed": {str(s): acc[name][s] for s in seeds},
                     **({"alpha_per_epoch": curves[name]} if curves[name] else {})})
    result = {"kind": KIND, "study": "confmix", "schema_version": 1, "created_utc": utc_now(),
              "config": dataclasses.asdict(base), "seeds": list(seeds), "half_life": half_life,
              "warmup": warmup, "rows": rows,
              "summary": {r["variant"]: {"accuracy": f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
                                         "change": f"{100 * r['change_over_baseline_mean']:+.2f} ± "
                                                   f"{100 * r['change_over_baseline_std']:.2f} pp"} for r in rows},
              "seconds": time.perf_counter() - t0, "versions": versions()}
    atomic_write_json(out / "confmix.json", result)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| variant | test accuracy (mean ± std) | change over baseline (pp) |", "|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | "
                     f"{100 * r['change_over_baseline_mean']:+.2f} ± {100 * r['change_over_baseline_std']:.2f} |")
    return "\n".join(lines)


@register_study("confmix", description="seed 002 §4: ConfMix, ½-ConfMix, α = 0.5 and α schedules against ERM, over "
                "seeds", table=markdown_table, filename="confmix.json")
def confmix_study(out_dir: str | Path, *, config: TrainConfig, seeds: tuple[int, ...] = (0, 1, 2),
                  variants: list[str] | None = None, half_life: float | None = None, warmup: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """The registered study: :func:`run_confmix_study` from the base ``config``; unknown variants are one line."""
    for v in variants or []:
        if v not in VARIANTS:
            raise EmbedlabError(f"unknown ConfMix-study variant {v!r}; known: {'; '.join(VARIANTS)}")
    return run_confmix_study(config, out_dir, seeds=tuple(seeds), variants=variants, half_life=half_life,
                             warmup=warmup, progress=progress)
