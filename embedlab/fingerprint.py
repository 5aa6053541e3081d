"""Fingerprints for the extraction cache: what a model computes and what a dataset split holds.

The cache key of an extraction (:func:`embedlab.store.cache_key`) must change whenever its output could: the
weights (the model's content hash), the computation (:func:`module_fingerprint`), the data and labels
(:func:`dataset_fingerprint`) and the precision. Names alone never make a key.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn


# --------------------------------------------------------------------------------------------------- models
@functools.lru_cache(maxsize=None)
def _class_code(cls: type) -> str:
    """The source of ``cls`` and of its bases up to ``nn.Module`` (``inspect.getsource``); where there is no source
    (a class made by ``exec`` or in a REPL), the bytecode, constants and names of the functions it defines. Classes
    of torch itself are named only: torch's version is part of the key."""
    parts = []
    for c in cls.__mro__:
        if c in (nn.Module, object) or c.__module__.split(".")[0] == "torch":
            parts.append(f"{c.__module__}.{c.__qualname__}")
            continue
        try:
            parts.append(inspect.getsource(c))
        except (OSError, TypeError):
            parts.append(f"{c.__module__}.{c.__qualname__}:" + "".join(
                _code_text(v) for _, v in sorted(vars(c).items()) if callable(v) or isinstance(v, (staticmethod,
                                                                                                 classmethod))))
    return "\n".join(parts)


def _code_text(obj: Any) -> str:
    fn = getattr(obj, "__func__", obj)
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(obj)
    return _code_repr(code)


