"""Analysis runner: checkpoint → embeddings (cached) → metrics → ``results.json`` + ``arrays.npz``.

Analyses are registered with the inputs they need (``needs``: splits among ``train``/``val``/``test``); the runner
extracts each split once and passes it to every analysis that asked for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from analyses import metrics as M
from embedlab.checkpoint import load_model, resolve_checkpoint, utc_now, versions
from embedlab.data import create_dataset
from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write, atomic_write_json, sha256_file
from embedlab.registry import Registry
from embedlab.store import Extracted, cached_extract

SCHEMA_VERSION = 1
KIND = "embedlab.analysis"

Analysis = Callable[["Inputs"], dict[str, dict[str, Any]]]
ANALYSES: Registry[Analysis] = Registry("analysis")


def register_analysis(name: str, *, description: str, needs: tuple[str, ...]) -> Callable[[Analysis], Analysis]:
    return ANALYSES.register(name, description=description, needs=needs)


@dataclass
class Inputs:
    """What analyses read: extracted splits and the class count."""

    splits: dict[str, Extracted]
    num_classes: int

    def t(self, split: str, field: str) -> torch.Tensor:
        return torch.from_numpy(getattr(self.splits[split], field))


def metric(value: float, higher_is_better: bool | None, analysis: str, **settings: Any) -> dict[str, Any]:
    return {"value": float(value), "higher_is_better": higher_is_better, "analysis": analysis, "settings": settings}


@register_analysis("accuracy", description="top-1 test accuracy", needs=("test",))
def _accuracy(inp: Inputs) -> dict[str, dict[str, Any]]:
    return {"accuracy": metric(M.accuracy(inp.t("test", "logits"), inp.t("test", "labels")), True, "accuracy")}


@register_analysis("knn", description="weighted kNN accuracy (cosine, k=20, T=0.07; train embeddings as the bank; faiss)",
                   needs=("train", "test"))
def _knn(inp: Inputs, k: int = 20, temperature: float = 0.07) -> dict[str, dict[str, Any]]:
    acc = M.knn_accuracy(inp.t("train", "embeddings"), inp.t("train", "labels"), inp.t("test", "embeddings"),
                         inp.t("test", "labels"), inp.num_classes, k=k, temperature=temperature)
    return {"knn_accuracy": metric(acc, True, "knn", k=k, temperature=temperature, bank="train")}


@register_analysis("align_uniform", description="alignment (α=2) and uniformity (t=2) of ℓ2-normalised test embeddings",
                   needs=("test",))
def _align_uniform(inp: Inputs) -> dict[str, dict[str, Any]]:
    z, y = inp.t("test", "embeddings"), inp.t("test", "labels")
    return {"alignment": metric(M.alignment(z, y, alpha=2.0), False, "align_uniform", alpha=2.0),
            "uniformity": metric(M.uniformity(z, t=2.0), False, "align_uniform", t=2.0)}


@register_analysis("calibration", description="top-label ECE (15 equal-width bins) on the test split", needs=("test",))
def _calibration(inp: Inputs) -> dict[str, dict[str, Any]]:
    ece = M.expected_calibration_error(inp.t("test", "logits"), inp.t("test", "labels"), n_bins=15)
    return {"ece": metric(ece, False, "calibration", n_bins=15)}


def select_analyses(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of registered analysis names."""
    if spec.strip() == "all":
        return ANALYSES.names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        ANALYSES.get(n)
    if not names:
        raise EmbedlabError("--analyses: give 'all' or a comma-separated list of analysis names")
    return names


def analyze_checkpoint(path: str | Path, out_root: str | Path, *, analyses: list[str] | None = None,
                       name: str | None = None, cache_dir: str | Path | None = None, device: str = "cpu",
                       data_root: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Analyse one checkpoint; writes ``out_root/<name>/results.json`` and ``arrays.npz``; returns that directory."""
    weights = resolve_checkpoint(path)
    name = name or (weights.parent.name if weights.name in ("model.safetensors", "best.safetensors") else weights.stem)
    out = Path(out_root) / name
    sha = sha256_file(weights)
    _check_overwrite(out / "results.json", sha, force)

    model, meta = load_model(weights, device)
    ds_meta = {k: v for k, v in meta["dataset"].items() if k not in ("classes", "input_shape")}
    ds_name = ds_meta.pop("name")
    ds_meta.pop("root", None)
    root = data_root or meta["config"].get("data_root")
    data = create_dataset(ds_name, root, False, **meta["config"].get("dataset_options", {}))
    if data.info.num_classes != model.num_classes:
        raise EmbedlabError(f"{weights}: model predicts {model.num_classes} classes but dataset {ds_name!r} "
                            f"has {data.info.num_classes}")
    chosen = analyses or ANALYSES.names()
    needed = sorted({s for a in chosen for s in ANALYSES.get(a).meta["needs"]} | {"test"})
    splits = {}
    for split in needed:
        splits[split], _ = cached_extract(model, sha, data.describe(), split, data.split(split), cache_dir,
                                          device=device, progress=progress, desc=f"{name}/{split}")
    inp = Inputs(splits, model.num_classes)
    results: dict[str, dict[str, Any]] = {}
    for a in chosen:
        results.update(ANALYSES.get(a).obj(inp))

    test = splits["test"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "arrays.npz") as fh:
        np.savez(fh, embeddings=test.embeddings, labels=test.labels, logits=test.logits)
    atomic_write_json(out / "results.json", {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "model": {"name": name, "source": str(weights), "sha256": sha, "meta": meta},
        "dataset": {"name": ds_name, "split": "test", "num_examples": int(len(test.labels)),
                    "classes": list(data.info.classes)},
        "metrics": results, "arrays": "arrays.npz", "created_utc": utc_now(), "versions": versions(),
    })
    return out


def _check_overwrite(results: Path, sha: str, force: bool) -> None:
    """Refuse to replace results of a *different* model unless ``force``; same model → refresh in place."""
    if force or not results.exists():
        return
    import json

    try:
        old = json.loads(results.read_text())["model"]["sha256"]
    except Exception:
        old = None
    if old != sha:
        raise EmbedlabError(f"{results} holds results of another model; choose another --out or pass --force")
