"""Models a user brings, described by a small JSON spec, and precomputed embedding arrays.

A spec names the architecture, the weights file, the dataset it is evaluated on, its preprocessing and where its
embedding is read::

    {"name": "my-r18", "kind": "torchvision", "arch": "resnet18", "weights": "r18.pth", "num_classes": 10,
     "dataset": "cifar10", "data_root": "~/data",
     "preprocess": {"size": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
     "embedding": null}

(``preprocess``: resize to ``size``², ``interpolation`` bilinear or bicubic, centre crop to ``crop``², normalise.)

``kind``: ``torchvision`` / ``timm`` (architecture by name), ``factory`` (``arch`` = ``package.module:function``
returning an ``nn.Module``), ``torchscript`` (``weights`` is a TorchScript file), ``export`` (``weights`` is an
exported program, ``torch.export.save``: the recommended way to hand over any model), ``huggingface`` (``weights``
is a local ``save_pretrained`` folder of a transformers image classifier, or a sentence-transformers folder on a
``text`` dataset, see :mod:`embedlab.text`; needs ``embedlab[hf]``). ``embedding``: null (the input of
the last linear layer), a module name (its output, flattened) or ``method:NAME`` (``model.NAME(x)``, e.g.
``method:forward_features``). ViM and ReAct use the classifier's weights on the embedding: they run only where the
model's last linear layer maps this embedding to its logits (checked once on a random batch), and are skipped with
the reason otherwise. 1-channel data is repeated to three channels only for a network whose first convolution takes
three (timm's ``"factory_kwargs": {"in_chans": 1}`` reads it as it is). Weights load with
``torch.load(weights_only=True)`` or safetensors, so a weights file never executes code. TorchScript files and
``factory`` modules *are* code: use them only for models you trust.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from embedlab.config import MAX_CLASSES, parse_options
from embedlab.errors import EmbedlabError, EmbedlabWarning
from embedlab.io import check_npz_sizes, require_regular_file, sha256_file
from embedlab.models import (
    ExternalNet,
    Geometry,
    _last_linear,
    check_embedding_method,
    external_input,
    first_conv_channels,
    head_maps,
    head_mismatch,
)

KINDS = ("torchvision", "timm", "factory", "torchscript", "export", "huggingface")


@dataclasses.dataclass
class Preprocess:
    """A spec's ``preprocess``: images in [0, 1] resized to ``size``² (``interpolation``: bilinear or bicubic), then
    centre-cropped to ``crop``², then normalised by ``mean``/``std``."""

    size: Optional[int] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    crop: Optional[int] = None
    interpolation: Optional[str] = None  # bilinear unless a Hugging Face image processor says bicubic

    def validate(self, where: str) -> None:
        if self.interpolation not in (None, "bilinear", "bicubic"):
            raise EmbedlabError(f"{where}: interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        for key in ("size", "crop"):
            if getattr(self, key) is not None and not 1 <= getattr(self, key) <= MAX_IMAGE_SIDE:
                raise EmbedlabError(f"{where}: {key} must be 1 .. {MAX_IMAGE_SIDE} pixels, got {getattr(self, key)}")

    def geometry(self, fallback: dict[str, Any] | None = None) -> Geometry:
        """Size, crop and interpolation, each from this spec where given, else from ``fallback`` (a processor's)."""
        fb = fallback or {}
        return Geometry(self.size or fb.get("size"), self.crop or fb.get("crop"),
                        self.interpolation or fb.get("interpolation") or "bilinear")


@dataclasses.dataclass
class ModelSpec:
    name: str
    kind: str
    dataset: str
    arch: Optional[str] = None
    weights: Optional[str] = None
    num_classes: Optional[int] = None
    data_root: Optional[str] = None
    dataset_options: dict = dataclasses.field(default_factory=dict)
    preprocess: dict = dataclasses.field(default_factory=dict)
    embedding: Optional[str] = None
    factory_kwargs: dict = dataclasses.field(default_factory=dict)

    def validate(self, where: str) -> None:
        for key in ("dataset_options", "preprocess", "factory_kwargs"):
            value = getattr(self, key)
            if value is None:  # "dataset_options": null is no options
                setattr(self, key, {})
            elif not isinstance(value, dict):
                raise EmbedlabError(f"{where}: {key!r} must be a JSON object of key: value pairs, got {value!r}")
        if self.kind not in KINDS:
            raise EmbedlabError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.num_classes is not None and not 1 <= self.num_classes <= MAX_CLASSES:
            raise EmbedlabError(f"{where}: num_classes must be 1 .. {MAX_CLASSES:,}, got {self.num_classes:,}")
        if self.kind not in ("torchscript", "export", "huggingface") and not self.arch:
            raise EmbedlabError(f"{where}: kind {self.kind!r} needs 'arch'")
        if self.kind in ("torchscript", "export", "huggingface") and not self.weights:
            what = {"torchscript": "the TorchScript file", "export": "the .pt2 file of torch.export.save",
                    "huggingface": "the folder written by save_pretrained"}[self.kind]
            raise EmbedlabError(f"{where}: kind {self.kind!r} needs 'weights' ({what})")


def read_spec(path: str | Path) -> ModelSpec:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EmbedlabError(f"cannot read model spec {p}: {e}") from None
    except RecursionError:
        raise EmbedlabError(f"cannot read model spec {p}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise EmbedlabError(f"model spec {p}: expected a JSON object")
    for key in ("name", "kind", "dataset"):
        if key not in raw:
            raise EmbedlabError(f"model spec {p}: missing required key {key!r}")
    spec = parse_options(ModelSpec, raw, f"model spec {p}")
    parse_options(Preprocess, spec.preprocess, f"model spec {p} preprocess")
    return spec


def load_weights(path: Path) -> dict[str, Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling code (weights_only=True)."""
    if not path.exists():
        raise EmbedlabError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise EmbedlabError(f"cannot read weights {path}: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for files with code/objects; RuntimeError/EOFError for bad files
        lines = [line.strip().rstrip(".") for line in str(e).strip().splitlines()]
        # the GLOBAL line says what the file asks to run; torch's first line only advises weights_only=False
        first = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(e).__name__)
        raise EmbedlabError(f"refusing to load {path}: not a plain tensor file "
                            f"(torch.load with weights_only=True failed: {first})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise EmbedlabError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


class _UserNet(nn.Module):
    """What the wrappers of programs a user brings share: the buffers and the input side of :class:`ExternalNet`
    (:func:`embedlab.models.external_input`), and the head g, a frozen copy of the program's last linear layer, kept
    only where it maps the embedding to the logits, or None (ViM and ReAct are then skipped, with
    ``no_head_reason`` where the wrapper knows it)."""

    no_head_reason: str | None = None

    def __init__(self, input_shape, mean, std, resize: "int | Geometry | None", gray_to_rgb: bool) -> None:
        super().__init__()
        self.resize, self.gray_to_rgb = resize, gray_to_rgb
        shape = (-1,) + (1,) * (len(input_shape) - 1)
        self.register_buffer("input_mean", torch.tensor(mean or [0.0]).reshape(shape))
        self.register_buffer("input_std", torch.tensor(std or [1.0]).reshape(shape))
        object.__setattr__(self, "head", None)  # a copy of the program's weights, not a second copy to store

    def normalise(self, x: Tensor) -> Tensor:
        return external_input(x, self.input_mean, self.input_std, self.resize, self.gray_to_rgb)

    def check_head(self, x: Tensor, reason: str) -> None:
        """Keep the head only if it maps the embedding to the logits on the batch ``x``; else None, and
        ``no_head_reason`` is ``reason`` and why. A program that cannot run on ``x`` keeps it: open_spec's check
        then says what is wrong in one line."""
        if self.head is None:
            return
        try:
            with torch.no_grad():
                z, logits = self.embed_and_logits(x)
        except (RuntimeError, ValueError, AssertionError, EmbedlabError):
            return
        why = head_mismatch(self.head, z, logits)
        if why is not None:
            object.__setattr__(self, "head", None)
            self.no_head_reason = f"{reason}: {why}"


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Nothing below ERROR from the ``logging`` logger ``name`` (and its children) while inside."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _frozen_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding a copy of ``weight`` (C, d) and ``bias`` (C,), without gradients."""
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head.requires_grad_(False)


class _Tap(nn.Module):
    """Identity that keeps the last tensor it saw: inserted after a node of an exported graph to read it."""

    def forward(self, x: Tensor) -> Tensor:
        self.value = x
        return x


LINEAR_OPS = ("aten.linear.default", "aten.addmm.default")


class ExportedNet(_UserNet):
    """A ``torch.export`` program as an embedlab model: logits are its output (the first one if it returns several);
    the embedding is the input of the last linear op in its graph (``embedding`` null) or output ``K`` of the
    program (``"output:K"``). With the last linear op found, its weight and bias are the head g (ViM, ReAct) where it
    maps that embedding to the logits (checked once on a dummy batch)."""

    def __init__(self, gm: nn.Module, tap: _Tap | None, output: int | None, head: nn.Linear | None, input_shape,
                 net_channels: int | None, mean, std, resize: "int | Geometry | None") -> None:
        super().__init__(input_shape, mean, std, resize, gray_to_rgb=net_channels == 3 and input_shape[0] == 1)
        self.net, self.tap, self.output = gm, tap, output
        object.__setattr__(self, "head", head)

    @classmethod
    def load(cls, path: Path, embedding: str | None, input_shape, mean, std, resize) -> "ExportedNet":
        try:
            with warnings.catch_warnings(), _quiet_logger("torch.export"):  # it logs its own 12-line traceback
                warnings.simplefilter("ignore")
                program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001 - any failure to read the archive is the file's fault
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EmbedlabError(f"cannot load exported program {path}: {msg} (write it with torch.export.save)") \
                from None
        gm = program.module()
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        val = placeholders[0].meta.get("val") if placeholders else None
        channels = int(val.shape[1]) if val is not None and len(val.shape) == 4 else None
        linears = [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in LINEAR_OPS]
        head = _head_of(gm, linears[-1]) if linears else None
        tap, output = None, None
        if embedding is None:
            if not linears:
                raise EmbedlabError(f"{path}: the exported program has no linear layer whose input could be the "
                                    f"embedding; give \"embedding\": \"output:K\" (the program output that holds it)")
            last = linears[-1]
            z_node = last.args[0] if str(last.target) == "aten.linear.default" else last.args[1]
            gm.add_submodule("embedlab_tap", _Tap())
            with gm.graph.inserting_after(z_node):
                tapped = gm.graph.call_module("embedlab_tap", (z_node,))
            z_node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
            gm.recompile()
            tap = gm.get_submodule("embedlab_tap")
        elif embedding.startswith("output:") and embedding[7:].isdigit():
            output = int(embedding[7:])
        else:
            raise EmbedlabError(f"\"embedding\" of an exported program must be null (the input of its last linear "
                                f"layer) or \"output:K\", got {embedding!r}")
        model = cls(gm, tap, output, head, input_shape, channels, mean, std, resize)
        if head is None:
            model.no_head_reason = ("the exported program has no linear op whose weight and bias are attributes of "
                                    "its graph (the classifier g)")
        where = "the input of that op" if output is None else f"read at \"{embedding}\""
        model.check_head(torch.rand(2, *input_shape), f"the exported program's last linear op does not map the "
                                                      f"embedding ({where}) to its logits")
        return model

    def train(self, mode: bool = True) -> "ExportedNet":
        """An exported program has no train mode (it was traced in eval mode): only this wrapper's flag changes."""
        self.training = mode
        return self

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        try:
            out = self.net(self.normalise(x))
        except (RuntimeError, AssertionError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EmbedlabError(f"the exported program cannot run on inputs of shape {tuple(x.shape)}: {msg} (export "
                                f"it with a dynamic batch dimension, dynamic_shapes={{'x': {{0: Dim('batch')}}}}, and "
                                f"the dataset's image size, or set preprocess.size)") from None
        if isinstance(out, dict):
            raise EmbedlabError(f"the exported program returns a dict (keys {', '.join(map(str, out))[:200]}); "
                                f"embedlab reads its logits as a tensor, or as the first of a tuple of tensors: "
                                f"export a wrapper returning out['logits'] (and the embedding as a second output)")
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if not outs or not all(isinstance(o, Tensor) for o in outs):
            raise EmbedlabError(f"the exported program returns {type(out).__name__} of "
                                f"{', '.join(type(o).__name__ for o in outs) or 'nothing'}; embedlab reads a tensor "
                                f"of logits, or a flat tuple of tensors whose first is the logits")
        logits = outs[0]
        if self.output is None:
            z = self.tap.value
        else:
            if self.output >= len(outs):
                raise EmbedlabError(f"\"embedding\": \"output:{self.output}\" but the program returns "
                                    f"{len(outs)} output(s)")
            z = outs[self.output]
        if z.dim() != 2 or logits.dim() != 2:
            raise EmbedlabError(f"the exported program's embedding and logits must be (N, d) and (N, C); got "
                                f"{tuple(z.shape)} and {tuple(logits.shape)} (choose another \"embedding\")")
        return z, logits

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)[1]

    def embed_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x)


def _head_of(gm: nn.Module, node: Any) -> nn.Linear | None:
    """The weight and bias of a linear op whose parameters are attributes of ``gm``, as an ``nn.Linear``."""
    try:
        if str(node.target) == "aten.linear.default":
            w_node, b_node = node.args[1], (node.args[2] if len(node.args) > 2 else None)
            weight = _attr(gm, w_node)
        else:  # addmm(bias, input, weight.t())
            b_node, wt = node.args[0], node.args[2]
            weight = _attr(gm, wt.args[0]).t() if getattr(wt, "op", "") == "call_function" else None
        bias = _attr(gm, b_node) if b_node is not None else None
    except (AttributeError, IndexError, TypeError):
        return None
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    return _frozen_linear(weight, bias)


def _attr(gm: nn.Module, node: Any) -> Any:
    if getattr(node, "op", None) != "get_attr":
        raise AttributeError(node)
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


class _HFLogits(nn.Module):
    """A transformers image classifier as ``x -> logits`` (``pixel_values`` in, ``.logits`` out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def load_huggingface(folder: Path) -> tuple[nn.Module, dict[str, Any], bool]:
    """A local ``save_pretrained`` folder of a transformers image model and its image processor's preprocessing:
    an image classifier (ViT, DINOv2, ConvNeXt, ... ``ForImageClassification``) or an image encoder without a head
    (``ViTModel``, ``Dinov2Model``, ``CLIPVisionModel(WithProjection)``, ...: the class ``config.architectures``
    names, looked up in the transformers package only). Weights are read from safetensors only and no remote code is
    run (``trust_remote_code=False`` on every load, and a folder whose configs carry a custom-code hook is refused
    before transformers reads it: :func:`refuse_custom_code`), so loading executes nothing from the folder; nothing
    is fetched from the hub. The model is first built on the ``meta`` device and checked against the tensors the
    weights hold (a config asking for a model larger than its weights is refused before anything is allocated), and
    weights missing from the files, or left over, are an error naming them (never a silently random network).
    Returns the model (float32), the preprocessing and whether it is a classifier."""
    try:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
    except ImportError:
        raise EmbedlabError("kind 'huggingface' needs transformers: pip install 'embedlab[hf]'") from None
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise EmbedlabError(f"{folder}: not a save_pretrained folder (no config.json)")
    refuse_custom_code(folder)
    _quiet_transformers(transformers)
    where = f"the transformers image model in {folder}"
    with _hf_errors(f"cannot read {folder / 'config.json'}"):
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    _check_hf_config(config, folder)
    archs = getattr(config, "architectures", None) or []
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        raise EmbedlabError(f"{folder / 'config.json'}: architectures must be a list of class names such as "
                            f"[\"ViTForImageClassification\"], got {archs!r:.100}")
    archs = list(archs)
    classifier = any(isinstance(a, str) and a.endswith("ForImageClassification") for a in archs)
    named = getattr(transformers, archs[0], None) if archs and isinstance(archs[0], str) else None
    if classifier or named is None:  # no architectures, or a name transformers does not define: by model_type
        from transformers.models.auto.auto_factory import _get_model_class

        auto = AutoModelForImageClassification if classifier else transformers.AutoModel
        if type(config) not in auto._model_mapping:
            raise EmbedlabError(f"{folder / 'config.json'}: transformers has no "
                                f"{'image classifier' if classifier else 'model'} for model_type "
                                f"{getattr(config, 'model_type', None)!r}")
        with _hf_errors(f"cannot load {where}"):
            cls = _get_model_class(config, auto._model_mapping)
    elif isinstance(named, type) and issubclass(named, transformers.PreTrainedModel):
        cls = named
    else:
        raise EmbedlabError(f"{folder / 'config.json'}: architectures names {archs[0]!r}, which is not a "
                            f"transformers model class (expected e.g. ViTModel or ViTForImageClassification)")
    _check_model_size(cls, config, folder)
    with _hf_errors(f"cannot load {where}"):
        net, info = cls.from_pretrained(folder, config=config, local_files_only=True, use_safetensors=True,
                                        trust_remote_code=False, dtype=torch.float32, output_loading_info=True)
    _check_loading_info(info, folder)
    pre: dict[str, Any] = {"channels": getattr(config, "num_channels", None)}
    if (folder / "preprocessor_config.json").is_file():
        with _hf_errors(f"cannot read the image processor {folder / 'preprocessor_config.json'}"):
            proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        pre.update(_processor_preprocessing(proc, folder / "preprocessor_config.json"))
    if pre.get("size") is None and getattr(config, "image_size", None):
        pre["size"] = _image_side(getattr(config, "image_size"), f"{folder / 'config.json'}: image_size")
    return net.eval(), pre, classifier


@contextlib.contextmanager
def _hf_errors(what: str):
    """Any failure of transformers while it reads a folder the user named is the folder's: one line (``what``:
    the first line of transformers' message), never a traceback. Running out of memory is the generic guard's."""
    try:
        yield
    except (EmbedlabError, MemoryError, KeyboardInterrupt):
        raise
    except RecursionError:
        raise EmbedlabError(f"{what}: JSON nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - transformers raises most types for malformed configs and weights
        if isinstance(e, RuntimeError) and _out_of_memory(e):
            raise
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise EmbedlabError(f"{what}: {type(e).__name__}: {msg}") from None


def _out_of_memory(e: BaseException) -> bool:
    """Whether a RuntimeError is torch's allocator failing (the CLI's generic guard reports it)."""
    msg = str(e)
    return any(m in msg for m in ("not enough memory", "DefaultCPUAllocator", "out of memory",
                                  "can't allocate memory"))


MAX_HF_LAYERS = 1000  # depth of a transformers model: far above any real one, low enough to build on meta at once
MAX_IMAGE_SIDE = 8192  # pixels, the side of the square an image is resized to


def _check_hf_config(config: Any, folder: Path) -> None:
    """What of a config.json embedlab refuses before building: quantisation (needs other packages and a GPU),
    an attention implementation other than eager / sdpa (flash-attention kernels), and depths past
    :data:`MAX_HF_LAYERS`."""
    where = folder / "config.json"
    if getattr(config, "quantization_config", None):
        raise EmbedlabError(f"{where}: a quantized model (quantization_config); embedlab reads float weights: save "
                            f"the model unquantized")
    attn = getattr(config, "_attn_implementation_internal", None) or getattr(config, "attn_implementation", None)
    if attn not in (None, "eager", "sdpa"):
        raise EmbedlabError(f"{where}: attention implementation {attn!r}; embedlab runs eager or sdpa attention "
                            f"(remove attn_implementation from config.json)")
    for key, value in config.to_dict().items():
        if ("layers" in key or key == "depths") and not isinstance(value, bool):
            depth = sum(value) if isinstance(value, list) and all(isinstance(v, int) for v in value) else value
            if isinstance(depth, int) and depth > MAX_HF_LAYERS:
                raise EmbedlabError(f"{where}: {key} = {depth} layers; embedlab builds at most {MAX_HF_LAYERS}")


def _check_model_size(cls: Any, config: Any, folder: Path) -> None:
    """Build the model on the ``meta`` device (nothing allocated) and refuse it when it has more parameters than
    the folder's safetensors files hold tensors: a config.json asking for a huge width, depth or image size."""
    from safetensors import safe_open

    with _hf_errors(f"cannot build the model config.json of {folder} describes"), torch.device("meta"):
        n_model = sum(p.numel() for p in cls(config).parameters())
    n_file = 0
    for f in sorted(folder.glob("*.safetensors")):
        with _hf_errors(f"cannot read weights {f}"):
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    n_file += int(np.prod(fh.get_slice(k).get_shape(), dtype=np.float64))
    if n_file == 0:
        raise EmbedlabError(f"{folder}: no tensors in any .safetensors file (embedlab reads weights saved by "
                            f"save_pretrained as safetensors)")
    if n_model > 2 * n_file + (1 << 24):  # a few missing tensors are the loading check's, named there
        raise EmbedlabError(f"{folder / 'config.json'} describes a model of {n_model:,} parameters but the weights "
                            f"hold {n_file:,} values; config.json does not match the weights (too wide, deep or "
                            f"large an image size?)")


def _check_loading_info(info: dict[str, Any], folder: Path) -> None:
    """Weights the model needs that the files lack (transformers would initialise them at random) or tensors the
    model has no place for: one line naming the first few."""
    for key, what in (("missing_keys", "has no tensor for"), ("unexpected_keys", "holds tensors the model does "
                                                                                 "not have:"),
                      ("mismatched_keys", "holds tensors of the wrong shape for")):
        keys = sorted(str(k if not isinstance(k, tuple) else k[0]) for k in (info.get(key) or ()))
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise EmbedlabError(f"the weights in {folder} {what} {shown}; they were not saved from this model "
                                f"(save_pretrained of the model config.json describes)")


def _image_side(value: Any, where: str) -> int | None:
    """An image side read from a config or an image processor: an int in 1 .. :data:`MAX_IMAGE_SIDE`, a
    ``[h, w]`` pair (its first side), or one line naming the field."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = value[0]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
        raise EmbedlabError(f"{where} must be an image side in pixels, 1 .. {MAX_IMAGE_SIDE}, got {value!r}")
    return value


def _side(value: Any, where: str) -> int | None:
    """The side of a processor's ``size`` / ``crop_size``: ``{"height": h, "width": w}``, ``{"shortest_edge": s}``,
    a ``SizeDict`` or an int."""
    if value is None or isinstance(value, (int, list, tuple)):
        return _image_side(value, where)
    get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
    side = get("height") or get("shortest_edge")
    return _image_side(side, where) if side is not None else None


def _processor_preprocessing(proc: Any, where: Path | str = "the image processor") -> dict[str, Any]:
    """What a transformers image processor does to an image, as embedlab's differentiable input side does it:
    ``size`` (resize, unless ``do_resize`` is off), ``crop`` (``crop_size`` where ``do_center_crop``),
    ``interpolation`` (its ``resample``: PIL's BICUBIC = 3 → bicubic, otherwise bilinear) and ``mean``/``std``
    (none where ``do_normalize`` is off). Images are already in [0, 1], as after the processor's rescale by 1/255.
    A field of the wrong type or out of range is one line naming it."""
    out: dict[str, Any] = {}
    if getattr(proc, "do_resize", True):
        out["size"] = _side(getattr(proc, "size", None), f"{where}: size")
    if getattr(proc, "do_center_crop", False):
        out["crop"] = _side(getattr(proc, "crop_size", None), f"{where}: crop_size")
    resample = getattr(proc, "resample", 2)
    if resample is not None and (isinstance(resample, bool) or not isinstance(resample, int)):
        resample = getattr(resample, "value", resample)  # PIL's Resampling enum
        if not isinstance(resample, int):
            raise EmbedlabError(f"{where}: resample must be a PIL resampling filter number, got {resample!r}")
    out["interpolation"] = "bicubic" if int(resample or 2) == 3 else "bilinear"
    if getattr(proc, "do_normalize", True):
        for key in ("mean", "std"):
            value = getattr(proc, f"image_{key}", None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if value is not None:
                if (not isinstance(value, (list, tuple)) or len(value) not in (1, 3, 4)
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                   for v in value)
                        or (key == "std" and min(value) <= 0)):
                    raise EmbedlabError(f"{where}: image_{key} must be 1 or 3 finite numbers"
                                        f"{' > 0' if key == 'std' else ''}, got {value!r}")
                value = [float(v) for v in value]
            out[key] = value
    return out


class HFImageNet(_UserNet):
    """A transformers image model read at a hidden state or as an encoder without a classifier: ``z`` is hidden
    state K averaged over its positions (``"hidden_state:K"``; tokens ``(N, T, D)`` → mean over T, feature maps
    ``(N, C, H, W)`` → mean over H, W) or, with ``embedding`` null, the encoder's pooled output (``image_embeds``,
    else ``pooler_output``, else the mean of ``last_hidden_state`` over positions). Logits are the classifier's, or
    None for an encoder (analyses that need logits are skipped). There is no head g (ViM and ReAct are skipped):
    z is not the input of a linear classifier here."""

    def __init__(self, net: nn.Module, classifier: bool, layer: int | None, input_shape, mean, std,
                 resize: "int | Geometry | None", channels: int | None) -> None:
        super().__init__(input_shape, mean, std, resize, gray_to_rgb=input_shape[0] == 1 and channels == 3)
        self.net, self.layer, self.has_logits = net, layer, classifier
        self.no_head_reason = (f"the embedding is hidden state {layer} averaged over positions, not the input of the "
                               f"classifier g (\"embedding\": null reads its input)" if classifier else
                               "an image encoder without a classifier has no g")

    def _out(self, x: Tensor) -> Any:
        return self.net(pixel_values=self.normalise(x), output_hidden_states=self.layer is not None)

    def forward(self, x: Tensor) -> Tensor:
        if not self.has_logits:
            raise EmbedlabError("this transformers image encoder has no classifier: it gives embeddings only")
        return self._out(x).logits

    def embed_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self._out(x)
        if self.layer is not None:
            z = _mean_over_positions(_hidden_state(out.hidden_states, self.layer))
        else:
            pooled = next((getattr(out, k) for k in ("image_embeds", "pooler_output")
                           if getattr(out, k, None) is not None), None)
            z = pooled.flatten(1) if pooled is not None else _mean_over_positions(out.last_hidden_state)
        return z, (out.logits if self.has_logits else None)


def _mean_over_positions(h: Tensor) -> Tensor:
    """``(N, T, D)`` → mean over T; ``(N, C, H, W)`` → mean over H, W; ``(N, D)`` as it is."""
    return h.mean(1) if h.dim() == 3 else h.mean((2, 3)) if h.dim() == 4 else h.flatten(1)


def _hidden_state(hidden: tuple[Tensor, ...], layer: int) -> Tensor:
    """Hidden state ``layer`` of a transformers output's ``hidden_states`` (negative counts from the last), or one
    line naming the range the model has."""
    if not -len(hidden) <= layer < len(hidden):
        raise EmbedlabError(f"\"embedding\": \"hidden_state:{layer}\" but the model has hidden states 0 .. "
                            f"{len(hidden) - 1} (or -1 .. -{len(hidden)} from the last)")
    return hidden[layer]


def _quiet_transformers(transformers: Any) -> None:
    """No transformers log lines or progress bars on stderr while embedlab loads a model the user named."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _hidden_state_layer(embedding: str | None) -> int | None:
    """K of ``"hidden_state:K"`` (negative counts from the last), None for anything else."""
    if embedding and re.fullmatch(r"hidden_state:-?[0-9]+", embedding):
        return int(embedding[13:])
    return None


def is_sentence_encoder(folder: Path) -> bool:
    """A sentence-transformers folder (``SentenceTransformer.save``): it lists its modules in ``modules.json``."""
    return folder.is_dir() and (folder / "modules.json").is_file()


class SentenceEncoder(nn.Module):
    """A sentence-transformers text encoder as an embedlab model without a classifier: ``embed_and_logits(texts)``
    returns ``(z, None)``, z ``(N, d)`` either the sentence embedding ``SentenceTransformer.encode`` gives (its own
    pooling and normalisation; ``embedding`` null) or, with ``"hidden_state:K"``, the attention-mask mean of the
    underlying transformer's hidden state K (0 = the token embeddings, L = the last layer):
    ``z_n = Σ_t m_nt h^K_nt / Σ_t m_nt``. There are no logits (analyses that need them are skipped) and no input
    gradients (the inputs are text)."""

    has_logits = False
    input_gradients = False
    batch_size = 32  # texts per forward pass within one extraction chunk (sentence-transformers' default)

    def __init__(self, st: nn.Module, layer: int | None) -> None:
        super().__init__()
        self.st, self.layer = st, layer
        object.__setattr__(self, "head", None)

    def forward(self, texts: list[str]) -> Tensor:
        raise EmbedlabError("a text encoder has no classifier: it gives embeddings only")

    def embed_and_logits(self, texts: list[str]) -> tuple[Tensor, None]:
        texts = list(texts)
        if self.layer is None:
            # encode sorts the texts by length and runs batches of 32 (its default): little padding
            z = self.st.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
            return z.float(), None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # by length, as encode does: less padding
        out = [self._hidden_mean([texts[i] for i in order[s:s + self.batch_size]])
               for s in range(0, len(texts), self.batch_size)]
        z = torch.empty(len(texts), out[0].shape[1], dtype=torch.float32, device=out[0].device)
        z[torch.as_tensor(order, device=z.device)] = torch.cat(out)
        return z, None

    def _hidden_mean(self, texts: list[str]) -> Tensor:
        features = self.st.preprocess(texts)
        device = next(self.st.parameters()).device
        ids, mask = features["input_ids"].to(device), features["attention_mask"].to(device)
        hidden = _hidden_state(self.st[0].auto_model(input_ids=ids, attention_mask=mask,
                                                      output_hidden_states=True).hidden_states, self.layer)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).float()


