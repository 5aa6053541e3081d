"""Label noise as a dataset option: exact symmetric flips, the CIFAR-10 / cyclic asymmetric maps, clean val/test,
determinism, composition with train_subset and classes, the recorded description, and the report's line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from embedlab.config import TrainConfig
from embedlab.data import (CIFAR10_CLASSES, DatasetInfo, DataSource, LabelNoise, TensorData, _labels_of,
                           collate_batched, create_dataset, noisy_labels, without_label_noise)
from embedlab.errors import EmbedlabError

pytestmark = pytest.mark.usefixtures("one_thread")


def _y(ds) -> np.ndarray:
    return _labels_of(ds).astype(np.int64)


def test_symmetric_flips_exactly_round_fraction_n_to_other_classes():
    clean = create_dataset("digits").split("train").y.numpy()
    d = create_dataset("digits", label_noise=0.4)
    noisy = d.split("train").y.numpy()
    n = len(clean)
    n_wrong = sum(1 for a, b in zip(clean.tolist(), noisy.tolist()) if a != b)  # hand count
    assert n_wrong == round(0.4 * n) == 503
    desc = d.describe()["label_noise"]
    assert desc == {"fraction": 0.4, "kind": "symmetric", "seed": 0, "flipped_fraction": 503 / n,
                    "n_flipped": 503, "n_train": n}
    # every label is one of the classes; the flipped ones are uniform over the 9 *other* classes
    big = np.repeat(np.arange(5), 2000)
    y = noisy_labels(big, tuple("abcde"), 0.5, "symmetric", seed=1)
    flipped = y != big
    assert flipped.sum() == 5000
    offsets = np.bincount((y[flipped] - big[flipped]) % 5, minlength=5)
    assert offsets[0] == 0 and all(abs(c - 1250) < 120 for c in offsets[1:]), offsets
    per_class = np.bincount(big[flipped], minlength=5)  # and spread over the true classes
    assert all(abs(c - 1000) < 110 for c in per_class), per_class


def test_asymmetric_follows_the_cifar10_map():
    clean = np.repeat(np.arange(10), 101)
    noisy = noisy_labels(clean, CIFAR10_CLASSES, 0.4, "asymmetric", seed=0)
    name = dict(enumerate(CIFAR10_CLASSES))
    expected = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    for k in range(10):
        changed = noisy[clean == k] != k
        if name[k] in expected:
            assert changed.sum() == round(0.4 * 101)
            assert {name[int(v)] for v in noisy[clean == k][changed]} == {expected[name[k]]}
        else:
            assert changed.sum() == 0, name[k]

    class FakeCifar(DataSource):  # CIFAR-10's class names, through the DataSource wrapper
        def __init__(self):
            self.info = DatasetInfo("fake", CIFAR10_CLASSES, (2,), None, None, "mlp", is_image=False)
            self.parts = {s: TensorData(torch.zeros(len(clean), 2), torch.from_numpy(clean)) for s in ("train", "val", "test")}

        def split(self, name, augment=False):
            return self.parts[name]

    d = LabelNoise(FakeCifar(), 0.4, "asymmetric")
    assert np.array_equal(d.split("train").y.numpy(), noisy)
    desc = d.describe()["label_noise"]
    assert desc["flips"] == "cifar10" and desc["n_flipped"] == 5 * 40 and desc["flipped_fraction"] == 200 / 1010


def test_asymmetric_elsewhere_is_the_cyclic_flip():
    clean = create_dataset("digits").split("train").y.numpy()
    d = create_dataset("digits", label_noise=0.3, label_noise_kind="asymmetric", label_noise_seed=5)
    noisy = d.split("train").y.numpy()
    changed = noisy != clean
    assert np.array_equal(noisy[changed], (clean[changed] + 1) % 10)
    for k in range(10):
        assert changed[clean == k].sum() == round(0.3 * (clean == k).sum())
    desc = d.describe()["label_noise"]
    assert desc["flips"] == "cyclic" and desc["kind"] == "asymmetric" and desc["seed"] == 5
    assert desc["n_flipped"] == changed.sum()


def test_val_test_and_inputs_unchanged():
    clean, d = create_dataset("digits"), create_dataset("digits", label_noise=0.6)
    for s in ("val", "test"):
        assert torch.equal(clean.split(s).x, d.split(s).x) and torch.equal(clean.split(s).y, d.split(s).y)
    assert torch.equal(clean.split("train").x, d.split("train", augment=True).x)
    assert torch.equal(without_label_noise(d).split("train").y, clean.split("train").y)


def test_deterministic_per_seed_and_independent_of_global_and_training_seeds():
    def labels(**kw):
        return create_dataset("digits", label_noise=0.4, **kw).split("train").y

    torch.manual_seed(1)
    np.random.seed(1)
    a = labels()
    torch.manual_seed(2)
    np.random.seed(2)
    assert torch.equal(a, labels()) and torch.equal(a, labels(label_noise_seed=0))
    assert not torch.equal(a, labels(label_noise_seed=1))
    assert torch.equal(create_dataset("digits", label_noise=0).split("train").y, create_dataset("digits").split("train").y)

    from embedlab.trainers.loop import build

    opts = {"label_noise": 0.4}
    d0, _, _ = build(TrainConfig(dataset_options=opts, seed=0, device="cpu"))
    d1, _, _ = build(TrainConfig(dataset_options=opts, seed=7, device="cpu"))
    assert torch.equal(d0.split("train").y, a) and torch.equal(d1.split("train").y, a)


def test_composes_after_train_subset_and_classes():
    sub = create_dataset("digits", train_subset=300)
    d = create_dataset("digits", train_subset=300, label_noise=0.4)
    tr = d.split("train")
    assert len(tr) == 300 and torch.equal(tr.x, sub.split("train").x)
    assert int((tr.y != sub.split("train").y).sum()) == 120  # the fraction is of the examples trained on
    desc = d.describe()
    assert desc["train_subset"] == 300 and desc["label_noise"]["n_train"] == 300
    assert desc["label_noise"]["flipped_fraction"] == 0.4

    # a non-in-memory split (class subset: a relabelling view): indexing, batching and a DataLoader agree
    base = create_dataset("digits", classes=(1, 3, 5), train_subset=200)
    d = create_dataset("digits", classes=(1, 3, 5), train_subset=200, label_noise=0.5)
    tr, clean = d.split("train"), _y(base.split("train"))
    noisy = _y(tr)
    assert len(noisy) == 200 and set(noisy.tolist()) <= {0, 1, 2} and (noisy != clean).sum() == 100
    assert [int(tr[i][1]) for i in range(len(tr))] == noisy.tolist()
    assert torch.equal(tr.__getitems__(list(range(10)))[1], torch.from_numpy(noisy[:10]))
    ys = torch.cat([y for _, y in DataLoader(tr, batch_size=64, collate_fn=collate_batched)])
    assert ys.tolist() == noisy.tolist()
    assert d.describe()["classes"] == [1, 3, 5] and len(d.heldout()) == len(base.heldout())


def test_imagefolder_gets_a_relabelling_view(tmp_path):
    from tests.test_data import _write_folder

    _write_folder(tmp_path, classes=("a", "b", "c"), per_class=10, size=8)
    d = create_dataset("imagefolder", root=str(tmp_path), val_fraction=0.0, label_noise=0.5, label_noise_seed=2)
    plain = create_dataset("imagefolder", root=str(tmp_path), val_fraction=0.0)
    clean = _y(plain.split("train"))
    tr = d.split("train", augment=True)
    noisy = np.asarray([int(tr[i][1]) for i in range(len(tr))])
    assert (noisy != clean).sum() == 15 and d.describe()["label_noise"]["n_flipped"] == 15
    assert np.array_equal(noisy, _y(d.split("train")))  # the same flips with or without augmentation
    test = d.split("test")
    assert [int(test[i][1]) for i in range(len(test))] == _y(plain.split("test")).tolist() == [0] * 10 + [1] * 10 + [2] * 10


@pytest.mark.parametrize("opts, pattern", [
    ({"label_noise": 1.0}, r"label_noise must be a fraction in \[0, 1\), got 1\.0"),
    ({"label_noise": -0.1}, r"label_noise must be a fraction in \[0, 1\)"),
    ({"label_noise": "lots"}, r"label_noise must be a fraction in \[0, 1\), got 'lots'"),
    ({"label_noise": True}, r"label_noise must be a fraction"),
    ({"label_noise": 0.2, "label_noise_kind": "pairwise"}, r"label_noise_kind must be one of symmetric, asymmetric"),
    ({"label_noise": 0.2, "label_noise_seed": -1}, r"label_noise_seed must be an integer >= 0"),
    ({"label_noise": 0.2, "label_noise_seed": 1.5}, r"label_noise_seed must be an integer >= 0"),
    ({"label_noise_kind": "asymmetric"}, r"label_noise_kind need label_noise=FRACTION"),
])
def test_bad_options_are_one_line_errors(opts, pattern):
    with pytest.raises(EmbedlabError, match=pattern) as e:
        create_dataset("digits", **opts)
    assert "\n" not in str(e.value)


def test_train_records_it_analyze_uses_clean_labels_report_shows_it(tmp_path, capsys):
    from embedlab.checkpoint import load_checkpoint
    from embedlab.cli import main
    from embedlab.reports import load_results, render_markdown, render_report

    run = tmp_path / "noisy"
    assert main(["train", "--dataset", "digits", "--data-opt", "label_noise=0.4", "--data-opt", "train_subset=400",
                 "--data-opt", "label_noise_seed=3", "--epochs", "1", "--batch-size", "100", "--device", "cpu",
                 "--out", str(run), "--no-progress"]) == 0
    meta = json.loads((run / "meta.json").read_text())
    noise = meta["dataset"]["label_noise"]
    assert noise == {"fraction": 0.4, "kind": "symmetric", "seed": 3, "flipped_fraction": 0.4, "n_flipped": 160,
                     "n_train": 400}
    assert meta["config"]["dataset_options"] == {"label_noise": 0.4, "train_subset": 400, "label_noise_seed": 3}
    assert load_checkpoint(run / "model.safetensors")[1]["dataset"]["label_noise"] == noise

    from embedlab.analyses.runner import analyze_source, open_source

    src = open_source(run)
    assert src.label_noise == noise
    assert torch.equal(src.data.split("train").y, create_dataset("digits", train_subset=400).split("train").y)
    out = analyze_source(src, tmp_path / "res", analyses=["accuracy", "knn"], cache_dir=tmp_path / "cache",
                         progress=False)
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["label_noise"] == noise and results["dataset"]["train_labels"] == "clean"
    assert results["model"]["meta"]["dataset"]["label_noise"] == noise

    loaded = load_results([tmp_path / "res"])
    md = render_markdown(loaded)
    assert "noisy: label noise 40 % symmetric, seed 3 (flipped 40.0 %)" in md
    html = render_report(loaded, tmp_path / "r.html", umap_kwargs={"n_neighbors": 10, "n_epochs": 20}).read_text()
    assert ">Label noise</th>" in html and "40 % symmetric, seed 3 (flipped 40.0 %)" in html


def test_report_without_label_noise_has_no_column(tmp_path):
    from embedlab.reports import load_results, render_markdown, render_report
    from tests.test_reports import write_results

    write_results(tmp_path, "clean", metrics={"accuracy": (0.9, True)})
    loaded = load_results([tmp_path])
    assert "label noise" not in render_markdown(loaded).lower()
    html = render_report(loaded, tmp_path / "r.html", umap_kwargs={"n_neighbors": 10, "n_epochs": 20}).read_text()
    assert "Label noise" not in html
