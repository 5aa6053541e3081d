"""Out-of-distribution (OOD) sets for OOD-detection analyses (METHODS.md §3).

A *spec* names one set; :func:`build_ood_sets` turns specs into datasets that yield ``(x, y)`` with ``x`` in the
in-distribution (ID) dataset's input shape and value range [0, 1] and ``y = −1`` (OOD examples have no ID class):

``heldout``
    near-OOD: the test examples of the classes a model was *not* trained on. Needs a :class:`ClassSubset` dataset,
    i.e. a model trained with ``--data-opt classes=...``.
``gaussian``
    far-OOD: every input value i.i.d. ``clip(N(0.5, 0.25²), 0, 1)`` **[choice]**. ODIN (Liang et al. 2018) used
    σ = 1, which clips about 62 % of the values to 0 or 1 (salt-and-pepper rather than Gaussian noise); σ = 0.25
    clips 4.6 % and keeps the mean and most of the bell shape.
``uniform``
    far-OOD: every input value i.i.d. ``U[0, 1]``.
``NAME`` or ``NAME:ROOT``
    the ``test`` split of any registered dataset (``cifar100``, ``svhn``, ``imagefolder:PATH``…), read from ``ROOT``
    when given, else from ``data_root``. Its input shape must equal the ID shape. Prefix ``near:`` or ``far:``
    (``near:cifar100``, ``far:svhn``) to put it in that group.

**Groups.** OOD results are reported per set and as means over the *near* sets (``heldout`` and ``near:`` datasets:
semantic shift, same image statistics — what the OOD literature reports) and the *far* sets (the noise sets and
``far:`` datasets). A named dataset without a prefix is in neither group (only in the mean over all sets).

Noise sets hold ``n`` examples (default: the size of the ID test split) drawn from a ``torch.Generator`` seeded by
``seed`` and the set's name, so each set is reproducible on its own and adding or reordering specs changes no set.
"""
from __future__ import annotations

import difflib
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from embedlab.data import DATASETS, ClassSubset, DataSource, TensorData, create_dataset
from embedlab.errors import EmbedlabError

__all__ = ["GAUSSIAN_MEAN", "GAUSSIAN_STD", "GROUPS", "NOISE_SETS", "build_ood_sets", "default_ood_specs", "ood_group",
           "noise_images", "set_group"]

GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25
NOISE_SETS = ("gaussian", "uniform")
GROUPS = ("near", "far")


def _split_group(spec: str) -> tuple[str | None, str]:
    """``"near:cifar100"`` → ``("near", "cifar100")``; built-in sets take their own group; others None."""
    group, sep, rest = spec.partition(":")
    if sep and group in GROUPS and rest:
        return group, rest
    return ("near" if spec == "heldout" else "far" if spec in NOISE_SETS else None), spec


def ood_group(spec: str) -> str | None:
    """The group of an OOD set spec or name: ``"near"``, ``"far"`` or None (see the module doc).

    >>> ood_group("heldout"), ood_group("gaussian"), ood_group("near:cifar100"), ood_group("svhn")
    ('near', 'far', 'near', None)
    """
    return _split_group(spec.strip())[0]


def default_ood_specs(data: DataSource) -> list[str]:
    """``["heldout", "gaussian", "uniform"]`` for a class-subset dataset, else ``["gaussian", "uniform"]``."""
    return (["heldout"] if isinstance(data, ClassSubset) else []) + list(NOISE_SETS)


