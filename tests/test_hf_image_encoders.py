"""Hugging Face image models beyond classifiers (issue #17): encoders without a head (ViTModel, Dinov2Model,
CLIPVisionModelWithProjection, ResNetModel) read at their pooled output or at a hidden state, and classifiers read
at a hidden state. Each embedding is checked against the transformers model called directly on the same pixels."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from embedlab.analyses.runner import analyze_source, open_source
from embedlab.errors import EmbedlabError

transformers = pytest.importorskip("transformers", reason="the huggingface kind needs embedlab[hf] (transformers)")


def _save(model: nn.Module, folder, size: int = 16) -> nn.Module:
    transformers.utils.logging.disable_progress_bar()
    model.eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                   image_std=[0.25] * 3).save_pretrained(folder)
    return model


def _vit_config(**kw):
    return dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, **kw)


MODELS = {
    "vit": lambda: transformers.ViTModel(transformers.ViTConfig(**_vit_config())),
    "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**_vit_config())),
    "clip": lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        **_vit_config(), projection_dim=24)),
    "resnet": lambda: transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)),
}


def _pixels(src, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digits test images (1×8×8 in [0, 1]) and the pixels the model should see: resized to 16, normalised
    with the processor's mean 0.5 and std 0.25, one channel repeated to three."""
    x = torch.stack([src.data.split("test")[i][0] for i in range(n)])
    pixels = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    return x, ((pixels - 0.5) / 0.25).expand(-1, 3, -1, -1)


