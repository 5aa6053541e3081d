"""Class mapping from training (#24): every split maps class names through the training split's classes; a class
missing from a split is reported, an unknown one is an error naming it; one class is an error for analyses that need
two; text labels 1 and "1" are never merged; ``classes="abc"`` is refused."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import embedlab
from embedlab.data import create_dataset
from embedlab.errors import EmbedlabError, EmbedlabWarning
from embedlab.text import TextData
from tests.test_cache_keys import _brightness_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, layout: dict[str, tuple[str, ...]], per_class: int = 3) -> None:
    """``layout``: split → class folders; ``cat`` images are dark, ``dog`` and ``bird`` bright."""
    from PIL import Image

    for split, classes in layout.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                value = 30 + i if c == "cat" else 220 + i
                Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(root / split / c / f"{i}.png")


def test_a_test_split_lacking_a_training_class_keeps_the_training_indices(tmp_path):
    _folder(tmp_path, {"train": ("cat", "dog"), "test": ("dog",)})
    data = create_dataset("imagefolder", str(tmp_path))
    with pytest.warns(EmbedlabWarning, match=r"no images of 1 of the 2 training classes \(cat\)"):
        test = data.split("test")
    assert data.info.classes == ("cat", "dog")
    assert [int(test[i][1]) for i in range(len(test))] == [1, 1, 1]  # dog is class 1, as in training (was 0)
    assert data.describe()["missing_classes"] == {"test": ["cat"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmbedlabWarning)
        res = embedlab.evaluate(_brightness_net(), dataset="imagefolder", data_root=str(tmp_path),
                                analyses="accuracy", out=tmp_path / "r", cache_dir=tmp_path / "cache", device="cpu")
    assert res.metrics["accuracy"] == 1.0  # was 0.0: test dog labelled 0, the folder's own order
    assert res.dataset["missing_classes"] == {"test": ["cat"]}


def test_a_val_folder_lacking_a_class_and_a_complete_one(tmp_path):
    _folder(tmp_path, {"train": ("cat", "dog"), "val": ("dog",), "test": ("cat", "dog")})
    data = create_dataset("imagefolder", str(tmp_path))
    with pytest.warns(EmbedlabWarning, match="val"):
        val = data.split("val")
    assert {int(val[i][1]) for i in range(len(val))} == {1}
    assert [int(y) for _, y in data.split("test")] == [0, 0, 0, 1, 1, 1]
    assert data.describe()["missing_classes"] == {"val": ["cat"]}


def test_a_class_unknown_to_training_is_an_error_naming_it(tmp_path):
    _folder(tmp_path, {"train": ("cat", "dog"), "test": ("bird", "cat", "dog")})
    data = create_dataset("imagefolder", str(tmp_path))
    with pytest.raises(EmbedlabError, match=r"has class folder 'bird' that .*train does not have") as e:
        data.split("test")
    assert "\n" not in str(e.value)


def test_one_class_is_an_error_for_analyses_that_need_two(tmp_path):
    z = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y, logits = np.zeros(30, np.int64), np.zeros((30, 1), np.float32)
    for analysis in ("accuracy", "knn", "calibration", "clustering", "embedding_mmlb"):
        with pytest.raises(EmbedlabError, match=rf"analysis '{analysis}' needs at least 2 classes, and the dataset "
                                                rf"has 1 \('0'\); leave it out with --analyses"):
            embedlab.evaluate(train={"embeddings": z, "labels": y, "logits": logits},
                              test={"embeddings": z, "labels": y, "logits": logits}, analyses=analysis)
    # an analysis that means something on one class still runs (was: accuracy 1.0, kNN 1.0, ECE 0.0 silently)
    res = embedlab.evaluate(test={"embeddings": z, "labels": y}, analyses="align_uniform")
    assert np.isfinite(res.metrics["uniformity"])
    # the CLI: one line, exit status 2
    np.savez(tmp_path / "one.npz", embeddings=z, labels=y, logits=logits)
    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / "one.npz"), "--out",
                           str(tmp_path / "res")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "needs at least 2 classes" in proc.stderr
    assert not (tmp_path / "res").exists()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_text_labels_1_and_string_1_are_never_merged(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 2}])
    _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "1"}, {"text": "d", "label": 2}])
    with pytest.raises(EmbedlabError, match=r"label 1 \(an integer, in train.jsonl\) and '1' \(a string, in "
                                            r"test.jsonl\) would be one class") as e:
        TextData(tmp_path)
    assert "\n" not in str(e.value)
    # the same labels written one way are one class; a CSV field has no type and matches either
    _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": 1}, {"text": "d", "label": 2}])
    assert TextData(tmp_path).info.classes == ("1", "2")


def test_text_classes_come_from_the_training_split(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "b"}, {"text": "b", "label": "c"}])
    _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "a"}, {"text": "d", "label": "c"}])
    with pytest.raises(EmbedlabError, match=r"test.jsonl: label 'a' not in the training split train.jsonl"):
        TextData(tmp_path)  # was: classes a, b, c from all splits, the test-only class silently one of them
    _jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "c"}])
    with pytest.warns(EmbedlabWarning, match=r"no examples of 1 of the 2 training classes \(b\)"):
        data = TextData(tmp_path)
    assert data.info.classes == ("b", "c") and data.split("test").labels.tolist() == [1]
    assert data.describe()["missing_classes"] == {"test": ["b"]}


def test_classes_given_as_a_string_is_refused(tmp_path):
    z = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(EmbedlabError, match=r"classes= must be a list of class names.*not the string 'abc'") as e:
        embedlab.evaluate(embeddings=z, labels=y, classes="abc", analyses="align_uniform")  # was: classes a, b, c
    assert "\n" not in str(e.value)
    res = embedlab.evaluate(embeddings=z, labels=y, classes=["a", "b", "c"], analyses="align_uniform")
    assert res.dataset["classes"] == ["a", "b", "c"]
