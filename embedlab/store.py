"""Embedding extraction with an on-disk cache.

``extract`` runs a model over a dataset split (batched, ``no_grad``, eval mode, bf16 autocast on CUDA) and streams
embeddings ``(N, d)``, logits ``(N, C)`` and labels ``(N,)`` into ``.npy`` files, so that extractions larger than
memory (1.3M × 2048) work; the arrays are then opened memory-mapped. ``cached_extract`` keys an extraction by
everything that determines its output (:func:`cache_key`): the model's content hash, what the model computes, the
dataset's description and content, the split, the transform and the precision, so a second analysis reuses it and
a changed input never reads a stale entry.

A cache entry is a directory ``<key>/`` holding the three arrays and ``done.json`` (shapes and SHA-256 of each file),
written last and atomically: an entry without a valid ``done.json``, or whose files do not match it, is rebuilt,
never used.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from embedlab.data import collate_batched
from embedlab.io import atomic_write_json, sha256_file

CACHE_VERSION = 3  # 3: keys cover the computation, the data's content and the precision
FIELDS = ("embeddings", "logits", "labels")


@dataclass
class Extracted:
    """Arrays of one split: embeddings (N, d) float32, labels (N,) int64, logits (N, C) float32 or None."""

    embeddings: np.ndarray
    logits: np.ndarray | None
    labels: np.ndarray


def default_cache_dir() -> Path:
    return Path(os.environ.get("EMBEDLAB_CACHE", Path.home() / ".cache" / "embedlab"))


@torch.no_grad()
def extract(model: torch.nn.Module, dataset: Dataset, out_dir: str | Path | None = None, *,
            device: torch.device | str = "cpu", batch_size: int = 512, num_workers: int = 0,
            progress: bool = False, desc: str = "extract") -> Extracted:
    """Run ``(z, logits) = model.embed_and_logits(x)`` over ``dataset`` in order (``logits`` None: a model without
    a classifier, e.g. a text encoder; then no logits are stored).

    With ``out_dir`` the arrays are streamed into ``out_dir/{embeddings,logits,labels}.npy`` and returned
    memory-mapped; without it they are gathered in memory.
    """
    device = torch.device(device)
    was_training = model.training
    model = model.to(device).eval()
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batched,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    dtype = autocast_dtype(device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else torch.autocast("cpu", enabled=False))
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    try:
        for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            with autocast:  # x: an input batch, or a list of strings for a text encoder
                z, logits = model.embed_and_logits(x.to(device, non_blocking=True) if torch.is_tensor(x) else x)
            batch = {"embeddings": z.float().cpu().numpy(), "labels": torch.as_tensor(y).long().cpu().numpy()}
            if logits is not None:  # an encoder without a classifier gives none
                batch["logits"] = logits.float().cpu().numpy()
            if not arrays:
                for k, v in batch.items():
                    shape = (n, *v.shape[1:])
                    arrays[k] = (_allocated_memmap(Path(out_dir) / f"{k}.npy", v.dtype, shape)
                                 if out_dir is not None else np.empty(shape, dtype=v.dtype))
            for k, v in batch.items():
                arrays[k][pos:pos + len(v)] = v
            pos += len(batch["labels"])
    finally:
        model.train(was_training)
    if pos != n:
        raise RuntimeError(f"extraction produced {pos} rows for a dataset of {n}")
    for a in arrays.values():
        if isinstance(a, np.memmap):
            a.flush()
    return Extracted(arrays["embeddings"], arrays.get("logits"), arrays["labels"])


def _allocated_memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A ``.npy`` file opened for writing through a memory map, with its disk space reserved first.

    ``open_memmap`` creates a sparse file: on a full disk the first write into an unbacked page kills the process
    with SIGBUS. ``posix_fallocate`` reserves every block up front, so a full disk is an ``OSError`` (ENOSPC) here.
    """
    arr = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without fallocate
                del arr
                raise OSError(e.errno, f"{e.strerror} (the embedding cache needs "
                                       f"{np.prod(shape) * np.dtype(dtype).itemsize / 2**20:.1f} MiB for "
                                       f"{path.name}; choose another --cache-dir or $EMBEDLAB_CACHE)",
                              str(path.parent.parent)) from None
    return arr


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of an extraction on ``device``: bf16 on CUDA, none (the model's own dtype, fp32) elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def precision(device: torch.device | str) -> str:
    """The precision of an extraction on ``device`` as recorded in the cache key and in results.json:
    ``"bfloat16-autocast"`` on CUDA, ``"float32"`` on CPU (see :func:`autocast_dtype`)."""
    dtype = autocast_dtype(device)
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')}-autocast"


def cache_key(model_sha256: str, dataset: dict[str, Any], split: str, transform: str = "eval", *,
              computation: str = "", data: str = "", precision: str = "float32") -> str:
    """The cache entry of one extraction, a hash of everything that determines its output: the weights
    (``model_sha256``), the computation (``computation``: :func:`embedlab.fingerprint.module_fingerprint`, so two
    networks with the same parameters but another activation differ), the dataset's description and content
    (``data``: :func:`embedlab.fingerprint.dataset_fingerprint`, so swapped files under the same names differ), the
    split, the transform and the precision (a bf16 GPU extraction and an fp32 CPU one never share an entry)."""
    blob = json.dumps({"v": CACHE_VERSION, "model": model_sha256, "computation": computation, "dataset": dataset,
                       "data": data, "split": split, "transform": transform, "precision": precision},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def read_entry(entry: Path, verify: bool = True) -> Extracted | None:
    """Open a complete cache entry memory-mapped; None if it is missing, partial or corrupted."""
    try:
        done = json.loads((entry / "done.json").read_text())
        out: dict[str, Any] = {"logits": None}  # an encoder without a classifier has no logits file
        for k in FIELDS:
            if k == "logits" and k not in done:
                continue
            path = entry / f"{k}.npy"
            if verify and sha256_file(path) != done[k]["sha256"]:
                return None
            out[k] = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(out[k].shape) != done[k]["shape"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Extracted(out["embeddings"], out["logits"], out["labels"])


def cached_extract(model: torch.nn.Module, model_sha256: str, dataset_desc: dict[str, Any], split: str,
                   dataset: Dataset, cache_dir: str | Path | None = None, **kw: Any) -> tuple[Extracted, bool]:
    """Extract or reuse a cached extraction; returns ``(arrays, was_cached)``. The key (:func:`cache_key`) is
    computed here from ``model``, ``dataset`` and the device, never taken on trust from the caller's names."""
    from embedlab.fingerprint import dataset_fingerprint, module_fingerprint

    root = Path(cache_dir or default_cache_dir())
    entry = root / cache_key(model_sha256, dataset_desc, split, computation=module_fingerprint(model),
                             data=dataset_fingerprint(dataset), precision=precision(kw.get("device", "cpu")))
    hit = read_entry(entry)
    if hit is not None:
        return hit, True
    tmp = root / f".{entry.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        out = extract(model, dataset, tmp, **kw)
        del out
        atomic_write_json(tmp / "done.json", {k: {"sha256": sha256_file(tmp / f"{k}.npy"),
                                                  "shape": list(np.load(tmp / f"{k}.npy", mmap_mode="r").shape)}
                                              for k in FIELDS if (tmp / f"{k}.npy").exists()})
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = read_entry(entry, verify=False)
    assert result is not None
    return result, False