def noise_images(kind: str, n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``n`` noise inputs of ``shape`` in [0, 1], float32: ``kind`` is ``"gaussian"`` or ``"uniform"`` (see module doc).

    The generator is seeded with ``seed`` and ``kind`` (CRC-32 of the name), so the two kinds are independent draws.
    """
    if kind not in NOISE_SETS:
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_SETS)}")
    if n < 1:
        raise EmbedlabError(f"OOD set {kind!r}: need n >= 1 examples, got {n}")
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(kind.encode())) % (2**63))
    size = (n, *shape)
    if kind == "uniform":
        return torch.rand(size, generator=gen)
    return (GAUSSIAN_MEAN + GAUSSIAN_STD * torch.randn(size, generator=gen)).clamp_(0.0, 1.0)


class Unlabelled(Dataset):
    """``base`` with every label replaced by −1 (batched ``__getitems__`` where ``base`` has one)."""

    def __init__(self, base: Dataset, group: str | None = None) -> None:
        self.base, self.ood_group = base, group

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.base[i][0], torch.tensor(-1)

    def __getitems__(self, idx: list[int]) -> Any:
        if isinstance(self.base, TensorData):
            x, _ = self.base.__getitems__(idx)
            return x, torch.full((len(idx),), -1, dtype=torch.long)
        return [self[i] for i in idx]


def _set_name(spec: str) -> str:
    """Metric-safe name of a spec: ``imagefolder:/data/textures`` → ``imagefolder:textures`` (no ``/`` in names)."""
    name, sep, root = spec.partition(":")
    return f"{name}:{Path(root.rstrip('/')).name}" if sep else name


def build_ood_sets(specs: list[str], data: DataSource, *, n: int | None = None, seed: int = 0,
                   data_root: str | None = None) -> dict[str, Dataset]:
    """Datasets for the OOD ``specs`` (see the module doc), keyed by set name, in the order given.

    Args:
        specs: e.g. ``["heldout", "gaussian", "uniform", "svhn", "imagefolder:/data/textures"]``.
        data: the ID dataset (its input shape, test size and, for ``heldout``, its class subset).
        n: examples per noise set (default: the ID test-split size); datasets are used whole.
        seed: seed of the noise sets.
        data_root: where named datasets without ``:ROOT`` are read from.

    Raises:
        EmbedlabError: empty or duplicate specs, ``heldout`` without a class subset, an unknown dataset, or a dataset
            whose input shape differs from the ID input shape.
    """
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise EmbedlabError("no OOD sets given; name some, e.g. gaussian,uniform,heldout,svhn")
    shape = tuple(data.info.input_shape)
    out: dict[str, Dataset] = {}
    for given in specs:
        _, spec = _split_group(given)
        name = _set_name(spec)
        if name in out:
            raise EmbedlabError(f"OOD set {name!r} is given twice")
        if spec in NOISE_SETS:
            size = n if n is not None else len(data.split("test"))  # type: ignore[arg-type]
            x = noise_images(spec, size, shape, seed)
            out[name] = TensorData(x, torch.full((size,), -1, dtype=torch.long))
        elif spec == "heldout":
            if not isinstance(data, ClassSubset):
                raise EmbedlabError(f"OOD set 'heldout' needs a model trained on a subset of {data.info.name}'s "
                                    f"classes: train with --data-opt classes=... (e.g. classes=0,1,2,3,4,5)")
            out[name] = data.heldout()
        else:
            ds_name, sep, root = spec.partition(":")
            if ds_name not in DATASETS:
                close = difflib.get_close_matches(ds_name, [*NOISE_SETS, "heldout", *DATASETS.names()], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise EmbedlabError(f"unknown OOD set {spec!r}{hint}; known: {', '.join(NOISE_SETS)}, heldout, or a "
                                    f"dataset name: {', '.join(DATASETS.names())}")
            other = create_dataset(ds_name, root if sep else data_root)
            other_shape = tuple(other.info.input_shape)
            if other_shape != shape:
                raise EmbedlabError(f"OOD set {name!r} has input shape {other_shape} but the model's dataset "
                                    f"{data.info.name!r} has {shape}; choose a set with the same shape")
            out[name] = Unlabelled(other.split("test"), _split_group(given)[0])
    return out


def set_group(name: str, dataset: Any = None) -> str | None:
    """The group of a built OOD set: a ``near:``/``far:`` dataset's own, else that of its name."""
    return getattr(dataset, "ood_group", None) or ood_group(name)
