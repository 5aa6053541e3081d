"""Checkpoints: self-describing, loadable without executing code, clear errors on bad files."""
from __future__ import annotations

import json

import pytest
import torch

from embedlab.checkpoint import load_checkpoint, load_model, save_checkpoint
from embedlab.errors import EmbedlabError
from embedlab.models import create_model

META = {"model": {"name": "cnn-gap", "options": {"width": 8}, "num_classes": 10, "input_shape": [1, 8, 8],
                  "mean": [0.3], "std": [0.4]}, "method": {"name": "erm", "options": {}}}


def _saved(tmp_path):
    model = create_model("cnn-gap", 10, (1, 8, 8), [0.3], [0.4], width=8)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, META)
    return model, path


def test_roundtrip_rebuilds_identical_model(tmp_path):
    model, path = _saved(tmp_path)
    loaded, meta = load_model(tmp_path)
    assert meta["model"]["name"] == "cnn-gap" and meta["format"] == "embedlab.checkpoint"
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_safetensors_file_is_plain_tensors_and_json(tmp_path):
    from safetensors import safe_open

    _, path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["embedlab"])
        assert "head.weight" in fh.keys()
    assert meta["method"]["name"] == "erm"


def test_truncated_and_empty_files(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmbedlabError, match=r"cannot read checkpoint .*bad\.safetensors"):
        load_checkpoint(bad)
    bad.write_bytes(b"")
    with pytest.raises(EmbedlabError, match=r"cannot read checkpoint .*bad\.safetensors"):
        load_checkpoint(bad)


def test_pickle_is_not_loaded(tmp_path):
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle-based file under a safetensors name
    with pytest.raises(EmbedlabError, match="cannot read checkpoint"):
        load_checkpoint(evil)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(EmbedlabError, match=r"checkpoint not found: .*model\.safetensors"):
        load_checkpoint(tmp_path)


def test_checkpoint_from_another_model(tmp_path):
    _, path = _saved(tmp_path)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["embedlab"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["model"]["num_classes"] = 5
    save_file(state, str(tmp_path / "other.safetensors"), metadata={"embedlab": json.dumps(meta)})
    with pytest.raises(EmbedlabError, match="does not match its model 'cnn-gap'"):
        load_model(tmp_path / "other.safetensors")


def test_foreign_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(EmbedlabError, match="has no embedlab metadata"):
        load_checkpoint(tmp_path / "x.safetensors")
