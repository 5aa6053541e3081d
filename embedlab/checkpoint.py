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
from embedlab.io import atomic_write_bytes, atomic_write_json, require_regular_file
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
    return require_regular_file(p, "checkpoint")


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
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise EmbedlabError(f"checkpoint {p} has no embedlab metadata (not written by embedlab train)") from None
    version = meta.get("format_version", 0) if isinstance(meta, dict) else None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(version, int)
            or isinstance(version, bool) or version > FORMAT_VERSION):
        got = meta if not isinstance(meta, dict) else meta.get("format")
        raise EmbedlabError(f"checkpoint {p}: unsupported format {str(got)[:60]!r} "
                            f"version {meta.get('format_version') if isinstance(meta, dict) else None!r}")
    check_meta(meta, p)
    return state, meta


def check_meta(meta: dict[str, Any], where: Any, require_dataset: bool = False) -> None:
    """The parts of a checkpoint's metadata that loading it reads, of the right types and sizes (a hand-edited
    header is one clear line, and a class count or input shape is bounded before a model is built for it).
    ``dataset`` (what the model was trained on) is checked where present, and must be there with
    ``require_dataset`` (analysing the checkpoint)."""
    from embedlab.config import MAX_CLASSES

    def bad(key: str, what: str, value: Any) -> EmbedlabError:
        return EmbedlabError(f"checkpoint {where}: metadata {key} must be {what}, got {str(value)[:80]!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    m = meta.get("model")
    if not isinstance(m, dict):
        raise bad("'model'", "an object", m)
    if not isinstance(m.get("name"), str) or not m["name"]:
        raise bad("model.name", "a model name", m.get("name"))
    if not is_int(m.get("num_classes")) or not 1 <= m["num_classes"] <= MAX_CLASSES:
        raise bad("model.num_classes", f"an integer in [1, {MAX_CLASSES}]", m.get("num_classes"))
    shape = m.get("input_shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(is_int(v) and 1 <= v <= 1 << 16 for v in shape)):
        raise bad("model.input_shape", "1 to 4 sizes in [1, 65536]", shape)
    for key in ("mean", "std"):
        v = m.get(key)
        if v is not None and (not isinstance(v, list) or len(v) > 4096 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise bad(f"model.{key}", "null or a list of numbers", v)
    if not isinstance(m.get("options", {}), dict):
        raise bad("model.options", "an object", m.get("options"))
    ds = meta.get("dataset")
    if ds is None and not require_dataset:
        ds = {"name": ""}
    if not isinstance(ds, dict) or not isinstance(ds.get("name"), str):
        raise bad("'dataset'", "an object with a dataset name", ds)
    if ds.get("label_noise") is not None and not isinstance(ds["label_noise"], dict):
        raise bad("dataset.label_noise", "null or an object", ds["label_noise"])
    cfg = meta.get("config", {})
    if not isinstance(cfg, dict):
        raise bad("'config'", "an object", cfg)
    if not isinstance(cfg.get("dataset_options", {}), dict):
        raise bad("config.dataset_options", "an object", cfg.get("dataset_options"))
    if cfg.get("data_root") is not None and not isinstance(cfg["data_root"], str):
        raise bad("config.data_root", "null or a path", cfg["data_root"])


def build_model(meta: dict[str, Any], where: Any = "checkpoint") -> EmbedNet:
    """Rebuild the architecture described by a checkpoint's metadata (random weights)."""
    from embedlab.config import check_option_types
    from embedlab.models import MODELS

    m = meta["model"]
    options = m.get("options", {})
    if m["name"] in MODELS:
        check_option_types(MODELS.get(m["name"]).obj, options, f"{where}: model {m['name']!r}")
    try:
        return create_model(m["name"], m["num_classes"], m["input_shape"], m.get("mean"), m.get("std"), **options)
    except (TypeError, ValueError) as e:  # an unknown or out-of-range option
        raise EmbedlabError(f"{where}: cannot build model {m['name']!r} with options {options}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[EmbedNet, dict[str, Any]]:
    """Rebuild a model from a checkpoint and load its weights (strict: every tensor must match).

    The architecture is first built on the ``meta`` device (no memory) and checked against the file's tensors, so
    a header asking for a model far larger than the file's weights is refused before anything is allocated."""
    state, meta = load_checkpoint(path)

    def load(model: nn.Module) -> None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0:2]
            raise EmbedlabError(f"checkpoint {resolve_checkpoint(path)} does not match its model "
                                f"{meta['model']['name']!r}: {' '.join(first)}") from None

    import warnings

    where = f"checkpoint {resolve_checkpoint(path)}"
    try:
        with torch.device("meta"):
            shell = build_model(meta, where)
    except (NotImplementedError, RuntimeError):  # an architecture that cannot be built without data: no pre-check
        shell = None
    if shell is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying from a non-meta parameter ... is a no-op": the point here
            load(shell)
        del shell
    model = build_model(meta, where)
    load(model)
    return model.to(device).eval(), meta


def write_meta_json(run_dir: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / "meta.json", {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})
