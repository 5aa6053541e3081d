"""Dataset registry. A dataset knows its classes, input shape and normalisation, and yields ``(x, y)`` with
images as float tensors in [0, 1] (normalisation is the model's first operation, see :mod:`embedlab.models`).

Splits are ``train``, ``val`` and ``test``. Where a dataset has no validation split, ``val`` is carved from the
training set by a seeded permutation (``val_fraction``, ``split_seed``), so model selection and temperature scaling
never touch ``test``.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from embedlab.config import check_option_types
from embedlab.errors import EmbedlabError, EmbedlabWarning
from embedlab.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    default_model: str
    is_image: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorData(Dataset):
    """In-memory dataset with batched ``__getitems__`` (no per-example Python overhead in the DataLoader)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(idx)
        return self.x[t], self.y[t]


def collate_batched(batch: Any) -> Any:
    """Collate for :class:`TensorData` (already batched) and ordinary lists of ``(x, y)`` pairs alike."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


class DataSource:
    """A registered dataset: ``info`` plus ``split(name, augment)`` returning a torch ``Dataset``."""

    info: DatasetInfo
    splits: tuple[str, ...] = SPLITS  # the splits it has (a text dataset may lack train or val)

    def split(self, name: str, augment: bool = False) -> Dataset:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in checkpoints (enough to rebuild the same data)."""
        return {"name": self.info.name}

    @staticmethod
    def _check_split(name: str) -> None:
        if name not in SPLITS:
            raise EmbedlabError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")


DATASETS: Registry[Callable[..., DataSource]] = Registry("dataset")
register_dataset = DATASETS.register


def carve_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train indices, val indices), ``round(n·val_fraction)`` for val."""
    if not 0.0 <= val_fraction < 1.0:
        raise EmbedlabError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# --------------------------------------------------------------------------------------------------- digits
@register_dataset("digits", description="scikit-learn's 1,797 8×8 handwritten digits (shipped; fixed seeded 70/10/20 split)")
class Digits(DataSource):
    """``sklearn.datasets.load_digits``: pixel values 0..16 scaled to [0, 1], shape (1, 8, 8).

    Fixed split (stratified, ``random_state=0``): 20 % test, then 1/8 of the rest as val → 1257 / 180 / 360.
    """

    def __init__(self, root: str | None = None, download: bool = False) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
        train, val = train_test_split(rest, test_size=1 / 8, stratify=d.target[rest], random_state=0)
        self._parts = {s: TensorData(x[np.sort(i)], y[np.sort(i)]) for s, i in
                       (("train", train), ("val", val), ("test", test))}
        xt = self._parts["train"].x
        self.info = DatasetInfo("digits", tuple(str(c) for c in range(10)), (1, 8, 8),
                                (round(float(xt.mean()), 4),), (round(float(xt.std()), 4),), "cnn-gap")

    def split(self, name: str, augment: bool = False) -> Dataset:
        self._check_split(name)
        return self._parts[name]


# -------------------------------------------------------------------------------------------------- toy-gmm
@dataclass(frozen=True)
class GMMSpec:
    """Seed 002's toy problem: class k is an equal-weight mixture of Gaussians N(μ, σ²I) in R².

    ``means[k]`` has shape (N_k, 2); ``sigma`` is shared by all components; priors are equal.
    """

    means: tuple[np.ndarray, ...]
    sigma: float
    priors: tuple[float, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.means)

    @staticmethod
    def random(num_classes: int, rng: np.random.Generator, max_components: int = 8,
               sigma_range: tuple[float, float] = (0.05, 0.5)) -> "GMMSpec":
        """METHODS.md §2 defaults: μ ~ U([−1, 1]²), N ~ U{1..8} per class, σ ~ U(0.05, 0.5)."""
        means = tuple(rng.uniform(-1, 1, size=(int(rng.integers(1, max_components + 1)), 2))
                      for _ in range(num_classes))
        sigma = float(rng.uniform(*sigma_range))
        return GMMSpec(means, sigma, tuple([1.0 / num_classes] * num_classes))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` i.i.d. draws: y ~ Cat(π), component uniform within the class, x ~ N(μ, σ²I)."""
        y = rng.choice(self.num_classes, size=n, p=np.asarray(self.priors))
        x = np.empty((n, 2))
        for k, mu in enumerate(self.means):
            sel = np.flatnonzero(y == k)
            comp = rng.integers(0, len(mu), size=len(sel))
            x[sel] = mu[comp] + self.sigma * rng.standard_normal((len(sel), 2))
        return x, y


