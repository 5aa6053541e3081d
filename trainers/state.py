"""Resumable training state: ``OUT/train_state.pt``.

Written atomically at the end of every epoch with ``torch.save`` of tensors and plain Python types only, so it
loads with ``torch.load(weights_only=True)`` (no code runs on load). It holds everything that determines the rest
of the run: model weights and buffers, optimizer and LR-scheduler state, epoch and step, the run's metadata (history,
best epoch) and every random state of every process — torch CPU, CUDA, the mixing generator, the DataLoader's
shuffling generator, numpy and Python ``random`` — as they stand at the start of the next epoch.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write

STATE_FILE = "train_state.pt"
FORMAT = "embedlab.train_state"
FORMAT_VERSION = 1


def capture_rng(device: torch.device, mix_gen: torch.Generator, loader_gen: torch.Generator) -> dict[str, Any]:
    """Every random state this process draws from, as tensors and plain types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "mix": mix_gen.get_state(),
        "loader": loader_gen.get_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(rng: dict[str, Any], device: torch.device, mix_gen: torch.Generator,
                loader_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    try:
        mix_gen.set_state(rng["mix"])
    except (RuntimeError, ValueError):  # saved by a generator of another device (a CUDA run resumed on CPU, or back)
        import warnings

        from embedlab.errors import EmbedlabWarning

        mix_gen.manual_seed(int.from_bytes(hashlib.sha256(rng["mix"].numpy().tobytes()).digest()[:8], "little") >> 1)
        warnings.warn(EmbedlabWarning("the training state's mixing generator was saved on another device type; it is "
                                      "reseeded from that state, so this resume is not bit-identical to an "
                                      "uninterrupted run"), stacklevel=2)
    loader_gen.set_state(rng["loader"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if device.type == "cuda":
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)  # a state written on CPU leaves CUDA's RNG as seeded


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in sd.items()}


def save_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               epoch: int, step: int, config: dict[str, Any], meta: dict[str, Any], rng: list[dict[str, Any]],
               world_size: int) -> None:
    """Atomically write the training state after ``epoch`` (``rng``: one entry per process, by rank)."""
    obj = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "epoch": epoch, "step": step,
        "world_size": world_size, "config": json.dumps(config), "meta": json.dumps(meta),
        "model": _cpu(model.state_dict()), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng,
    }
    # Serialised in memory first: torch.save writing straight to a file that hits a full disk raises a RuntimeError
    # ("unexpected pos ...") instead of the OSError (ENOSPC) the file write below gives, with the file's name.
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getbuffer())


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state (``weights_only``: tensors and plain types, never code)."""
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EmbedlabError(f"no training state {p} to resume from") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):  # it asks to run code
            why = next((line.strip().rstrip(".") for line in str(e).splitlines() if "GLOBAL" in line),
                       "it holds objects other than tensors and plain types")
            raise EmbedlabError(f"refusing to load training state {p}: not a plain tensor file ({why}); embedlab "
                                f"never runs code from a file") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedlabError(f"cannot read training state {p}: {first} (empty, truncated or not written by "
                            f"embedlab train)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("format_version", 0) > FORMAT_VERSION:
        raise EmbedlabError(f"{p} is not an embedlab training state this version can read")
    obj["config"] = json.loads(obj["config"])
    obj["meta"] = json.loads(obj["meta"])
    return obj


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The resolved config of the run in ``run_dir`` if it has a training state, else None."""
    p = Path(run_dir) / STATE_FILE
    return load_state(p)["config"] if p.exists() else None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict: equal digests ⇔ bit-identical weights."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()