def _spec(tmp_path, name: str, **extra):
    (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "kind": "huggingface", "weights": "m",
                                                       "dataset": "digits", **extra}))
    return tmp_path / f"{name}.json"


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_image_encoder_embedding_is_its_pooled_output_or_a_hidden_state(tmp_path, arch):
    torch.manual_seed(0)
    ref = _save(MODELS[arch](), tmp_path / "m")
    src = open_source(_spec(tmp_path, "enc"))
    assert src.has_logits is False and src.model.head is None
    x, pixels = _pixels(src)
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=True)
        z, logits = src.model.embed_and_logits(x)
        expected = out.image_embeds if arch == "clip" else out.pooler_output.flatten(1)
        torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
        assert logits is None
        hidden = out.hidden_states[1]
        mean = hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))
        z1, _ = open_source(_spec(tmp_path, "h1", embedding="hidden_state:1")).model.embed_and_logits(x)
        torch.testing.assert_close(z1, mean, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # real processes: analyze and report, about 20 s
def test_image_encoder_through_analyze_and_report(tmp_path):
    torch.manual_seed(0)
    _save(MODELS["dinov2"](), tmp_path / "m")
    spec = _spec(tmp_path, "dino")
    run = [sys.executable, "-m", "embedlab"]
    proc = subprocess.run([*run, "analyze", str(spec), "--out", str(tmp_path / "res"), "--cache-dir",
                           str(tmp_path / "cache"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    r = json.loads((tmp_path / "res" / "dino" / "results.json").read_text())
    for key in ("knn_accuracy", "alignment", "silhouette", "linear_probe_accuracy"):
        assert np.isfinite(r["metrics"][key]["value"]), key
    for analysis in ("accuracy", "calibration", "robustness", "ood", "embedding_mmlb"):
        assert r["skipped"][analysis] == "the model provides no logits (embeddings only)", analysis
    with np.load(tmp_path / "res" / "dino" / "arrays.npz") as f:
        assert f["embeddings"].shape == (360, 32) and "logits" not in f.files
    proc = subprocess.run([*run, "report", str(tmp_path / "res"), "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "dino" in (tmp_path / "r.html").read_text(), proc.stderr


def test_classifier_read_at_a_hidden_state_keeps_its_logits_and_drops_the_head(tmp_path):
    torch.manual_seed(0)
    ref = _save(transformers.ViTForImageClassification(transformers.ViTConfig(**_vit_config(), num_labels=10)),
                tmp_path / "m")
    src = open_source(_spec(tmp_path, "vit-h2", embedding="hidden_state:2"))
    x, pixels = _pixels(src)
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=True)
        z, logits = src.model.embed_and_logits(x)
    torch.testing.assert_close(z, out.hidden_states[2].mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    assert src.has_logits and src.model.head is None  # z is not the head's input: ViM and ReAct must not use it
    out_dir = analyze_source(src, tmp_path / "res", analyses=["accuracy", "ood_logits"], progress=False,
                             cache_dir=tmp_path / "cache")
    r = json.loads((out_dir / "results.json").read_text())
    assert 0 <= r["metrics"]["accuracy"]["value"] <= 1 and "ood_logits.vim" in r["skipped"]
    # a transformers module name reads that module's output, as for other kinds
    src = open_source(_spec(tmp_path, "vit-ln", embedding="vit.layernorm"))
    z, _ = src.model.embed_and_logits(x)
    torch.testing.assert_close(z, ref.vit(pixel_values=pixels).last_hidden_state.flatten(1), atol=1e-5, rtol=1e-5)


def test_image_encoder_errors_are_one_line(tmp_path):
    torch.manual_seed(0)
    _save(MODELS["vit"](), tmp_path / "m")
    for embedding, message in (("pooler", "must be null (its pooled output) or \"hidden_state:K\""),
                               ("hidden_state:9", "hidden states 0 .. 2")):
        with pytest.raises(EmbedlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_source(_spec(tmp_path, "bad", embedding=embedding))
    # a text+vision CLIP needs input_ids as well: refused when opened, not as a traceback during extraction
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16),
        vision_config=_vit_config(), projection_dim=8))
    _save(clip, tmp_path / "clip")
    (tmp_path / "c.json").write_text(json.dumps({"name": "c", "kind": "huggingface", "weights": "clip",
                                                 "dataset": "digits"}))
    with pytest.raises(EmbedlabError, match="the model cannot run on 'digits' inputs"):
        open_source(tmp_path / "c.json")


@pytest.mark.parametrize("options, tolerance", [
    (dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, do_center_crop=True, resample=3,
          image_mean=[0.5] * 3, image_std=[0.25] * 3), 0.1),  # DINOv2/CLIP style: resize, centre crop, bicubic
    (dict(size={"shortest_edge": 16}, do_center_crop=False, do_normalize=False, resample=2), 0.01),
])
def test_inputs_are_what_the_image_processor_makes_of_them(tmp_path, options, tolerance):
    """embedlab's differentiable input side against the processor itself on the same digits (as uint8 RGB images):
    same shape (the crop), close values (PIL's and torch's resampling differ slightly on sharp 8-pixel digits: the
    mean absolute difference, in normalised units, is about 0.03 for bicubic 8 → 20 and under 0.001 bilinear)."""
    torch.manual_seed(0)
    MODELS["dinov2"]().eval().save_pretrained(tmp_path / "m")
    proc = transformers.BitImageProcessor(**options)
    proc.save_pretrained(tmp_path / "m")
    src = open_source(_spec(tmp_path, "d"))
    x = torch.stack([src.data.split("test")[i][0] for i in range(8)])
    images = [np.repeat((xi[0].numpy() * 255).round().astype(np.uint8)[:, :, None], 3, 2) for xi in x]
    ref = proc(images=images, return_tensors="pt").pixel_values
    ours = src.model.normalise(x)
    assert ours.shape == ref.shape == (8, 3, 16, 16)
    assert (ours - ref).abs().mean() < tolerance


def test_a_spec_can_resize_then_centre_crop(tmp_path):
    """``"preprocess": {"size": 40, "crop": 32, "interpolation": "bicubic"}`` for a torchvision model: its input is
    the bicubic 40² resize cropped to the central 32² (rows and columns 4 .. 35)."""
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "r.json").write_text(json.dumps({"name": "r", "kind": "torchvision", "arch": "resnet18",
                                                 "weights": "r18.pth", "dataset": "digits", "preprocess": {
                                                     "size": 40, "crop": 32, "interpolation": "bicubic",
                                                     "mean": [0.5], "std": [0.25]}}))
    src = open_source(tmp_path / "r.json")
    x = torch.stack([src.data.split("test")[i][0] for i in range(4)])
    big = nn.functional.interpolate(x, size=(40, 40), mode="bicubic", antialias=True)
    expected = ((big[..., 4:36, 4:36] - 0.5) / 0.25).expand(-1, 3, -1, -1)
    torch.testing.assert_close(src.model.normalise(x), expected)
    (tmp_path / "bad.json").write_text(json.dumps({"name": "b", "kind": "torchvision", "arch": "resnet18",
                                                   "dataset": "digits", "preprocess": {"interpolation": "nearest"}}))
    with pytest.raises(EmbedlabError, match="interpolation must be bilinear or bicubic"):
        open_source(tmp_path / "bad.json")