@register_dataset("toy-gmm", description="seed 002's 2-D Gaussian-mixture classes (generated; options K, seed, n_train)")
class ToyGMM(DataSource):
    def __init__(self, root: str | None = None, download: bool = False, K: int = 3, seed: int = 0,
                 n_train: int = 1000, n_val: int = 1000, n_test: int = 20000) -> None:
        if K < 2:
            raise EmbedlabError(f"toy-gmm needs K >= 2 classes, got {K}")
        rng = np.random.default_rng(seed)
        self.spec = GMMSpec.random(K, rng)
        self.options = {"K": K, "seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test}
        self._parts = {}
        for s, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            x, y = self.spec.sample(n, rng)
            self._parts[s] = TensorData(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        self.info = DatasetInfo("toy-gmm", tuple(f"class {k}" for k in range(K)), (2,), None, None, "mlp",
                                is_image=False)

    def describe(self) -> dict[str, Any]:
        return {"name": "toy-gmm", **self.options}

    def split(self, name: str, augment: bool = False) -> Dataset:
        self._check_split(name)
        return self._parts[name]


# ----------------------------------------------------------------------------------------- image datasets
AUGMENTATIONS = ("crop", "resized_crop", "none")


def _image_transform(size: int, augment: bool, flip: bool, resize: int | None = None,
                     mode: str = "crop") -> Callable:
    """``crop``: (resize to ``resize``², then) random crop with ⅛ padding and flip — the CIFAR recipe.
    ``resized_crop``: the ImageNet recipe — train: RandomResizedCrop(resize, scale (0.08, 1)) + flip;
    eval: resize the short side to ``resize``·8/7, centre crop ``resize``. ``none``: no augmentation (imagefolder's
    ``augment=none``: the training images as they are, e.g. for a regime where ERM memorises)."""
    from torchvision import transforms as T

    if mode == "resized_crop" and resize:
        ops: list[Any] = ([T.RandomResizedCrop(resize), T.RandomHorizontalFlip()] if augment
                          else [T.Resize(round(resize * 8 / 7)), T.CenterCrop(resize)])
        return T.Compose([*ops, T.ToTensor()])
    ops = [T.Resize((resize, resize))] if resize else []
    if augment:
        ops.append(T.RandomCrop(size, padding=max(1, size // 8)))
        if flip:
            ops.append(T.RandomHorizontalFlip())
    ops.append(T.ToTensor())
    return T.Compose(ops)


class _SplitImages(DataSource):
    """Shared logic for image datasets with a train and a test set; val is carved from train."""

    flip = True

    def __init__(self, root: str | None, val_fraction: float, split_seed: int) -> None:
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.root = root

    def _base(self, train: bool, transform: Callable) -> Dataset:  # pragma: no cover - interface
        raise NotImplementedError

    def _size(self) -> int:
        return self.info.input_shape[-1]

    def split(self, name: str, augment: bool = False) -> Dataset:
        self._check_split(name)
        mode = getattr(self, "augment", "crop")
        tf = _image_transform(self._size(), augment and name == "train" and mode != "none", self.flip,
                              getattr(self, "resize", None), mode)
        if name == "test":
            return self._base(False, tf)
        base = self._base(True, tf)
        tr, va = carve_val(len(base), self.val_fraction, self.split_seed)
        return Subset(base, (tr if name == "train" else va).tolist())

    def describe(self) -> dict[str, Any]:
        return {"name": self.info.name, "root": str(self.root), "val_fraction": self.val_fraction,
                "split_seed": self.split_seed}


def _require_root(root: str | None, name: str, hint: str) -> str:
    if not root:
        raise EmbedlabError(f"dataset {name!r} needs --data-root DIR ({hint})")
    return root


def _torchvision_dataset(name: str, cls_name: str, classes: Sequence[str] | None, shape: tuple[int, int, int],
                         mean: tuple[float, ...], std: tuple[float, ...], flip: bool, hint: str,
                         split_kw: Callable[[bool], dict[str, Any]]) -> type[_SplitImages]:
    class TV(_SplitImages):
        def __init__(self, root: str | None = None, download: bool = False, val_fraction: float = 0.1,
                     split_seed: int = 0) -> None:
            super().__init__(_require_root(root, name, hint), val_fraction, split_seed)
            self.download = download
            self.flip = flip
            probe = self._base(False, None)
            names = classes or tuple(str(c) for c in getattr(probe, "classes", []))
            self.info = DatasetInfo(name, tuple(names), shape, mean, std, "preact-resnet18")

        def _base(self, train: bool, transform: Callable | None) -> Dataset:
            import torchvision

            cls = getattr(torchvision.datasets, cls_name)
            try:
                return cls(self.root, download=self.download, transform=transform, **split_kw(train))
            except RuntimeError as e:
                raise EmbedlabError(
                    f"{name} not found under {self.root!r} ({e}); pass --download to fetch it, "
                    f"or point --data-root at a folder that holds it ({hint})") from None

    TV.__name__ = TV.__qualname__ = cls_name
    TV.__doc__ = f"torchvision {cls_name} read from a local root ({hint})."
    return TV


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
for _name, _cls, _classes, _shape, _mean, _std, _flip, _hint, _kw in (
    ("cifar10", "CIFAR10", None, (3, 32, 32), _CIFAR_MEAN, _CIFAR_STD, True, "the folder holding cifar-10-batches-py",
     lambda tr: {"train": tr}),
    ("cifar100", "CIFAR100", None, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
     "the folder holding cifar-100-python", lambda tr: {"train": tr}),
    ("mnist", "MNIST", tuple(str(i) for i in range(10)), (1, 28, 28), (0.1307,), (0.3081,), False,
     "the folder holding MNIST/raw", lambda tr: {"train": tr}),
    ("fashion-mnist", "FashionMNIST", None, (1, 28, 28), (0.2860,), (0.3530,), True,
     "the folder holding FashionMNIST/raw", lambda tr: {"train": tr}),
    ("svhn", "SVHN", tuple(str(i) for i in range(10)), (3, 32, 32), (0.4377, 0.4438, 0.4728),
     (0.1980, 0.2010, 0.1970), False, "the folder holding train_32x32.mat and test_32x32.mat",
     lambda tr: {"split": "train" if tr else "test"}),
):
    register_dataset(_name, description=f"torchvision {_cls} from --data-root (--download to fetch)")(
        _torchvision_dataset(_name, _cls, _classes, _shape, _mean, _std, _flip, _hint, _kw))


@register_dataset("imagefolder", description="any folder with train/<class>/*.jpg and test/<class>/*.jpg (val/ optional)")
class ImageFolderData(_SplitImages):
    """ImageFolder layout under ``--data-root``: ``train/`` and ``test/`` (and optionally ``val/``), one
    sub-folder per class. Normalisation statistics are measured on up to 2,000 seeded training images."""

    def __init__(self, root: str | None = None, download: bool = False, val_fraction: float = 0.1,
                 split_seed: int = 0, image_size: int | None = None, augment: str = "crop") -> None:
        root = _require_root(root, "imagefolder", "a folder with train/<class>/ and test/<class>/ image folders")
        if not Path(root).is_dir():
            raise EmbedlabError(f"imagefolder root {root!r} does not exist or is not a directory")
        super().__init__(root, val_fraction, split_seed)
        self._warned: set[str] = set()
        self._missing: dict[str, list[str]] = {}  # split → training classes it has no image of
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or not 1 <= image_size <= MAX_IMAGE_SIZE):
            raise EmbedlabError(f"imagefolder option image_size: the side images are resized to, 1 .. "
                                f"{MAX_IMAGE_SIZE} pixels, got {image_size!r}")
        self._first_size: tuple[int, int] | None = None
        if augment not in AUGMENTATIONS or (augment == "resized_crop" and not image_size):
            raise EmbedlabError(f"imagefolder option augment: one of {', '.join(AUGMENTATIONS)} "
                                f"(resized_crop needs image_size), got {augment!r}")
        self.resize, self.augment = image_size, augment
        for sub in ("train", "test"):
            if not (Path(root) / sub).is_dir():
                raise EmbedlabError(f"imagefolder root {root!r} has no {sub}/ folder (expected {sub}/<class>/<image>)")
        folder = self._folder("train", _image_transform(0, False, False, image_size, augment))
        if len(folder) == 0:
            raise EmbedlabError(f"image folder {Path(root) / 'train'} holds no images")
        if image_size is None:  # every image must then have the size of the first: a batch stacks them
            self._first_size = folder.first_size = folder.size_of(0)
        mean, std = self._stats(folder)
        self.info = DatasetInfo("imagefolder", tuple(folder.classes), tuple(folder[0][0].shape), mean, std,
                                "preact-resnet18")

    def _folder(self, sub: str, transform: Callable | None) -> Dataset:
        """The images of ``train/``, ``val/`` or ``test/``. Class indices are always the training split's (its
        sorted class folders): a val or test folder lacking a class keeps every other class's index (the missing
        ones are in :meth:`describe` and one warning line); a class folder the training split does not have is an
        error naming it."""
        from embedlab.imagefolder import SafeImageFolder

        folder = Path(self.root) / sub
        if sub == "train" or not hasattr(self, "info"):
            try:
                return SafeImageFolder(str(folder), transform=transform, first_size=self._first_size)
            except (FileNotFoundError, RuntimeError) as e:
                raise EmbedlabError(f"cannot read image folder {folder}: {e}") from None
        known = self.info.classes
        unknown = sorted(set(_class_folders(folder)) - set(known))
        if unknown:
            raise EmbedlabError(f"image folder {folder} has class folder{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))} that {Path(self.root) / 'train'} does not have; "
                                f"every class of {sub}/ must be a class of train/ (known: {', '.join(known)})")
        try:
            ds = SafeImageFolder(str(folder), transform=transform, first_size=self._first_size, allow_empty=True)
        except (FileNotFoundError, RuntimeError) as e:
            raise EmbedlabError(f"cannot read image folder {folder}: {e}") from None
        # the split's own indices (its sorted folders) → the training split's
        mapping = {c: i for i, c in enumerate(known)}
        ds.samples = ds.imgs = [(path, mapping[ds.classes[t]]) for path, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.classes, ds.class_to_idx = list(known), mapping
        present = {int(t) for t in ds.targets}
        missing = [c for i, c in enumerate(known) if i not in present]
        if self._missing.setdefault(sub, missing) and sub not in self._warned:
            self._warned.add(sub)
            warnings.warn(EmbedlabWarning(
                f"image folder {folder} has no images of {len(missing)} of the {len(known)} training classes "
                f"({', '.join(missing[:10])}{', …' if len(missing) > 10 else ''}); its other classes keep their "
                f"training indices"), stacklevel=2)
        return ds

    def missing_classes(self, sub: str) -> list[str]:
        """Training classes without any image in ``sub/`` (``val`` or ``test``; none for a val carved from train)."""
        if sub == "val" and not (Path(self.root) / "val").is_dir():
            return []
        if sub not in self._missing:
            self._folder(sub, None)
        return self._missing[sub]

    @staticmethod
    def _stats(ds: Dataset, limit: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...]]:
        idx = np.random.default_rng(0).permutation(len(ds))[:limit]
        xs = torch.stack([ds[int(i)][0] for i in idx])  # (n, C, H, W)
        return (tuple(round(float(v), 4) for v in xs.mean(dim=(0, 2, 3))),
                tuple(round(float(v), 4) for v in xs.std(dim=(0, 2, 3))))

    def _size(self) -> int:
        return self.info.input_shape[-1]

    def _base(self, train: bool, transform: Callable) -> Dataset:
        return self._folder("train" if train else "test", transform)

    def split(self, name: str, augment: bool = False) -> Dataset:
        self._check_split(name)
        if name == "val" and (Path(self.root) / "val").is_dir():
            return self._folder("val", _image_transform(self._size(), False, True, self.resize, self.augment))
        return super().split(name, augment)

    def describe(self) -> dict[str, Any]:
        """As for every image dataset, plus ``missing_classes`` (``{split: [class, ...]}``) where a val or test folder
        lacks training classes."""
        missing = {sub: m for sub in ("val", "test") if (m := self.missing_classes(sub))}
        return {**super().describe(), "image_size": self.resize, "augment": self.augment,
                **({"missing_classes": missing} if missing else {})}


def _class_folders(folder: Path) -> list[str]:
    """The class folder names of an ImageFolder split, as torchvision finds them (sub-folders, sorted)."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as e:
        raise EmbedlabError(f"cannot read image folder {folder}: {e.strerror or e}") from None


MAX_IMAGE_SIZE = 4096  # imagefolder's image_size: the side every image is resized to




class _Relabel(Dataset):
    """Examples of ``base`` at ``indices`` with labels mapped through ``mapping`` (original → new)."""

    def __init__(self, base: Dataset, indices: np.ndarray, mapping: dict[int, int]) -> None:
        self.base, self.indices, self.mapping = base, indices, mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[int(self.indices[i])]
        return x, torch.as_tensor(self.mapping.get(int(y), -1))

    def __getitems__(self, idx: list[int]) -> Any:
        if hasattr(self.base, "__getitems__") and isinstance(self.base, TensorData):
            x, y = self.base.__getitems__([int(self.indices[i]) for i in idx])
            return x, torch.tensor([self.mapping.get(int(v), -1) for v in y])
        return [self[i] for i in idx]


def _labels_of(ds: Dataset) -> np.ndarray:
    """All labels of a dataset, read cheaply where the dataset exposes them."""
    if isinstance(ds, TensorData):
        return ds.y.numpy()
    if isinstance(ds, _NoisyLabels):
        return ds.labels
    if isinstance(ds, Subset):
        return _labels_of(ds.dataset)[np.asarray(ds.indices)]
    if isinstance(ds, _Relabel):
        base = _labels_of(ds.base)[np.asarray(ds.indices, dtype=np.int64)]
        return np.asarray([ds.mapping.get(int(v), -1) for v in base], dtype=np.int64)
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr))
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])


class ClassSubset(DataSource):
    """A dataset restricted to some classes (labels renumbered 0..k−1); the other classes' test examples form the
    ``heldout`` set, the near-OOD set of held-out-class OOD detection (e.g. digits classes 0–5 vs 6–9)."""

    def __init__(self, base: DataSource, classes: Sequence[int]) -> None:
        n = base.info.num_classes
        keep = sorted({int(c) for c in classes})
        if len(keep) < 2 or keep[0] < 0 or keep[-1] >= n:
            raise EmbedlabError(f"classes option: need at least 2 class indices in 0..{n - 1}, got {list(classes)}")
        self.base, self.keep = base, keep
        self.mapping = {c: i for i, c in enumerate(keep)}
        info = base.info
        self.info = DatasetInfo(info.name, tuple(info.classes[c] for c in keep), info.input_shape, info.mean,
                                info.std, info.default_model, info.is_image)

    def split(self, name: str, augment: bool = False) -> Dataset:
        ds = self.base.split(name, augment)
        idx = np.flatnonzero(np.isin(_labels_of(ds), self.keep))
        return _Relabel(ds, idx, self.mapping)

    def heldout(self) -> Dataset:
        """Test examples of the classes left out (labels −1)."""
        ds = self.base.split("test")
        return _Relabel(ds, np.flatnonzero(~np.isin(_labels_of(ds), self.keep)), {})

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "classes": self.keep}


class TrainSubset(DataSource):
    """The first ``n`` examples of a seeded permutation of the training split (val and test unchanged): shorter
    runs of a protocol (``--data-opt train_subset=5000``)."""

    def __init__(self, base: DataSource, n: int, seed: int = 0) -> None:
        if n < 1:
            raise EmbedlabError(f"train_subset must be >= 1, got {n}")
        self.base, self.n, self.seed, self.info = base, n, seed, base.info

    def split(self, name: str, augment: bool = False) -> Dataset:
        ds = self.base.split(name, augment)
        if name != "train" or self.n >= len(ds):
            return ds
        idx = np.sort(np.random.default_rng(self.seed).permutation(len(ds))[: self.n])
        if isinstance(ds, TensorData):
            return TensorData(ds.x[idx], ds.y[idx])
        return Subset(ds, idx.tolist())

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "train_subset": self.n}

    def heldout(self) -> Dataset:
        return self.base.heldout()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- label noise
LABEL_NOISE_KINDS = ("symmetric", "asymmetric")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The usual asymmetric CIFAR-10 noise (Patrini et al. 2017; Han et al. 2018): similar classes are confused.
CIFAR10_FLIPS = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
_NOISE_STREAM = 0x6E6F6973  # mixed into the label-noise seed: its draws are unrelated to every other seeded draw


def label_flip_map(classes: Sequence[str], kind: str) -> dict[int, int] | None:
    """Source class → noisy class of ``asymmetric`` noise (None for ``symmetric``): the CIFAR-10 flips
    (truck→automobile, bird→airplane, deer→horse, cat↔dog) when ``classes`` are CIFAR-10's ten names in order, else
    the cyclic flip k → (k + 1) mod C of every class."""
    if kind == "symmetric":
        return None
    if tuple(classes) == CIFAR10_CLASSES:
        return {CIFAR10_CLASSES.index(a): CIFAR10_CLASSES.index(b) for a, b in CIFAR10_FLIPS.items()}
    c = len(classes)
    return {k: (k + 1) % c for k in range(c)}


def noisy_labels(clean: np.ndarray, classes: Sequence[str], fraction: float, kind: str = "symmetric",
                 seed: int = 0) -> np.ndarray:
    """Labels with seeded label noise; a pure function of ``clean``, ``classes``, ``fraction``, ``kind``, ``seed``.

    ``symmetric``: exactly ``round(fraction · n)`` examples, drawn uniformly without replacement, get a label drawn
    uniformly from the C − 1 *other* classes, so every one of them is wrong (the flipped fraction is
    ``round(fraction · n) / n``, not ``fraction · (C − 1) / C`` as with noise that may redraw the true label;
    ``round`` is Python's, halves to even).
    ``asymmetric``: within each source class of :func:`label_flip_map`, exactly ``round(fraction · n_k)`` of its
    ``n_k`` examples (drawn uniformly) take the mapped class; other classes stay clean. Examples are chosen by
    their clean label, so cat↔dog never flips an example back.
    """
    clean = np.asarray(clean, dtype=np.int64)
    c, n = len(classes), len(clean)
    if c < 2:
        raise EmbedlabError(f"label_noise needs at least 2 classes, the dataset has {c}")
    rng = np.random.default_rng([_NOISE_STREAM, int(seed)])
    noisy = clean.copy()
    flips = label_flip_map(classes, kind)
    if flips is None:
        chosen = rng.permutation(n)[: int(round(fraction * n))]
        noisy[chosen] = (clean[chosen] + rng.integers(1, c, size=len(chosen))) % c
        return noisy
    for src in sorted(flips):
        members = np.flatnonzero(clean == src)
        chosen = members[rng.permutation(len(members))[: int(round(fraction * len(members)))]]
        noisy[chosen] = flips[src]
    return noisy


class _NoisyLabels(Dataset):
    """``base``'s examples with ``labels[i]`` in place of their own (inputs and transforms untouched)."""

    def __init__(self, base: Dataset, labels: np.ndarray) -> None:
        if len(base) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(base)} examples")
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.base[i][0], torch.as_tensor(int(self.labels[i]))

    def __getitems__(self, idx: list[int]) -> Any:
        y = torch.as_tensor(self.labels[np.asarray(idx, dtype=np.int64)])
        if hasattr(self.base, "__getitems__"):
            batch = self.base.__getitems__(idx)
            if isinstance(batch, tuple):  # already batched (TensorData underneath)
                return batch[0], y
            return [(b[0], t) for b, t in zip(batch, y)]
        return [(self.base[i][0], t) for i, t in zip(idx, y)]


class LabelNoise(DataSource):
    """Seeded label noise on the training split (``--data-opt label_noise=0.4``); val and test keep clean labels.

    ``kind``: ``symmetric`` (default) or ``asymmetric``, see :func:`noisy_labels`: symmetric noise gives exactly
    ``round(fraction · n)`` examples a wrong label, uniform over the other classes; asymmetric noise flips, within each
    source class, that fraction to a similar class: CIFAR-10's truck→automobile, bird→airplane, deer→horse, cat↔dog,
    and on any other dataset (anything but CIFAR-10's ten classes, a class subset of it included) the cyclic flip
    k → (k + 1) mod C. ``seed`` is the noise's own (default 0), independent of the training seed. The noise is
    drawn once from the training split's clean labels in its fixed order, so it does not depend on augmentation,
    DataLoader order or the number of processes. Wrapped around ``train_subset``: the fraction is of the examples
    actually trained on. :meth:`describe` records the options and the measured flipped fraction.
    """

    def __init__(self, base: DataSource, fraction: Any, kind: Any = "symmetric", seed: Any = 0) -> None:
        self.check_options(fraction, kind, seed)
        if base.info.num_classes < 2:
            raise EmbedlabError(f"label_noise needs at least 2 classes, dataset {base.info.name!r} has "
                                f"{base.info.num_classes}")
        self.base, self.info = base, base.info
        self.fraction, self.kind, self.seed = float(fraction), str(kind), int(seed)
        self._labels: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def check_options(fraction: Any, kind: Any = "symmetric", seed: Any = 0) -> None:
        """One-line :class:`EmbedlabError` for a fraction outside [0, 1), an unknown kind or a bad seed."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
            raise EmbedlabError(f"label_noise must be a fraction in [0, 1), got {fraction!r}")
        if kind not in LABEL_NOISE_KINDS:
            raise EmbedlabError(f"label_noise_kind must be one of {', '.join(LABEL_NOISE_KINDS)}, got {kind!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise EmbedlabError(f"label_noise_seed must be an integer >= 0, got {seed!r}")

    def train_labels(self, ds: Dataset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(clean, noisy)`` labels of the training split (computed once)."""
        if self._labels is None:
            clean = _labels_of(ds if ds is not None else self.base.split("train")).astype(np.int64)
            self._labels = clean, noisy_labels(clean, self.info.classes, self.fraction, self.kind, self.seed)
        return self._labels

    def split(self, name: str, augment: bool = False) -> Dataset:
        ds = self.base.split(name, augment)
        if name != "train":
            return ds
        _, noisy = self.train_labels(ds)
        if isinstance(ds, TensorData):
            return TensorData(ds.x, torch.from_numpy(noisy))
        return _NoisyLabels(ds, noisy)

    def describe(self) -> dict[str, Any]:
        clean, noisy = self.train_labels()
        n_flipped = int((clean != noisy).sum())
        noise: dict[str, Any] = {"fraction": self.fraction, "kind": self.kind, "seed": self.seed,
                                 "flipped_fraction": n_flipped / max(len(clean), 1), "n_flipped": n_flipped,
                                 "n_train": int(len(clean))}
        if self.kind == "asymmetric":
            noise["flips"] = "cifar10" if tuple(self.info.classes) == CIFAR10_CLASSES else "cyclic"
        return {**self.base.describe(), "label_noise": noise}

    def heldout(self) -> Dataset:
        return self.base.heldout()  # type: ignore[attr-defined]


def without_label_noise(data: DataSource) -> DataSource:
    """``data`` with clean training labels (the same examples): what analyses measure against."""
    return data.base if isinstance(data, LabelNoise) else data


def create_dataset(name: str, root: str | None = None, download: bool = False, **options: Any) -> DataSource:
    """Build a registered dataset; ``options`` are its keyword arguments (e.g. ``K`` for toy-gmm).

    Generic options, applied in this order: ``classes`` (a list of class indices) keeps only those classes (see
    :class:`ClassSubset`); ``train_subset`` (an int) trains on a seeded subset of that many examples (see
    :class:`TrainSubset`); ``label_noise`` (a fraction in [0, 1)) flips that fraction of the *training* labels, with
    ``label_noise_kind`` (``symmetric`` or ``asymmetric``) and ``label_noise_seed`` (default 0), after the two
    others, so the fraction is of the examples trained on (see :class:`LabelNoise`).
    """
    entry = DATASETS.get(name)
    classes = options.pop("classes", None)
    train_subset = options.pop("train_subset", None)
    noise = {k: options.pop(k) for k in ("label_noise", "label_noise_kind", "label_noise_seed") if k in options}
    if noise and "label_noise" not in noise:
        raise EmbedlabError(f"{' and '.join(noise)} need label_noise=FRACTION (e.g. label_noise=0.4)")
    if noise:
        LabelNoise.check_options(noise["label_noise"], noise.get("label_noise_kind", "symmetric"),
                                 noise.get("label_noise_seed", 0))
    check_option_types(entry.obj, options, f"dataset {name!r}")
    try:
        data = entry.obj(root=root, download=download, **options)
    except TypeError as e:
        raise EmbedlabError(f"bad option for dataset {name!r}: {e}") from None
    if classes is not None:
        data = ClassSubset(data, [classes] if isinstance(classes, int) else classes)
    if train_subset is not None:
        data = TrainSubset(data, int(train_subset))
    if noise:
        data = LabelNoise(data, noise["label_noise"], noise.get("label_noise_kind", "symmetric"),
                          noise.get("label_noise_seed", 0))
    return data


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)
