"""Embedding extraction and its cache: streamed to disk, reused, and never trusted when incomplete."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from embedlab.data import TensorData
from embedlab.models import create_model
from embedlab.store import cache_key, cached_extract, extract, read_entry


def _setup(n=50):
    torch.manual_seed(0)
    model = create_model("cnn-gap", 3, (1, 8, 8), width=4)
    g = torch.Generator().manual_seed(1)
    ds = TensorData(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
    return model, ds


def test_streamed_extraction_equals_in_memory_and_the_model(tmp_path):
    model, ds = _setup()
    mem = extract(model, ds, batch_size=16)
    disk = extract(model, ds, tmp_path, batch_size=7)
    assert isinstance(disk.embeddings, np.memmap)
    for a, b in ((mem.embeddings, disk.embeddings), (mem.logits, disk.logits), (mem.labels, disk.labels)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(mem.logits, model.eval()(ds.x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mem.embeddings, model.forward_features(ds.x).numpy(), rtol=1e-5, atol=1e-6)
    model.train()
    extract(model, ds)
    assert model.training


def test_cache_reuse_and_rebuild(tmp_path):
    model, ds = _setup()
    a, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert not hit
    ref = np.array(a.embeddings)  # a is memory-mapped onto the file corrupted below
    b, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert hit and np.array_equal(a.embeddings, b.embeddings)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # the one entry of this extraction
    # a flipped byte in an array → detected by the recorded SHA-256 → rebuilt
    raw = bytearray((entry / "embeddings.npy").read_bytes())
    raw[-1] ^= 0xFF
    (entry / "embeddings.npy").write_bytes(bytes(raw))
    assert read_entry(entry) is None
    c, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert not hit and np.array_equal(c.embeddings, ref)
    # an entry without done.json (killed before completion) is never used
    (entry / "done.json").unlink()
    assert read_entry(entry) is None
    _, hit = cached_extract(model, "sha", {"name": "x"}, "test", ds, tmp_path)
    assert not hit


def test_failed_extraction_leaves_no_entry(tmp_path):
    model, ds = _setup()

    class Boom(TensorData):
        def __getitems__(self, idx):
            if idx[0] >= 16:
                raise RuntimeError("disk gone")
            return super().__getitems__(idx)

    bad = Boom(ds.x, ds.y)
    with pytest.raises(RuntimeError, match="disk gone"):
        cached_extract(model, "sha", {"name": "y"}, "test", bad, tmp_path, batch_size=16)
    assert list(tmp_path.iterdir()) == []


def test_key_depends_on_model_data_split():
    base = cache_key("a", {"name": "d"}, "test")
    assert base != cache_key("b", {"name": "d"}, "test")
    assert base != cache_key("a", {"name": "e"}, "test")
    assert base != cache_key("a", {"name": "d"}, "train")
    assert base != cache_key("a", {"name": "d"}, "test", computation="relu")
    assert base != cache_key("a", {"name": "d"}, "test", data="other files")
    assert base != cache_key("a", {"name": "d"}, "test", precision="bfloat16-autocast")