def _code_repr(code: Any) -> str:
    consts = [_code_repr(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{consts}|{code.co_names}"


def _plain(value: Any, depth: int = 0) -> bool:
    """A number, string, None, or a short tuple/list of them: a setting, never a tensor or a large object."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return (isinstance(value, (tuple, list)) and depth < 3 and len(value) <= 64
            and all(_plain(v, depth + 1) for v in value))


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of what ``module`` computes, apart from its parameter values (hashed by the model's content hash):
    ``repr(module)`` (the structure and every submodule's settings, e.g. a LeakyReLU's slope), for each submodule its
    class's qualified name and source (:func:`_class_code`: a ReLU and a Tanh with the same parameters differ), its
    plain attributes (numbers, strings, tuples: settings a forward may read), the dtypes of its parameters and
    buffers and the values of buffers that are not in the state dict; the TorchScript code of scripted submodules
    and the Python code of ``torch.fx`` graph modules (an exported program); and torch's version."""
    h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    h.update(repr(module).encode())
    persistent = set(module.state_dict().keys())
    for name, m in module.named_modules(remove_duplicate=False):
        h.update(f"\n[{name}] {type(m).__module__}.{type(m).__qualname__}\n".encode())
        if isinstance(m, torch.jit.ScriptModule):
            try:
                h.update(str(m.code).encode())
            except (RuntimeError, AttributeError):
                h.update(str(getattr(m, "graph", "")).encode())
            continue
        h.update(_class_code(type(m)).encode())
        if isinstance(m, torch.fx.GraphModule):
            h.update(m.code.encode())
        for key, value in sorted(vars(m).items()):
            if key.startswith("_") or key == "training":
                continue
            if _plain(value) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
                h.update(f"{key}={value!r};".encode())
            elif callable(getattr(value, "to_json_string", None)):  # a transformers config: activation, eps, ...
                try:
                    h.update(f"{key}={value.to_json_string()};".encode())
                except (TypeError, ValueError):
                    pass
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    for name, b in module.named_buffers():
        if name not in persistent:
            h.update(b.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- datasets
def file_signature(path: str | os.PathLike[str]) -> list[int]:
    """``[size, mtime_ns, ctime_ns, inode, device]`` of a file (following symbolic links)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def dataset_fingerprint(ds: Any) -> str:
    """SHA-256 of the content of a dataset split as the extraction reads it: its inputs, its labels, their order and
    its transform.

    Datasets held in memory (embedlab's tensors, text, torchvision's CIFAR/MNIST/SVHN arrays, noise sets) are hashed
    by value. A folder of image files (``ImageFolder``) is hashed by each file's path, class index and
    :func:`file_signature` — size, mtime_ns, ctime_ns and inode — never by the bytes: at ImageNet scale (1.28 M files,
    ~140 GB) that is one ``stat`` per file, a second or two, where hashing the bytes would read the whole dataset
    again before every analysis. Any write to a file changes its mtime and ctime, and replacing or swapping files
    changes their inodes (restoring an mtime with ``touch -d`` still changes the ctime), so changed content always
    changes the key; a copy or ``touch`` of unchanged files only costs one re-extraction. Wrappers (subsets,
    relabelled or noisy labels, OOD sets) add what they change. An unknown dataset type is hashed item by item."""
    h = hashlib.sha256()
    _feed(h, ds)
    return h.hexdigest()


def _array_bytes(h: Any, a: Any) -> None:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().contiguous()
        h.update(f"tensor {a.dtype} {tuple(a.shape)};".encode())
        h.update(a.view(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
        return
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"array {a.dtype} {a.shape};".encode())
    h.update(a.tobytes())


def _feed(h: Any, ds: Any) -> None:
    from torch.utils.data import Subset
    from torchvision.datasets import DatasetFolder

    from embedlab.data import TensorData, _NoisyLabels, _Relabel
    from embedlab.oodsets import Unlabelled
    from embedlab.text import Texts

    h.update(f"<{type(ds).__module__}.{type(ds).__qualname__}>".encode())
    if isinstance(ds, Subset):
        _array_bytes(h, np.asarray(ds.indices, dtype=np.int64))
        _feed(h, ds.dataset)
    elif isinstance(ds, _Relabel):
        _array_bytes(h, np.asarray(ds.indices, dtype=np.int64))
        h.update(json.dumps(sorted(ds.mapping.items())).encode())
        _feed(h, ds.base)
    elif isinstance(ds, _NoisyLabels):
        _array_bytes(h, ds.labels)
        _feed(h, ds.base)
    elif isinstance(ds, Unlabelled):
        _feed(h, ds.base)
    elif isinstance(ds, TensorData):
        _array_bytes(h, ds.x)
        _array_bytes(h, ds.y)
    elif isinstance(ds, Texts):
        h.update(json.dumps(ds.texts).encode())
        _array_bytes(h, ds.labels)
    elif isinstance(ds, DatasetFolder):
        h.update(repr(getattr(ds, "transform", None)).encode())
        h.update(json.dumps(ds.class_to_idx, sort_keys=True).encode())
        for path, target in ds.samples:
            h.update(json.dumps([path, int(target), *file_signature(path)]).encode())  # stat follows links
    elif hasattr(ds, "data") and (hasattr(ds, "targets") or hasattr(ds, "labels")):  # torchvision's arrays
        h.update(repr(getattr(ds, "transform", None)).encode())
        _array_bytes(h, ds.data)
        _array_bytes(h, np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels))
    else:
        h.update(repr(getattr(ds, "transform", None)).encode())
        for i in range(len(ds)):
            x, y = ds[i]
            _array_bytes(h, torch.as_tensor(x) if not isinstance(x, str) else np.frombuffer(x.encode(), np.uint8))
            _array_bytes(h, torch.as_tensor(y))


# -------------------------------------------------------------------------------------------------- folders
def folder_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """``(relative path, file)`` of every regular file under ``folder``, in sorted order, following symbolic links
    to folders and files (each real folder is entered once, so a link cycle ends); what a ``save_pretrained`` or
    sentence-transformers folder may read, wherever its links point."""
    seen: set[tuple[int, int]] = set()

    def walk(d: Path, rel: str) -> Iterator[tuple[str, Path]]:
        try:
            st = d.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            path, name = Path(e.path), f"{rel}{e.name}"
            try:
                if e.is_dir():  # follows links
                    yield from walk(path, f"{name}/")
                elif e.is_file():  # a regular file, or a link to one (never a FIFO or device)
                    yield name, path
            except OSError:
                continue

    yield from walk(folder, "")
