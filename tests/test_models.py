"""Every registered model exposes f, g, its stages and (where pooled) its feature map consistently."""
from __future__ import annotations

import pytest
import torch

from embedlab.errors import EmbedlabError
from embedlab.models import MODELS, create_model

SHAPES = {"mlp": (2,), "resnet18": (3, 32, 32), "resnet34": (3, 32, 32), "resnet50": (3, 32, 32),
          "resnet101": (3, 32, 32)}


@pytest.mark.parametrize("name", MODELS.names())
def test_model_split_is_consistent(name):
    shape = SHAPES.get(name, (3, 16, 16))
    torch.manual_seed(0)
    model = create_model(name, 7, shape, [0.5] * shape[0], [0.25] * shape[0]).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        z = model.forward_features(x)
        logits = model(x)
        assert z.shape == (3, model.embed_dim) and logits.shape == (3, 7)
        torch.testing.assert_close(model.forward_head(z), logits)
        for k in range(model.num_stages + 1):
            torch.testing.assert_close(model.forward_from(model.features_at(x, k), k), logits, atol=1e-5, rtol=1e-4)
        if model.supports_dense:
            fmap = model.feature_map(x)
            assert fmap.shape[:2] == (3, model.embed_dim)
            torch.testing.assert_close(fmap.mean(-1), z, atol=1e-5, rtol=1e-4)


def test_normalisation_is_inside_the_model():
    m = create_model("mlp", 2, (2,), [1.0, 2.0], [2.0, 4.0], hidden=(4,))
    torch.testing.assert_close(m.features_at(torch.tensor([[3.0, 6.0]]), 0), torch.tensor([[1.0, 1.0]]))


def test_known_shapes():
    m = create_model("cnn-gap", 10, (1, 8, 8))
    assert m.feature_map(torch.rand(2, 1, 8, 8)).shape == (2, 128, 16)
    p = create_model("preact-resnet18", 10, (3, 32, 32))
    assert p.feature_map(torch.rand(2, 3, 32, 32)).shape == (2, 512, 16)
    assert create_model("small-cnn", 10, (3, 32, 32)).embed_dim == 64
    assert create_model("mlp", 4, (2,)).num_stages == 3


def test_unknown_model_lists_known():
    with pytest.raises(EmbedlabError, match=r"unknown model 'resnet19' \(did you mean 'resnet18'\?\); known: cnn-gap"):
        create_model("resnet19", 10, (3, 32, 32))


@pytest.mark.parametrize("arch,dense", [("tv:resnet18", True), ("tv:mobilenet_v3_small", False)])
def test_torchvision_classifier_by_name(arch, dense, tmp_path):
    from embedlab.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model(arch, 5, (3, 32, 32), [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(z), model(x), atol=1e-5, rtol=1e-4)
        assert model.supports_dense is dense
        if dense:
            torch.testing.assert_close(model.feature_map(x).mean(-1), z, atol=1e-5, rtol=1e-4)
    # state dict stores g once (inside the wrapped network) and reloads exactly
    assert not any(k.startswith("head.") for k in model.state_dict())
    meta = {"model": {"name": arch, "options": {}, "num_classes": 5, "input_shape": [3, 32, 32], "mean": [0.5] * 3,
                      "std": [0.25] * 3}}
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    torch.testing.assert_close(loaded(x), model(x))


def test_mixing_at_a_named_module_uses_a_hook_and_removes_it():
    torch.manual_seed(0)
    model = create_model("tv:resnet18", 5, (3, 32, 32)).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        same = model.forward_mixed(x, "layer2", lambda h: h)
        zeroed = model.forward_mixed(x, "layer2", lambda h: torch.zeros_like(h))
        torch.testing.assert_close(same, model(x))
        assert not torch.allclose(zeroed, model(x))
        torch.testing.assert_close(model(x), same)  # hook removed
    with pytest.raises(EmbedlabError, match="no module named 'layer9'"):
        model.forward_mixed(x, "layer9", lambda h: h)


def test_external_model_errors():
    with pytest.raises(EmbedlabError, match="unknown torchvision model 'resnet9'"):
        create_model("tv:resnet9", 5, (3, 32, 32))
    with pytest.raises(EmbedlabError, match="unknown model prefix 'hf'"):
        create_model("hf:bert", 5, (3, 32, 32))


def test_timm_classifier_by_name():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm:resnet18", 5, (3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(z), model(x), atol=1e-5, rtol=1e-4)
        assert model.supports_dense
        torch.testing.assert_close(model.feature_map(x).mean(-1), z, atol=1e-5, rtol=1e-4)