def load_sentence_encoder(folder: Path, embedding: str | None) -> SentenceEncoder:
    """A local sentence-transformers folder, loaded with ``trust_remote_code`` off and no hub access: from version
    6.0 sentence-transformers refuses a module class outside its own package without it, transformers reads the
    weights from safetensors (``use_safetensors``), and a Dense layer's torch file loads with ``weights_only``."""
    try:
        from importlib.metadata import version

        import sentence_transformers
        import transformers
    except ImportError:
        raise EmbedlabError("a sentence-transformers folder needs sentence-transformers: "
                            "pip install 'embedlab[hf]'") from None
    if int(version("sentence-transformers").split(".")[0]) < 6:
        raise EmbedlabError(f"embedlab reads sentence-transformers folders with sentence-transformers >= 6.0 (which "
                            f"refuses module classes from outside its package); found "
                            f"{version('sentence-transformers')}: pip install 'embedlab[hf]'")
    layer = None
    if embedding is not None:
        if _hidden_state_layer(embedding) is None:
            raise EmbedlabError(f"\"embedding\" of a sentence-transformers model must be null (its sentence "
                                f"embedding) or \"hidden_state:K\" (the mean of hidden state K over the tokens), got "
                                f"{embedding!r}")
        layer = _hidden_state_layer(embedding)
    refuse_custom_code(folder)
    _check_modules_json(folder)
    _quiet_transformers(transformers)
    reports: list[Any] = []
    try:
        with warnings.catch_warnings(), _recording_loading_reports(reports):
            warnings.simplefilter("ignore")
            st = sentence_transformers.SentenceTransformer(str(folder), device="cpu", local_files_only=True,
                                                           trust_remote_code=False,
                                                           model_kwargs={"use_safetensors": True,
                                                                         "dtype": torch.float32})
    except (EmbedlabError, MemoryError, KeyboardInterrupt):
        raise
    except RecursionError:
        raise EmbedlabError(f"cannot load the sentence-transformers model in {folder}: JSON nested too deeply") \
            from None
    except Exception as e:  # noqa: BLE001 - any failure to read the folder the user named is the folder's
        if isinstance(e, RuntimeError) and _out_of_memory(e):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if "not part of Sentence Transformers" in msg:  # sentence-transformers' refusal: name the class, not the URL
            msg = (msg.split(". Importing")[0] + "; importing it would run code, and embedlab never passes "
                   "trust_remote_code")
        raise EmbedlabError(f"cannot load the sentence-transformers model in {folder}: {msg[:400]}") from None
    for info in reports:
        _check_loading_info(info, folder)
    if len(st) == 0 or not hasattr(st[0], "tokenize") or getattr(st, "tokenizer", None) is None:
        raise EmbedlabError(f"{folder}/modules.json: the first module must be a transformer with a tokenizer "
                            f"(sentence_transformers Transformer), got "
                            f"{type(st[0]).__name__ if len(st) else 'no modules'}")
    tok = st.tokenizer
    specials = set(getattr(tok, "all_special_tokens", ()) or ())
    if tok is not None and specials and len(tok) <= len(specials):  # every word would be [UNK]: one embedding for all
        raise EmbedlabError(f"{folder}: its tokenizer knows only its {len(tok)} special tokens, so every word would "
                            f"be unknown; are its tokenizer files (tokenizer.json, vocab.txt, ...) missing?")
    positions = getattr(getattr(getattr(st[0], "auto_model", None), "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and isinstance(st.max_seq_length, int) and st.max_seq_length > positions:
        raise EmbedlabError(f"{folder}: max_seq_length {st.max_seq_length} (sentence_bert_config.json) exceeds the "
                            f"model's {positions} positions (max_position_embeddings); set max_seq_length <= "
                            f"{positions}")
    if layer is not None and not hasattr(st[0], "auto_model"):
        raise EmbedlabError(f"\"embedding\": \"{embedding}\": the first module of {folder} is not a transformer")
    return SentenceEncoder(st, layer).eval()


def _read_json(path: Path) -> Any:
    """A model folder's JSON file, or one line naming it when it is not JSON or nested too deeply to parse."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise EmbedlabError(f"{path}: not a JSON file ({str(e).splitlines()[0][:200]})") from None
    except RecursionError:
        raise EmbedlabError(f"{path}: JSON nested too deeply") from None


def _check_modules_json(folder: Path) -> None:
    """``modules.json`` must be a list of ``{"path": str, "type": "package.Class", ...}`` entries: one line for
    anything else, before sentence-transformers imports anything it names (it refuses classes outside its own
    package; a function, an int or a loss class there is a traceback from it otherwise)."""
    where = folder / "modules.json"
    entries = _read_json(where)
    if not isinstance(entries, list) or not entries:
        raise EmbedlabError(f"{where}: expected a non-empty list of modules, got {type(entries).__name__}")
    for i, e in enumerate(entries):
        kind = e.get("type") if isinstance(e, dict) else None
        if not isinstance(kind, str) or not isinstance(e.get("path", ""), str):
            raise EmbedlabError(f"{where}: module {i} must be {{\"path\": \"...\", \"type\": \"package.Class\"}}, "
                                f"got {e!r:.100}")
        if not kind.startswith("sentence_transformers."):
            continue  # sentence-transformers refuses it, naming it (never imported)
        module_name, _, name = kind.rpartition(".")
        try:  # sentence-transformers' own modules only: importing them runs nothing from the folder
            with warnings.catch_warnings():  # its deprecated aliases (sentence_transformers.models, ...) warn
                warnings.simplefilter("ignore")
                obj = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            continue  # a legacy name sentence-transformers maps itself, or one it refuses with its own message
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)) or ".losses" in kind or "Loss" in name:
            raise EmbedlabError(f"{where}: module {i} type {kind!r} is not a sentence-transformers module class "
                                f"(e.g. sentence_transformers.models.Transformer, Pooling, Dense, Normalize)")


@contextlib.contextmanager
def _recording_loading_reports(reports: list[Any]):
    """Collect the loading reports (missing, unexpected, mismatched keys) of the transformers models
    sentence-transformers loads inside, which it does not return; transformers only logs them (and embedlab
    quiets its log)."""
    try:
        from transformers import modeling_utils
    except ImportError:  # pragma: no cover - transformers is a dependency of sentence-transformers
        yield
        return
    original = getattr(modeling_utils, "log_state_dict_report", None)
    if original is None:  # another transformers version: no report to read
        yield
        return

    def record(*args: Any, **kwargs: Any) -> Any:
        info = kwargs.get("loading_info")
        if info is not None:
            reports.append({k: getattr(info, k, None) for k in ("missing_keys", "unexpected_keys",
                                                                 "mismatched_keys")})
        return original(*args, **kwargs)

    modeling_utils.log_state_dict_report = record
    try:
        yield
    finally:
        modeling_utils.log_state_dict_report = original


class ScriptedNet(_UserNet):
    """A TorchScript classifier: logits from ``forward``; the embedding from a method (``method:NAME``) or, with
    ``embed_method`` None, the input of the last linear op of ``forward``'s graph (read by a copy of that graph that
    also returns it, so a plain scripted torchvision/timm model needs no extra method). With the last linear layer
    found as a submodule, it is the head g (ViM, ReAct)."""

    def __init__(self, net: torch.jit.ScriptModule, embed_method: str | None, input_shape, mean, std,
                 resize: "int | Geometry | None") -> None:
        # 1-channel data into a network whose first convolution takes 3 channels: repeat the channel
        convs = [m for _, m in net.named_modules() if getattr(m, "original_name", "") == "Conv2d"]
        first = getattr(convs[0], "weight", None) if convs else None
        super().__init__(input_shape, mean, std, resize,
                         gray_to_rgb=input_shape[0] == 1 and isinstance(first, Tensor) and first.shape[1] == 3)
        self.net, self.embed_method = net, embed_method
        self._both = _embedding_and_logits_function(net) if embed_method is None else None

    def find_head(self, x: Tensor) -> None:
        """The last Linear submodule whose shape maps this embedding to these logits, as the head g."""
        with torch.no_grad():
            z, logits = self.embed_and_logits(x)
        linears = [m for _, m in self.net.named_modules() if getattr(m, "original_name", "") == "Linear"]
        for m in reversed(linears):
            w = getattr(m, "weight", None)
            if isinstance(w, Tensor) and tuple(w.shape) == (logits.shape[1], z.shape[1]):
                head = _frozen_linear(w, getattr(m, "bias", None))
                if head_maps(head, z, logits):
                    object.__setattr__(self, "head", head)
                return

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalise(x))

    def embed_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xn = self.normalise(x)
        if self._both is not None:
            z, logits = self._both(self.net._c, xn)
            return z.flatten(1), logits
        return getattr(self.net, self.embed_method)(xn).flatten(1), self.net(xn)


def _embedding_and_logits_function(net: torch.jit.ScriptModule) -> Any:
    """A TorchScript function ``(module, x) -> (input of the last linear op, logits)`` built from a copy of
    ``net.forward``'s inlined graph (TorchScript's graph API; the program itself is not changed)."""
    try:
        g = net.forward.graph.copy()
        torch._C._jit_pass_inline(g)
        linears = [n for n in g.nodes() if n.kind() in ("aten::linear", "aten::addmm")]
        if not linears:
            raise EmbedlabError("the TorchScript program has no linear layer whose input could be the embedding; give "
                                "\"embedding\": \"method:NAME\" (a method of the program returning it)")
        last = linears[-1]
        z = last.inputsAt(0) if last.kind() == "aten::linear" else last.inputsAt(1)
        old = list(g.outputs())[0]
        both = g.create("prim::TupleConstruct", [z, old])
        both.insertBefore(g.return_node())
        both.output().setType(torch._C.TupleType([z.type(), old.type()]))
        g.eraseOutput(0)
        g.registerOutput(both.output())
        return torch._C._create_function_from_graph("embedlab_embedding_and_logits", g)
    except (RuntimeError, AttributeError, IndexError, TypeError) as e:
        raise EmbedlabError(f"cannot find the embedding in the TorchScript program ({str(e).strip().splitlines()[0]}); "
                            f"give \"embedding\": \"method:NAME\"") from None


def build_external(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int,
                   base_dir: Path) -> tuple[nn.Module, str]:
    """The model described by ``spec`` with its weights loaded, and a content hash for the extraction cache."""
    pre = parse_options(Preprocess, spec.preprocess, "preprocess")
    weights = (base_dir / Path(spec.weights).expanduser()) if spec.weights else None
    h = _content_hash(spec, weights)
    n_cls = spec.num_classes or num_classes
    if spec.kind == "huggingface":
        net, hf_pre, classifier = load_huggingface(weights)
        geometry = pre.geometry(hf_pre)
        mean, std = pre.mean or hf_pre.get("mean"), pre.std or hf_pre.get("std")
        channels = hf_pre.get("channels")
        layer = _hidden_state_layer(spec.embedding)
        if classifier and layer is None:  # the input of the classification head, or a module's output
            logits_net = _HFLogits(net)
            model = ExternalNet(logits_net, _last_linear(logits_net, n_cls), input_shape, mean, std,
                                gray_to_rgb=input_shape[0] == 1 and channels == 3, resize=geometry,
                                embedding=f"model.{spec.embedding}" if spec.embedding and not
                                spec.embedding.startswith("method:") else spec.embedding)  # transformers' names
        else:
            if spec.embedding is not None and layer is None:
                raise EmbedlabError(f"\"embedding\" of a transformers image encoder must be null (its pooled "
                                    f"output) or \"hidden_state:K\" (hidden state K averaged over positions), got "
                                    f"{spec.embedding!r}")
            model = HFImageNet(net, classifier, layer, input_shape, mean, std, geometry, channels)
        return model.eval(), h.hexdigest()
    if spec.kind == "export":
        model = ExportedNet.load(weights, spec.embedding, input_shape, pre.mean, pre.std, pre.geometry())
        return model.eval(), h.hexdigest()
    if spec.kind == "torchscript":
        if spec.embedding is not None and not spec.embedding.startswith("method:"):
            raise EmbedlabError("a torchscript model's \"embedding\" is null (the input of its last linear layer) or "
                                "\"method:NAME\" (e.g. method:forward_features)")
        try:
            with warnings.catch_warnings():  # torch 2.14 deprecates jit.load; the user asked for this TorchScript file
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
                net = torch.jit.load(str(weights), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise EmbedlabError(f"cannot load TorchScript file {weights}: {str(e).splitlines()[0]}") from None
        method = spec.embedding[7:] if spec.embedding else None
        if method is not None:
            check_embedding_method(net, method)
        model: nn.Module = ScriptedNet(net, method, input_shape, pre.mean, pre.std, pre.geometry())
        try:
            model.find_head(torch.rand(2, *input_shape))
        except (RuntimeError, ValueError, EmbedlabError):
            pass  # the program cannot run on this input shape: open_spec's check says so in one line
    else:
        net = _instantiate(spec, n_cls, input_shape)
        if weights is not None:
            state = load_weights(weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise EmbedlabError(f"weights {weights} do not match {spec.arch!r}: "
                                    f"{' '.join(str(e).strip().splitlines()[0:2])}") from None
        head = net.get_classifier() if spec.kind == "timm" else _last_linear(net, n_cls)
        # 1-channel data into a network whose first convolution takes 3 channels: repeat the channel (timm's
        # in_chans=1, or a factory's own 1-channel stem, take the data as it is)
        model = ExternalNet(net, head, input_shape, pre.mean, pre.std,
                            gray_to_rgb=input_shape[0] == 1 and first_conv_channels(net) == 3, resize=pre.geometry(),
                            embedding=spec.embedding)
    return model.eval(), h.hexdigest()


def _content_hash(spec: ModelSpec, weights: Path | None) -> Any:
    """SHA-256 over the spec and the weights: the file, or the files a load of a Hugging Face folder reads
    (:func:`model_folder_files`, checked to be such a folder first, following symbolic links to module folders):
    for each file its path in the folder, its resolved real path and the SHA-256 of its bytes, so new weights
    behind a link, or a link pointed elsewhere, are another model. The cache key and the results' model hash."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str).encode())
    if weights is not None:
        if not weights.exists():
            raise EmbedlabError(f"weights file not found: {weights}")
        if weights.is_dir():
            files = model_folder_files(weights)
        else:
            files = [require_regular_file(weights, "weights file")]
        for f in files:
            rel = f.relative_to(weights) if weights.is_dir() else f.name
            h.update(f"{rel}\0{f.resolve()}\0".encode())
            h.update(sha256_file(f).encode())
    return h


