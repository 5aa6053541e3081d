"""Dataset registry: shipped digits, generated toy-gmm, image folders, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedlab.data import DATASETS, SPLITS, GMMSpec, carve_val, create_dataset
from embedlab.errors import EmbedlabError
from tests.conftest import SHARED_DATA


def test_digits_fixed_split():
    a, b = create_dataset("digits"), create_dataset("digits")
    sizes = [len(a.split(s)) for s in SPLITS]
    assert sizes == [1257, 180, 360] and sum(sizes) == 1797
    for s in SPLITS:
        assert torch.equal(a.split(s).x, b.split(s).x)
    x = a.split("train").x
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1
    # no example appears in two splits
    rows = {s: {tuple(v.flatten().tolist()) + (int(t),) for v, t in zip(a.split(s).x, a.split(s).y)} for s in SPLITS}
    assert a.info.classes == tuple("0123456789") and a.info.default_model == "cnn-gap"
    assert len(rows["test"] & rows["train"]) <= 5  # digits has a handful of exact duplicate images


def test_toy_gmm_deterministic_and_follows_spec():
    d1 = create_dataset("toy-gmm", K=4, seed=3, n_test=2000)
    d2 = create_dataset("toy-gmm", K=4, seed=3, n_test=2000)
    assert torch.equal(d1.split("train").x, d2.split("train").x)
    assert d1.info.num_classes == 4 and d1.info.input_shape == (2,)
    spec = d1.spec
    assert 0.05 <= spec.sigma <= 0.5 and all(1 <= len(m) <= 8 for m in spec.means)
    x, y = d1.split("test").x.numpy(), d1.split("test").y.numpy()
    # every point lies within 5σ of one of its class's component means
    for k, mu in enumerate(spec.means):
        d = np.linalg.norm(x[y == k][:, None, :] - mu[None], axis=-1).min(1)
        assert (d < 5 * spec.sigma).mean() > 0.999
    assert abs(np.bincount(y, minlength=4) / len(y) - 0.25).max() < 0.05


def test_gmm_sampling_uses_rng():
    spec = GMMSpec((np.zeros((1, 2)), np.ones((2, 2))), 0.1, (0.5, 0.5))
    x, y = spec.sample(1000, np.random.default_rng(0))
    assert x.shape == (1000, 2) and set(np.unique(y)) == {0, 1}
    assert np.allclose(x[y == 0].mean(0), 0, atol=0.03) and np.allclose(x[y == 1].mean(0), 1, atol=0.03)


def test_carve_val_is_a_seeded_partition():
    tr, va = carve_val(100, 0.1, 0)
    assert len(va) == 10 and len(set(tr) | set(va)) == 100 and not set(tr) & set(va)
    assert np.array_equal(va, carve_val(100, 0.1, 0)[1]) and not np.array_equal(va, carve_val(100, 0.1, 1)[1])


def _write_folder(root, classes=("cat", "dog"), per_class=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_folder(tmp_path)
    d = create_dataset("imagefolder", root=str(tmp_path), val_fraction=0.25)
    assert d.info.classes == ("cat", "dog") and d.info.input_shape == (3, 12, 12)
    assert [len(d.split(s)) for s in SPLITS] == [9, 3, 12]
    x, y = d.split("train", augment=True)[0]
    assert x.shape == (3, 12, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(d.info.mean) == 3 and all(0.3 < m < 0.7 for m in d.info.mean)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(EmbedlabError, match="needs --data-root"):
        create_dataset("imagefolder")
    with pytest.raises(EmbedlabError, match="has no train/ folder"):
        create_dataset("imagefolder", root=str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(EmbedlabError, match="cannot read image folder"):
        create_dataset("imagefolder", root=str(tmp_path))


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(EmbedlabError, match=r"cifar10 not found under .*pass --download"):
        create_dataset("cifar10", root=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(EmbedlabError, match=r"unknown dataset 'cifar' \(did you mean 'cifar10'\?\)"):
        create_dataset("cifar")
    assert {"digits", "toy-gmm", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "imagefolder"} <= set(DATASETS.names())


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").exists(), reason="../shared/data is absent")
def test_shared_cifar10_jpeg_as_imagefolder(tmp_path):
    import tarfile

    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isdir() or m.name.split("/")[-1] in {f"{i:04d}.jpg" for i in range(3)}]
        tar.extractall(tmp_path, members=members, filter="data")
    root = next(p.parent for p in tmp_path.rglob("train"))
    d = create_dataset("imagefolder", root=str(root), val_fraction=0.0)
    assert d.info.num_classes == 10 and d.info.input_shape == (3, 32, 32)
    assert "airplane" in d.info.classes


def test_class_subset_and_heldout():
    d = create_dataset("digits", classes=(0, 1, 2, 3, 4, 5))
    assert d.info.classes == tuple("012345") and d.info.num_classes == 6
    tr = d.split("train")
    x, y = tr.__getitems__(list(range(len(tr))))
    assert set(y.tolist()) == set(range(6)) and len(tr) < 1257
    held = d.heldout()
    full = create_dataset("digits").split("test")
    assert len(held) + len(d.split("test")) == len(full)
    assert d.describe()["classes"] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(EmbedlabError, match="need at least 2 class indices"):
        create_dataset("digits", classes=(3,))


def test_class_subset_remaps_labels():
    d = create_dataset("digits", classes=(7, 9))
    full = create_dataset("digits").split("test")
    x, y = d.split("test").__getitems__(list(range(len(d.split("test")))))
    assert set(y.tolist()) == {0, 1}
    assert int((full.y == 9).sum()) == int((y == 1).sum())


def test_imagefolder_resized_crop(tmp_path):
    _write_folder(tmp_path, size=40)
    d = create_dataset("imagefolder", root=str(tmp_path), image_size=24, augment="resized_crop", val_fraction=0.25)
    assert d.info.input_shape == (3, 24, 24)
    assert d.split("train", augment=True)[0][0].shape == (3, 24, 24)
    assert d.split("test")[0][0].shape == (3, 24, 24)
    with pytest.raises(EmbedlabError, match="augment: one of crop, resized_crop"):
        create_dataset("imagefolder", root=str(tmp_path), augment="resized_crop")


def test_imagefolder_augment_none_gives_the_same_training_images_every_time(tmp_path):
    """``augment=none``: no random crop or flip on the training split (a regime where ERM memorises quickly)."""
    from PIL import Image

    from embedlab.data import create_dataset

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    plain = create_dataset("imagefolder", str(tmp_path), augment="none", val_fraction=0.0).split("train", augment=True)
    torch.manual_seed(0)
    first = torch.stack([plain[i][0] for i in range(len(plain))])
    torch.manual_seed(1)
    assert torch.equal(first, torch.stack([plain[i][0] for i in range(len(plain))]))
    cropped = create_dataset("imagefolder", str(tmp_path), val_fraction=0.0).split("train", augment=True)
    torch.manual_seed(1)
    assert not torch.equal(first, torch.stack([cropped[i][0] for i in range(len(cropped))]))
