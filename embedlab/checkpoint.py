"""Self-describing checkpoints as safetensors: weights plus a JSON metadata header (model, method, data, config,
metrics, versions). Loading never executes code from the file (safetensors holds tensors and strings only).

Layout of a run directory::

    run/model.safetensors   weights of the last epoch, metadata under the header key "embedlab"
    run/best.safetensors    weights of the best-validation epoch (same metadata)
    run/meta.json           the same metadata, human-readable
    run/metrics.jsonl       one JSON line per epoch
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write_bytes, atomic_write_json
from embedlab.models import EmbedNet, create_model

FORMAT = "embedlab.checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META_KEY = "embedlab"


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result."""
    import numpy

    import embedlab

    out = {"embedlab": embedlab.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / torch.compile wrappers before saving."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Atomically write ``model``'s weights and ``meta`` (JSON-able) as one safetensors file."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    data = save(state, metadata={META_KEY: json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta})})
    atomic_write_bytes(path, data)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory or a ``.safetensors`` file → the weights file; clear error when there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.exists():
        raise EmbedlabError(f"checkpoint not found: {p} (expected a run directory holding {WEIGHTS} or a .safetensors file)")
    return p


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and metadata; never executes code. Raises :class:`EmbedlabError` naming the file on failure."""
    from safetensors import SafetensorError, safe_open

    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise EmbedlabError(f"cannot read checkpoint {p}: {e} (truncated or not a safetensors file?)") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise EmbedlabError(f"checkpoint {p} has no embedlab metadata (not written by embedlab train)") from None
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise EmbedlabError(f"checkpoint {p}: unsupported format {meta.get('format')!r} "
                            f"version {meta.get('format_version')!r}")
    return state, meta


def build_model(meta: dict[str, Any]) -> EmbedNet:
    """Rebuild the architecture described by a checkpoint's metadata (random weights)."""
    m = meta["model"]
    return create_model(m["name"], m["num_classes"], m["input_shape"], m.get("mean"), m.get("std"),
                        **m.get("options", {}))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[EmbedNet, dict[str, Any]]:
    """Rebuild a model from a checkpoint and load its weights (strict: every tensor must match)."""
    state, meta = load_checkpoint(path)
    model = build_model(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise EmbedlabError(f"checkpoint {resolve_checkpoint(path)} does not match its model "
                            f"{meta['model']['name']!r}: {' '.join(first)}") from None
    return model.to(device).eval(), meta


def write_meta_json(run_dir: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / "meta.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})