# The files of a save_pretrained / SentenceTransformer.save folder that transformers and sentence-transformers read:
# configs, tokenizer files and safetensors weights, in the folder and in its module sub-folders (1_Pooling/, ...).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".tiktoken")
MAX_MODEL_FILES = 1000
MAX_CONFIG_BYTES = 64 << 20  # a config or tokenizer file larger than this is not one


def model_folder_files(folder: Path) -> list[Path]:
    """The files a Hugging Face load reads from ``folder`` (itself and its sub-folders one level down, following
    symbolic links: a sentence-transformers module folder may be one), after checking it is such a folder (``config.json`` or ``modules.json``): one
    line, before anything is hashed or read, for a folder that is not one (``"weights": "~"``), for more than
    :data:`MAX_MODEL_FILES` files, or for one of those files that is not a regular file (a FIFO would block)."""
    if not folder.is_dir() or not any((folder / n).is_file() for n in ("config.json", "modules.json")):
        raise EmbedlabError(f"{folder}: not a save_pretrained folder (no config.json, or modules.json for a "
                            f"sentence-transformers folder)")
    files: list[Path] = []
    dirs = [folder]
    try:
        with os.scandir(folder) as it:
            dirs += sorted(Path(e.path) for e in it if e.is_dir())  # one level: a link loop cannot recurse
        for d in dirs:
            with os.scandir(d) as it:
                for e in sorted(it, key=lambda e: e.name):
                    if e.name.endswith(MODEL_FILE_SUFFIXES) and not e.is_dir():
                        files.append(require_regular_file(e.path, "model file"))
                        if len(files) > MAX_MODEL_FILES:
                            raise EmbedlabError(f"{folder}: more than {MAX_MODEL_FILES} model files; is it a "
                                                f"save_pretrained folder?")
    except OSError as e:
        raise EmbedlabError(f"cannot read model folder {folder}: {e.strerror or e}") from None
    return files


