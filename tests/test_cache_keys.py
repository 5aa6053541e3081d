"""Cache keys that cannot lie (#24): the key of an extraction covers the dataset's content, what the model
computes, every file of a model folder wherever its links point, and the precision; a stale entry is never read."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import embedlab
from embedlab.data import TensorData
from embedlab.store import cached_extract

pytestmark = pytest.mark.usefixtures("one_thread")


def _brightness_folder(root: Path, per_class: int = 4) -> None:
    """train/ and test/ with dark ``cat`` and bright ``dog`` images."""
    from PIL import Image

    for split in ("train", "test"):
        for c, value in (("cat", 30), ("dog", 220)):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), value + i, np.uint8)).save(root / split / c / f"{i}.png")


def _brightness_net() -> nn.Module:
    """Class 1 (dog) when the mean pixel is above 0.5, else class 0 (cat)."""
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([1.5, -1.5]))
    return net


def test_swapped_images_under_the_same_names_are_extracted_again(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    _brightness_folder(root)
    kw = dict(dataset="imagefolder", data_root=str(root), analyses="accuracy", cache_dir=cache, device="cpu")
    before = embedlab.evaluate(_brightness_net(), out=tmp_path / "r1", **kw)
    assert before.metrics["accuracy"] == 1.0
    # swap the test images of the two classes, keeping every file name
    test = root / "test"
    os.rename(test / "cat", test / "tmp")
    os.rename(test / "dog", test / "cat")
    os.rename(test / "tmp", test / "dog")
    after = embedlab.evaluate(_brightness_net(), out=tmp_path / "r2", **kw)
    assert after.metrics["accuracy"] == 0.0  # was 1.0: the cached embeddings and labels of the old files


def test_rewritten_image_content_under_the_same_name_is_extracted_again(tmp_path):
    """One file's bytes replaced in place (same name, same size): its signature changes, the entry is not read."""
    from PIL import Image

    root, cache = tmp_path / "data", tmp_path / "cache"
    _brightness_folder(root)
    kw = dict(dataset="imagefolder", data_root=str(root), analyses="accuracy", cache_dir=cache, device="cpu")
    assert embedlab.evaluate(_brightness_net(), out=tmp_path / "r1", **kw).metrics["accuracy"] == 1.0
    for i in range(4):  # bright pixels written into the cat files themselves (the same inodes)
        target = root / "test" / "cat" / f"{i}.png"
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        import io

        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 220 + i, np.uint8)).save(buf, format="PNG")
        os.write(fd, buf.getvalue())
        os.close(fd)
    assert embedlab.evaluate(_brightness_net(), out=tmp_path / "r2", **kw).metrics["accuracy"] == 0.5


def _mlp(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act, nn.Linear(16, 10))


@pytest.mark.parametrize("acts", [(nn.ReLU(), nn.Tanh()), (nn.LeakyReLU(0.01), nn.LeakyReLU(0.5))],
                         ids=["relu-vs-tanh", "leaky-slopes"])
def test_networks_differing_only_in_the_computation_get_their_own_extraction(tmp_path, acts):
    a, b = _mlp(acts[0]), _mlp(acts[1])
    b.load_state_dict(a.state_dict())  # the same parameters
    kw = dict(dataset="digits", analyses="accuracy,align_uniform", cache_dir=tmp_path / "cache", device="cpu")
    ra = embedlab.evaluate(a, out=tmp_path / "a", **kw)
    rb = embedlab.evaluate(b, out=tmp_path / "b", **kw)
    with torch.no_grad():
        x = torch.rand(4, 1, 8, 8)
        assert not torch.allclose(a(x), b(x))
    assert ra.metrics["uniformity"] != rb.metrics["uniformity"]
    assert ra.to_dict()["model"]["sha256"] != rb.to_dict()["model"]["sha256"]


def test_precision_is_part_of_the_key_and_recorded(tmp_path, monkeypatch):
    """A CPU (fp32) and a GPU (bf16 autocast) extraction never share an entry: here the GPU's policy is played on
    the CPU (CPU autocast supports bf16), so the test needs no GPU."""
    import embedlab.store as store

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    from embedlab.models import ExternalNet

    model = ExternalNet(model, model[3], (1, 8, 8))
    g = torch.Generator().manual_seed(1)
    ds = TensorData(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    fp32, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert not hit
    fp32 = np.array(fp32.embeddings)
    monkeypatch.setattr(store, "autocast_dtype", lambda device: torch.bfloat16)
    bf16, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert not hit  # was a hit: the fp32 entry served to the bf16 run
    assert not np.array_equal(fp32, np.array(bf16.embeddings))
    assert store.precision("cpu") == "bfloat16-autocast"
    monkeypatch.undo()
    assert store.precision("cpu") == "float32"
    assert cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)[1]  # its own entry, reused
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_results_record_the_extraction_precision(tmp_path):
    res = embedlab.evaluate(_mlp(nn.ReLU()), dataset="digits", analyses="accuracy", out=tmp_path / "r",
                            cache_dir=tmp_path / "cache", device="cpu")
    assert res.to_dict()["extraction"] == {"device": "cpu", "precision": "float32"}
    arrays = embedlab.evaluate(embeddings=np.eye(4, dtype=np.float32), labels=np.array([0, 1, 0, 1]),
                               analyses="align_uniform", out=tmp_path / "a")
    assert arrays.to_dict()["extraction"] is None  # precomputed: nothing extracted


def _st_like_folder(root: Path) -> tuple[Path, Path]:
    """A sentence-transformers-shaped folder whose module folder ``1_Dense`` is a symbolic link elsewhere."""
    store = root / "store" / "dense-v1"
    store.mkdir(parents=True)
    (store / "config.json").write_text("{}")
    (store / "model.safetensors").write_bytes(b"weights one")
    folder = root / "encoder"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "1", "path": "1_Dense",
                                                      "type": "sentence_transformers.models.Dense"}]))
    (folder / "1_Dense").symlink_to(store, target_is_directory=True)
    return folder, store


def test_new_weights_behind_a_symlinked_module_folder_change_the_model_hash(tmp_path):
    from embedlab.external import ModelSpec, _content_hash

    folder, store = _st_like_folder(tmp_path)
    spec = ModelSpec(name="enc", kind="huggingface", dataset="text", weights=str(folder))
    before = _content_hash(spec, folder).hexdigest()
    (store / "model.safetensors").write_bytes(b"weights two")
    assert _content_hash(spec, folder).hexdigest() != before  # was equal: the linked folder was never read
    # the link re-pointed at another copy of the same bytes is another folder read: another hash
    other = tmp_path / "store" / "dense-v2"
    other.mkdir()
    for f in store.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    again = _content_hash(spec, folder).hexdigest()
    (folder / "1_Dense").unlink()
    (folder / "1_Dense").symlink_to(other, target_is_directory=True)
    assert _content_hash(spec, folder).hexdigest() != again


def test_a_link_cycle_in_a_model_folder_is_walked_once(tmp_path):
    from embedlab.fingerprint import folder_files

    folder, _ = _st_like_folder(tmp_path)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    names = [name for name, _ in folder_files(folder)]
    assert names == ["1_Dense/config.json", "1_Dense/model.safetensors", "modules.json"]
