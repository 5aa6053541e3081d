"""Embedding extraction with an on-disk cache.

``extract`` runs the encoder f and classifier g over a dataset split (batched, ``no_grad``, eval mode, bf16 autocast
on CUDA) and returns embeddings ``(N, d)``, logits ``(N, C)`` and labels ``(N,)``. ``cached_extract`` keys the result
by the checkpoint's content hash, the dataset description, the split and the transform, so a second analysis of the
same model reuses it. Cache files are written atomically; an unreadable entry is rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embedlab.data import collate_batched
from embedlab.io import atomic_write
from embedlab.models import EmbedNet

CACHE_VERSION = 1


@dataclass
class Extracted:
    """Arrays of one split: embeddings (N, d) float32, labels (N,) int64, logits (N, C) float32 or None."""

    embeddings: np.ndarray
    logits: np.ndarray | None
    labels: np.ndarray


def default_cache_dir() -> Path:
    return Path(os.environ.get("EMBEDLAB_CACHE", Path.home() / ".cache" / "embedlab"))


@torch.no_grad()
def extract(model: EmbedNet, dataset: Dataset, *, device: torch.device | str = "cpu", batch_size: int = 512,
            num_workers: int = 0, progress: bool = False, desc: str = "extract") -> Extracted:
    """Run ``z = f(x)`` and ``g(z)`` over ``dataset`` in order."""
    device = torch.device(device)
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batched,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    embs, logits, labels = [], [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        with autocast:
            z = model.forward_features(x.to(device, non_blocking=True))
            out = model.forward_head(z)
        embs.append(z.float().cpu())
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    return Extracted(torch.cat(embs).numpy(), torch.cat(logits).numpy(), torch.cat(labels).long().numpy())


def cache_key(model_sha256: str, dataset: dict[str, Any], split: str, transform: str = "eval") -> str:
    blob = json.dumps({"v": CACHE_VERSION, "model": model_sha256, "dataset": dataset, "split": split,
                       "transform": transform}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read(path: Path) -> Extracted | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            out = Extracted(f["embeddings"], f["logits"], f["labels"])
    except Exception:  # any unreadable/partial entry is rebuilt
        return None
    n = len(out.labels)
    if len(out.embeddings) != n or len(out.logits) != n:
        return None
    return out


def cached_extract(model: EmbedNet, model_sha256: str, dataset_desc: dict[str, Any], split: str,
                   dataset: Dataset, cache_dir: str | Path | None = None, **kw: Any) -> tuple[Extracted, bool]:
    """Extract or reuse a cached extraction; returns ``(arrays, was_cached)``."""
    path = Path(cache_dir or default_cache_dir()) / f"{cache_key(model_sha256, dataset_desc, split)}.npz"
    if path.exists():
        hit = _read(path)
        if hit is not None:
            return hit, True
    out = extract(model, dataset, **kw)
    with atomic_write(path) as fh:
        np.savez(fh, embeddings=out.embeddings, logits=out.logits, labels=out.labels)
    return out, False