# Keys of a config that make transformers or sentence-transformers import Python code from the folder (or from
# the hub) when trust_remote_code is on, and ask on the terminal whether to when it is not given.
CODE_HOOKS = ("auto_map", "custom_pipelines", "trust_remote_code")


def refuse_custom_code(folder: Path) -> None:
    """One line, before transformers reads anything of ``folder``, when one of its JSON configs carries a
    custom-code hook (:data:`CODE_HOOKS`, at any depth): transformers would ask whether to run the folder's code
    (and run it on yes). embedlab runs no code from a model folder, whatever the terminal answers."""
    for f in model_folder_files(folder):
        if f.suffix != ".json" or f.name in ("tokenizer.json", "vocab.json"):
            continue
        if f.stat().st_size > MAX_CONFIG_BYTES:
            raise EmbedlabError(f"{f}: {f.stat().st_size >> 20} MiB is too large for a config file")
        data = _read_json(f)
        if isinstance(data, dict):  # a class count transformers would build label tables for while reading it
            for key in ("num_labels", "id2label", "label2id"):
                n = data.get(key)
                n = len(n) if isinstance(n, (dict, list)) else n
                if isinstance(n, int) and not isinstance(n, bool) and n > MAX_CLASSES:
                    raise EmbedlabError(f"{f}: {key} asks for {n:,} classes; embedlab reads at most "
                                        f"{MAX_CLASSES:,}")
        hook = _code_hook(data)
        if hook is not None:
            raise EmbedlabError(f"{f}: {hook!r} asks to run Python code from the model folder; embedlab never runs "
                                f"a model folder's code (trust_remote_code stays off): use a model whose classes "
                                f"transformers itself defines, or load it yourself and pass the module to "
                                f"embedlab.evaluate")


def _code_hook(data: Any, depth: int = 0) -> str | None:
    """The first :data:`CODE_HOOKS` key in ``data`` (nested dicts and lists searched), or None."""
    if depth > 50:
        return None
    if isinstance(data, dict):
        for k, v in data.items():
            if k in CODE_HOOKS and v not in (None, False, {}, []):
                return str(k)
            found = _code_hook(v, depth + 1)
            if found is not None:
                return found
    elif isinstance(data, list):
        for v in data:
            found = _code_hook(v, depth + 1)
            if found is not None:
                return found
    return None


def build_text_encoder(spec: ModelSpec, base_dir: Path) -> tuple[SentenceEncoder, str]:
    """The sentence-transformers encoder of a ``huggingface`` spec on a ``text`` dataset, and its content hash."""
    if spec.preprocess:
        raise EmbedlabError("\"preprocess\" sets image size and normalisation; a text encoder tokenises as its "
                            "folder says (leave preprocess out)")
    weights = base_dir / Path(str(spec.weights)).expanduser()
    h = _content_hash(spec, weights)
    return load_sentence_encoder(weights, spec.embedding), h.hexdigest()


# factory_kwargs embedlab sets itself for torchvision / timm: given again they were "multiple values" TypeErrors
RESERVED_KWARGS = {"torchvision": ("num_classes", "weights", "pretrained", "progress"),
                   "timm": ("num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                            "checkpoint_path", "model_name")}


def _instantiate(spec: ModelSpec, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    if spec.kind in RESERVED_KWARGS:
        given = sorted(set(spec.factory_kwargs) & set(RESERVED_KWARGS[spec.kind]))
        if given:
            raise EmbedlabError(f"factory_kwargs {', '.join(given)}: embedlab sets {'this' if len(given) == 1 else 'these'} "
                                f"itself (the class count from \"num_classes\" or the dataset, the weights from "
                                f"\"weights\"; nothing is downloaded): remove {'it' if len(given) == 1 else 'them'}")
    if spec.kind == "torchvision":
        import torchvision

        if spec.arch not in torchvision.models.list_models():
            raise EmbedlabError(f"unknown torchvision model {spec.arch!r} (torchvision.models.list_models() names "
                                f"them)")
        with _constructor_errors(spec):
            return torchvision.models.get_model(spec.arch, weights=None, num_classes=num_classes, **spec.factory_kwargs)
    if spec.kind == "timm":
        try:
            import timm
        except ImportError:
            raise EmbedlabError("kind 'timm' needs timm: pip install timm") from None
        if not timm.is_model(spec.arch):
            raise EmbedlabError(f"unknown timm model {spec.arch!r} (timm.list_models() names them)")
        with _constructor_errors(spec):
            return timm.create_model(spec.arch, pretrained=False, num_classes=num_classes, **spec.factory_kwargs)
    module_name, _, fn_name = str(spec.arch).partition(":")
    if not fn_name:
        raise EmbedlabError(f"factory arch must be 'package.module:function', got {spec.arch!r}")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise EmbedlabError(f"cannot import factory {spec.arch!r}: {e}") from None
    net = fn(**spec.factory_kwargs)
    if not isinstance(net, nn.Module):
        raise EmbedlabError(f"factory {spec.arch!r} returned {type(net).__name__}, not an nn.Module")
    return net


@contextlib.contextmanager
def _constructor_errors(spec: ModelSpec):
    """A torchvision / timm constructor failing on the spec's factory_kwargs (unknown or mistyped): one line."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and _out_of_memory(e):
            raise
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise EmbedlabError(f"cannot build {spec.kind} model {spec.arch!r} with factory_kwargs "
                            f"{json.dumps(spec.factory_kwargs, default=str)[:200]}: {msg}") from None


ARRAY_KEYS = frozenset({"embeddings", "labels", "logits", "classes"} | {
    f"{split}_{key}" for split in ("train", "val", "test") for key in ("embeddings", "labels", "logits")})


def read_arrays(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray | None]], tuple[str, ...] | None]:
    """Precomputed arrays: an ``.npz`` with ``embeddings``, ``labels`` and optional ``logits`` (taken as the test
    split), or per split ``test_embeddings``, ``train_embeddings``, … ; optional ``classes`` (names).

    Returns ``{split: {"embeddings", "labels", "logits"}}`` and the class names (or None).
    """
    p = Path(path)
    check_npz_sizes(p, "arrays", ARRAY_KEYS)
    try:
        with np.load(p, allow_pickle=False) as f:
            names = list(f.files)
            data = {k: f[k] for k in names if k in ARRAY_KEYS}  # unknown keys are never read
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # TypeError: a single .npy array under an .npz name; EOFError: an empty file; BadZipFile: truncated/corrupt
        raise EmbedlabError(f"cannot read arrays {p}: {str(e) or type(e).__name__} (empty, truncated or not an "
                            f".npz file?)") from None
    unknown = sorted(set(names) - ARRAY_KEYS)
    if unknown:
        warnings.warn(EmbedlabWarning(
            f"{p}: ignored unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (embedlab reads "
            f"embeddings, labels, logits, classes, and train_/val_/test_ prefixed embeddings, labels, logits)"),
            stacklevel=2)
    splits: dict[str, dict[str, np.ndarray | None]] = {}
    for split in ("train", "val", "test"):
        prefix = "" if split == "test" and "embeddings" in data else f"{split}_"
        if f"{prefix}embeddings" not in data:
            continue
        if f"{prefix}labels" not in data:
            raise EmbedlabError(f"{p}: has {prefix}embeddings but no {prefix}labels")
        emb = _real_matrix(p, f"{prefix}embeddings", data[f"{prefix}embeddings"])
        labels = _class_indices(p, f"{prefix}labels", data[f"{prefix}labels"])
        logits = data.get(f"{prefix}logits")
        if logits is not None:
            logits = _real_matrix(p, f"{prefix}logits", logits)
        if len(labels) != len(emb) or (logits is not None and len(logits) != len(emb)):
            raise EmbedlabError(f"{p}: {prefix}embeddings, labels and logits differ in length "
                                f"({len(emb)}, {len(labels)}, {None if logits is None else len(logits)})")
        if len(emb) == 0:
            raise EmbedlabError(f"{p}: {prefix}embeddings hold no examples (0 rows); nothing to analyse")
        if not np.isfinite(emb).all() or (logits is not None and not np.isfinite(logits).all()):
            raise EmbedlabError(f"{p}: {prefix}embeddings or logits contain NaN or Inf")
        splits[split] = {"embeddings": emb, "labels": labels, "logits": logits}
    if "test" not in splits:
        raise EmbedlabError(f"{p}: no embeddings found (expected keys embeddings + labels, or test_embeddings + test_labels)")
    for what, key in (("embeddings", "embeddings"), ("logits", "logits")):
        widths = {k: v[key].shape[1] for k, v in splits.items() if v[key] is not None}
        if len(set(widths.values())) > 1:
            raise EmbedlabError(f"{p}: the splits' {what} differ in width ("
                                f"{', '.join(f'{k} {w}' for k, w in widths.items())}); every split must come from "
                                f"the same model")
    classes = None
    if "classes" in data:
        names = data["classes"]
        if names.ndim != 1 or names.dtype.kind not in "biuUS":
            raise EmbedlabError(f"{p}: classes must be a 1-D array of names, got {names.dtype} {names.shape}")
        if len(names) > MAX_CLASSES:
            raise EmbedlabError(f"{p}: {len(names)} class names; embedlab reads at most {MAX_CLASSES} classes")
        classes = tuple(str(c) for c in names)
    return splits, classes


def _real_matrix(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    """``a`` as a float32 ``(N, d)`` array; one line for strings, complex numbers, objects or the wrong shape."""
    if a.dtype.kind not in "biuf":
        raise EmbedlabError(f"{path}: {key} must be real numbers, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] == 0:
        raise EmbedlabError(f"{path}: {key} must be 2-D (N, d) with d >= 1, got shape {a.shape}")
    return np.asarray(a, dtype=np.float32)


def _class_indices(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    """Labels as int64 class indices ``(N,)`` in ``[0, MAX_CLASSES)``; floats only when every value is a whole
    number (never truncated), never negative."""
    if a.ndim != 1:
        raise EmbedlabError(f"{path}: {key} must be 1-D (N,) class indices, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise EmbedlabError(f"{path}: {key} must be whole-number class indices, got non-integer values "
                                f"such as {float(a[~(np.isfinite(a) & (a == np.round(a)))][0])}")
    elif a.dtype.kind not in "iub":
        raise EmbedlabError(f"{path}: {key} must be integer class indices, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise EmbedlabError(f"{path}: {key} must be class indices >= 0, got {a.min()}")
    if a.size and a.max() >= MAX_CLASSES:
        raise EmbedlabError(f"{path}: {key} reach class {int(a.max())}; embedlab reads at most {MAX_CLASSES} "
                            f"classes (labels must be class indices 0 .. C-1)")
    return a.astype(np.int64)
