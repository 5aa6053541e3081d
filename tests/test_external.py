"""External models (torchvision + weights, TorchScript, factory) and precomputed arrays through `analyze`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from embedlab.analyses.runner import analyze_path, open_source
from embedlab.errors import EmbedlabError
from embedlab.external import load_weights


def _results(out):
    return json.loads((out / "results.json").read_text())


def _analyze_and_report(tmp_path, spec: str, name: str, *analyze_args: str) -> dict:
    """``embedlab analyze SPEC ...`` then ``embedlab report`` in real processes, as a user runs them: both exit 0
    with nothing on stderr, and the report names the model. Returns the model's results.json."""
    import subprocess
    import sys

    run = [sys.executable, "-m", "embedlab"]
    proc = subprocess.run([*run, "analyze", str(tmp_path / spec), "--out", str(tmp_path / "res"), "--cache-dir",
                           str(tmp_path / "cache"), "--no-progress", *analyze_args], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = subprocess.run([*run, "report", str(tmp_path / "res"), "-o", str(tmp_path / "r.md"), "--format", "md"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and name in (tmp_path / "r.md").read_text(), proc.stderr
    return _results(tmp_path / "res" / name)


def test_torchvision_arch_with_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    spec = {"name": "r18", "kind": "torchvision", "arch": "resnet18", "weights": "r18.pth", "dataset": "digits",
            "preprocess": {"size": 32, "mean": [0.3], "std": [0.4]}}
    (tmp_path / "r18.json").write_text(json.dumps(spec))
    out = analyze_path(tmp_path / "r18.json", tmp_path / "res", analyses=["accuracy", "knn", "align_uniform"],
                       cache_dir=tmp_path / "cache", progress=False)
    r = _results(out)
    assert r["model"]["name"] == "r18" and r["model"]["meta"]["external"]["arch"] == "resnet18"
    assert 0.0 <= r["metrics"]["accuracy"]["value"] <= 1.0 and "knn_accuracy" in r["metrics"]
    # the wrapper reproduces the network's own logits on preprocessed inputs
    src = open_source(tmp_path / "r18.json")
    x = src.data.split("test")[0][0].unsqueeze(0)
    ref = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    ref = ((ref - 0.3) / 0.4).expand(-1, 3, -1, -1)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(src.model(x), net(ref))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.fc(self.forward_features(x))


def test_torchscript_model(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(_Tiny()).save(str(tmp_path / "tiny.pt"))
    spec = {"name": "ts", "kind": "torchscript", "weights": "tiny.pt", "dataset": "digits",
            "embedding": "method:forward_features"}
    (tmp_path / "ts.json").write_text(json.dumps(spec))
    out = analyze_path(tmp_path / "ts.json", tmp_path / "res", analyses=["accuracy", "align_uniform"],
                       cache_dir=tmp_path / "cache", progress=False, trust_code=True)
    with np.load(out / "arrays.npz") as a:
        assert a["embeddings"].shape == (360, 16) and a["logits"].shape == (360, 10)
    # the command line prints nothing on stderr: no torch deprecation notice for a file the user chose to load
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / "ts.json"), "--trust-code",
                           "--out", str(tmp_path / "res2"), "--analyses", "accuracy", "--cache-dir",
                           str(tmp_path / "cache"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_factory_model_with_named_embedding_layer(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n"
        "def build(width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"name": "fac", "kind": "factory", "arch": "mymodels:build", "factory_kwargs": {"width": 12},
            "dataset": "digits", "embedding": "2"}
    (tmp_path / "fac.json").write_text(json.dumps(spec))
    out = analyze_path(tmp_path / "fac.json", tmp_path / "res", analyses=["align_uniform"],
                       cache_dir=tmp_path / "cache", progress=False, trust_code=True)
    with np.load(out / "arrays.npz") as a:
        assert a["embeddings"].shape == (360, 12)


def test_npz_embeddings_only_skips_logit_analyses(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    z = rng.normal(size=(90, 8)) + 4 * np.eye(8)[y]
    np.savez(tmp_path / "emb.npz", test_embeddings=z, test_labels=y, train_embeddings=z, train_labels=y,
             classes=np.array(["a", "b", "c"]))
    out = analyze_path(tmp_path / "emb.npz", tmp_path / "res", analyses=["accuracy", "knn", "align_uniform"],
                       progress=False)
    r = _results(out)
    assert "accuracy" in r["skipped"] and "no logits" in r["skipped"]["accuracy"]
    assert r["metrics"]["knn_accuracy"]["value"] > 0.9 and r["dataset"]["classes"] == ["a", "b", "c"]


def test_npz_with_logits_gets_accuracy(tmp_path):
    y = np.array([0, 1, 2, 1])
    logits = np.eye(3)[[0, 1, 2, 0]] * 5
    np.savez(tmp_path / "l.npz", embeddings=np.eye(4, 3) + 0.1, labels=y, logits=logits)
    r = _results(analyze_path(tmp_path / "l.npz", tmp_path / "res", analyses=["accuracy"], progress=False))
    assert r["metrics"]["accuracy"]["value"] == 0.75


@pytest.mark.parametrize("arrays,msg", [
    ({"embeddings": np.zeros((4, 2)), "labels": np.zeros(3)}, "differ in length"),
    ({"embeddings": np.array([[np.nan, 0.0]]), "labels": np.zeros(1)}, "NaN or Inf"),
    ({"embeddings": np.zeros(4), "labels": np.zeros(4)}, "must be 2-D"),
    ({"feats": np.zeros((4, 2))}, "no embeddings found"),
    ({"embeddings": np.zeros((2, 2)), "labels": np.array([0, 3]), "logits": np.zeros((2, 2))}, "logits have"),
])
def test_bad_arrays(tmp_path, arrays, msg):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EmbedlabError, match=msg):
        open_source(tmp_path / "bad.npz")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(EmbedlabError, match="refusing to load .*evil.pth: not a plain tensor file"):
        load_weights(tmp_path / "evil.pth")
    assert not marker.exists()
    spec = {"name": "e", "kind": "torchvision", "arch": "resnet18", "weights": "evil.pth", "dataset": "digits"}
    (tmp_path / "e.json").write_text(json.dumps(spec))
    with pytest.raises(EmbedlabError, match="refusing to load"):
        open_source(tmp_path / "e.json")
    assert not marker.exists()


def test_spec_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"name": "a", "kind": "onnx", "dataset": "digits"}))
    with pytest.raises(EmbedlabError, match="kind must be one of torchvision, timm, factory, torchscript"):
        open_source(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"name": "b", "kind": "torchvision", "arch": "resnet18",
                                                 "dataset": "digits", "num_classes": 7}))
    with pytest.raises(EmbedlabError, match="model outputs 7 classes but dataset 'digits' has 10"):
        open_source(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"name": "c", "kind": "torchvision", "arch": "resnet18",
                                                 "dataset": "digits", "colour": "red"}))
    with pytest.raises(EmbedlabError, match=r"unknown option\(s\) colour"):
        open_source(tmp_path / "c.json")


# ------------------------------------------------------------------------------------- issue #17, D-items
def test_d2_a_submodule_named_as_a_method_is_refused(tmp_path):
    """`"embedding": "method:avgpool"` names a submodule: calling it on the image gives a 3-d "embedding" (the mean
    colour) silently. Refused with one line saying how to read the module's output; an unknown method lists some."""
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    for embedding, message in (("method:avgpool", "names a submodule of ResNet, not a method"),
                               ("method:nope", "ResNet has no method 'nope'")):
        spec = {"name": "r18", "kind": "torchvision", "arch": "resnet18", "weights": "r18.pth", "dataset": "digits",
                "embedding": embedding}
        (tmp_path / "r18.json").write_text(json.dumps(spec))
        with pytest.raises(EmbedlabError, match=message):
            open_source(tmp_path / "r18.json")
    torch.jit.script(_Tiny()).save(str(tmp_path / "tiny.pt"))
    spec = {"name": "ts", "kind": "torchscript", "weights": "tiny.pt", "dataset": "digits", "embedding": "method:body"}
    (tmp_path / "ts.json").write_text(json.dumps(spec))
    with pytest.raises(EmbedlabError, match="names a submodule .* give \"embedding\": \"body\""):
        open_source(tmp_path / "ts.json", trust_code=True)


def test_d3_a_pt_file_given_as_a_model_says_it_needs_a_spec(tmp_path):
    torch.jit.script(_Tiny()).save(str(tmp_path / "model_scripted.pt"))
    with pytest.raises(EmbedlabError, match=r"not an embedlab checkpoint: a \.pt file .* JSON model spec"):
        open_source(tmp_path / "model_scripted.pt")


def test_d5_unknown_npz_keys_are_a_one_line_warning(tmp_path):
    import subprocess
    import sys

    y = np.arange(20) % 2
    np.savez(tmp_path / "e.npz", embeddings=np.random.default_rng(0).normal(size=(20, 4)), labels=y,
             class_names=np.array(["cat", "dog"]))
    with pytest.warns(UserWarning, match="ignored unknown key class_names"):
        open_source(tmp_path / "e.npz")
    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / "e.npz"), "--out",
                           str(tmp_path / "res"), "--analyses", "align_uniform", "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedlab: warning: ") and "class_names" in lines[0], lines


def test_d6_data_root_in_a_spec_is_relative_to_the_spec_file(tmp_path, monkeypatch):
    """`weights` and `data_root` both resolve against the spec's folder, wherever analyze runs from."""
    import embedlab.analyses.runner as runner

    torch.jit.script(_Tiny()).save(str(tmp_path / "tiny.pt"))
    spec = {"name": "ts", "kind": "torchscript", "weights": "tiny.pt", "dataset": "digits", "data_root": "data",
            "embedding": "method:forward_features"}
    (tmp_path / "ts.json").write_text(json.dumps(spec))
    seen = {}
    real = runner.create_dataset

    def recording(name, root, *a, **k):
        seen["root"] = root
        return real(name, root, *a, **k)

    monkeypatch.setattr(runner, "create_dataset", recording)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    open_source(tmp_path / "ts.json", trust_code=True)
    assert seen["root"] == str(tmp_path / "data")


class _ScaledHead(_Tiny):
    def forward(self, x):
        return 2 * self.fc(self.forward_features(x)) + 1  # logits no Linear submodule gives from the embedding


def test_d7_scores_a_torchscript_model_cannot_give_are_skipped_with_the_true_reason(tmp_path):
    torch.jit.script(_ScaledHead()).save(str(tmp_path / "tiny.pt"))
    spec = {"name": "ts", "kind": "torchscript", "weights": "tiny.pt", "dataset": "digits",
            "embedding": "method:forward_features"}
    (tmp_path / "ts.json").write_text(json.dumps(spec))
    out = analyze_path(tmp_path / "ts.json", tmp_path / "res", analyses=["ood_logits"], cache_dir=tmp_path / "cache",
                       progress=False, trust_code=True, settings={"ood_logits": {"scores": "msp,vim,react"}})
    skipped = _results(out)["skipped"]
    for score in ("vim", "react"):
        why = skipped[f"ood_logits.{score}"]
        assert "exposes no linear classifier" in why and "precomputed arrays" not in why, why


# ------------------------------------------------------------------------------------- issue #17, torch.export
class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def _export(net: nn.Module, path, dynamic: bool = True) -> None:
    x = torch.rand(2, 3, 8, 8)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net.eval(), (x,), dynamic_shapes=shapes), str(path))


def test_exported_program_through_analyze_and_report(tmp_path):
    """An exported program (.pt2) is a model kind: logits from the program, the embedding read at the input of its
    last linear layer (no surgery by the user), the head's weights found for ViM/ReAct; it needs --trust-code."""
    torch.manual_seed(0)
    net = _SmallCNN()
    _export(net, tmp_path / "cnn.pt2")
    spec = {"name": "exp", "kind": "export", "weights": "cnn.pt2", "dataset": "digits"}
    (tmp_path / "exp.json").write_text(json.dumps(spec))
    with pytest.raises(EmbedlabError, match="torch.export.load.*--trust-code"):
        open_source(tmp_path / "exp.json")
    src = open_source(tmp_path / "exp.json", trust_code=True)
    x = src.data.split("test")[0][0].unsqueeze(0).repeat(3, 1, 1, 1)  # (3, 1, 8, 8) digits in [0, 1]
    z, logits = src.model.embed_and_logits(x)
    with torch.no_grad():
        x3 = x.expand(-1, 3, -1, -1)
        torch.testing.assert_close(z, net.features(x3))
        torch.testing.assert_close(logits, net(x3))
        torch.testing.assert_close(src.model.head(z), logits)
    r = _analyze_and_report(tmp_path, "exp.json", "exp", "--trust-code", "--analyses", "accuracy,knn,ood_logits",
                            "--opt", "ood_logits.scores=msp,vim,react")
    assert "ood/gaussian/vim/auroc" in r["metrics"] and "ood/gaussian/react/auroc" in r["metrics"]

def test_exported_program_errors_are_one_line(tmp_path):
    torch.manual_seed(0)
    _export(_SmallCNN(), tmp_path / "static.pt2", dynamic=False)
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    for weights, embedding, message in (("static.pt2", None, "cannot run on inputs of shape .* dynamic batch"),
                                        ("bad.pt2", None, "cannot load exported program"),
                                        ("static.pt2", "features", "must be null .* or \"output:K\"")):
        spec = {"name": "e", "kind": "export", "weights": weights, "dataset": "digits", "embedding": embedding}
        (tmp_path / "e.json").write_text(json.dumps(spec))
        with pytest.raises(EmbedlabError, match=message):
            open_source(tmp_path / "e.json", trust_code=True)


def test_plain_scripted_torchvision_resnet18_needs_no_surgery(tmp_path):
    """A TorchScript file saved from plain torchvision (only `forward`): the embedding is the input of its last linear
    layer, equal to the eager model's pooled features; its fc is found as the head, so ViM and ReAct run too."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.jit.script(net).save(str(tmp_path / "r18.pt"))
    spec = {"name": "r18s", "kind": "torchscript", "weights": "r18.pt", "dataset": "digits",
            "preprocess": {"size": 32}}
    (tmp_path / "r18.json").write_text(json.dumps(spec))
    src = open_source(tmp_path / "r18.json", trust_code=True)
    x = torch.rand(3, 3, 32, 32)
    z, logits = src.model.embed_and_logits(x)
    with torch.no_grad():
        feats = nn.Sequential(*list(net.children())[:-1])(x).flatten(1)
        torch.testing.assert_close(z, feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, net(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(src.model.head(z), logits, atol=1e-5, rtol=1e-5)
    # and through the command line, as a user runs it: analyze (ViM and ReAct run: the head was found), then report
    r = _analyze_and_report(tmp_path, "r18.json", "r18s", "--trust-code", "--analyses", "accuracy,ood_logits",
                            "--opt", "ood_logits.scores=msp,vim,react")
    assert "ood/gaussian/vim/auroc" in r["metrics"] and not r["skipped"]

def test_d4_the_minimal_npz_gets_every_part_it_can(tmp_path):
    """`embeddings` + `labels` (+ `logits`) alone: clustering runs without its probe (which needs train), calibration
    without temperature scaling (which needs val); each left-out part is in `skipped` with its reason."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    z = rng.normal(size=(90, 8)) + 4 * np.eye(8)[y]
    logits = 3 * np.eye(3)[y] + rng.normal(size=(90, 3))
    np.savez(tmp_path / "min.npz", embeddings=z, labels=y, logits=logits)
    r = _results(analyze_path(tmp_path / "min.npz", tmp_path / "res", analyses=["clustering", "calibration"],
                              progress=False))
    assert {"silhouette", "kmeans_nmi", "davies_bouldin", "ece", "nll", "brier"} <= set(r["metrics"])
    assert "linear_probe_accuracy" not in r["metrics"] and "ece_ts" not in r["metrics"]
    assert "train split" in r["skipped"]["clustering.linear_probe_accuracy"]
    assert "val split" in r["skipped"]["calibration.temperature_scaling"]
    assert "clustering" not in r["skipped"] and "calibration" not in r["skipped"]
    assert list(r["plots"]["calibration"]["diagrams"]) == ["before temperature scaling"]
    # with the splits, the parts come back
    np.savez(tmp_path / "full.npz", embeddings=z, labels=y, logits=logits, train_embeddings=z, train_labels=y,
             train_logits=logits, val_embeddings=z, val_labels=y, val_logits=logits)
    r = _results(analyze_path(tmp_path / "full.npz", tmp_path / "res", analyses=["clustering", "calibration"],
                              progress=False))
    assert {"linear_probe_accuracy", "ece_ts", "temperature"} <= set(r["metrics"]) and not r["skipped"]


# ------------------------------------------------------------------------------------- issue #17, Hugging Face
def _tiny_vit(folder, num_labels: int = 10):
    transformers = pytest.importorskip("transformers", reason="the huggingface kind needs embedlab[hf] (transformers)")
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                                   image_std=[0.25] * 3).save_pretrained(folder)
    return model


def test_huggingface_image_classifier_through_analyze_and_report(tmp_path):
    """A tiny randomly initialised ViT written by save_pretrained (no hub access): loaded from safetensors without
    --trust-code, preprocessed as its image processor says, the embedding is the input of its classifier head."""
    ref = _tiny_vit(tmp_path / "vit")
    spec = {"name": "vit", "kind": "huggingface", "weights": "vit", "dataset": "digits"}
    (tmp_path / "vit.json").write_text(json.dumps(spec))
    src = open_source(tmp_path / "vit.json")
    x = src.data.split("test")[0][0].unsqueeze(0).repeat(2, 1, 1, 1)  # (2, 1, 8, 8) in [0, 1]
    z, logits = src.model.embed_and_logits(x)
    pixels = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    pixels = ((pixels - 0.5) / 0.25).expand(-1, 3, -1, -1)
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=False)
        torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z, ref.vit(pixel_values=pixels).last_hidden_state[:, 0], atol=1e-5, rtol=1e-5)
    r = _analyze_and_report(tmp_path, "vit.json", "vit", "--analyses", "accuracy,knn,align_uniform,calibration")
    assert 0.0 <= r["metrics"]["accuracy"]["value"] <= 1.0

def test_huggingface_folder_errors_are_one_line(tmp_path):
    _tiny_vit(tmp_path / "vit", num_labels=3)
    (tmp_path / "empty").mkdir()
    for weights, message in (("empty", "not a save_pretrained folder"),
                             ("vit", "no final nn.Linear with 10 outputs")):
        spec = {"name": "v", "kind": "huggingface", "weights": weights, "dataset": "digits"}
        (tmp_path / "v.json").write_text(json.dumps(spec))
        with pytest.raises(EmbedlabError, match=message):
            open_source(tmp_path / "v.json")


# ------------------------------------------------------------------------------------- README examples: three bugs
def _spec(tmp_path, **spec) -> str:
    (tmp_path / f"{spec['name']}.json").write_text(json.dumps({"dataset": "digits", **spec}))
    return f"{spec['name']}.json"


def test_a_head_that_does_not_map_the_embedding_to_the_logits_is_not_used(tmp_path):
    """ViM and ReAct use g's weight and bias on z: only a head with g(z) = logits may be used. resnet18 read at
    "layer3" (z of another width: crashed with a size mismatch) and timm convnext_atto read by
    method:forward_features (its fc follows a LayerNorm: silently wrong numbers) have none for the analyses, and
    the skip reason says why; the network's head stays for training and its own g(z) (embedding null)."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    for spec in (dict(name="r18l3", kind="torchvision", arch="resnet18", weights="r18.pth", embedding="layer3",
                      preprocess={"size": 32}),
                 dict(name="cx", kind="timm", arch="convnext_atto", embedding="method:forward_features",
                      preprocess={"size": 32})):
        if spec["kind"] == "timm":
            pytest.importorskip("timm")
        src = open_source(tmp_path / _spec(tmp_path, **spec))
        assert src.model.head is not None  # the network's g: untouched (training, forward_head)
        out = analyze_path(tmp_path / f"{spec['name']}.json", tmp_path / "res", analyses=["accuracy", "ood_logits"],
                           cache_dir=tmp_path / "cache", progress=False,
                           settings={"ood_logits": {"scores": "msp,mahalanobis,vim,react"}})
        r = _results(out)
        assert "ood/gaussian/msp/auroc" in r["metrics"] and "ood/gaussian/mahalanobis/auroc" in r["metrics"]
        for score in ("vim", "react"):
            assert f"ood/gaussian/{score}/auroc" not in r["metrics"], spec["name"]
            why = r["skipped"][f"ood_logits.{score}"]
            assert "does not map the embedding" in why and spec["embedding"] in why, why
    # embedding null: g's input is the embedding, so the head maps it and ViM/ReAct run
    r = _results(analyze_path(tmp_path / _spec(tmp_path, name="r18", kind="torchvision", arch="resnet18",
                                                weights="r18.pth", preprocess={"size": 32}),
                              tmp_path / "res", analyses=["ood_logits"], cache_dir=tmp_path / "cache",
                              progress=False, settings={"ood_logits": {"scores": "vim,react"}}))
    assert "ood/gaussian/vim/auroc" in r["metrics"] and "ood/gaussian/react/auroc" in r["metrics"] and not r["skipped"]


@pytest.mark.slow  # a real process running every default analysis, about 10 s
def test_the_default_analyses_of_resnet18_read_at_layer3_run_from_the_command_line(tmp_path):
    """`embedlab analyze` with the default analyses (ood among them) on resnet18 at "layer3": exit 0 (was a
    size-mismatch traceback from ViM)."""
    import subprocess
    import sys

    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    spec = _spec(tmp_path, name="r18l3", kind="torchvision", arch="resnet18", weights="r18.pth", embedding="layer3",
                 preprocess={"size": 32})
    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / spec), "--out",
                           str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                           "--analyses", "accuracy,ood", "--opt", "ood.max_examples=50"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    r = _results(tmp_path / "res" / "r18l3")
    assert "ood/gaussian/odin/auroc" in r["metrics"] and "does not map" in r["skipped"]["ood.vim"]


class _PostScaled(nn.Module):
    """A program whose logits are not its last linear layer's output: 2·fc(z) + 1."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        z = self.features(x)
        return 2 * self.fc(z) + 1, z


def test_an_exported_program_keeps_its_head_only_where_it_maps_the_embedding(tmp_path):
    torch.manual_seed(0)
    _export(_PostScaled(), tmp_path / "post.pt2")
    for embedding in (None, "output:1"):
        src = open_source(tmp_path / _spec(tmp_path, name="post", kind="export", weights="post.pt2",
                                           embedding=embedding), trust_code=True)
        assert src.model.head is None and "does not map the embedding" in src.model.no_head_reason
    _export(_SmallCNN(), tmp_path / "cnn.pt2")  # logits = fc(z): the head stays
    src = open_source(tmp_path / _spec(tmp_path, name="cnn", kind="export", weights="cnn.pt2"), trust_code=True)
    assert src.model.head is not None


def test_timm_with_one_input_channel_reads_one_channel_data(tmp_path):
    """`"factory_kwargs": {"in_chans": 1}` on digits: the 1-channel data goes in as it is (it was repeated to 3
    channels for every timm/torchvision model and refused); a 3-channel torchvision resnet18 still gets it repeated."""
    pytest.importorskip("timm")
    import timm
    import torchvision

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=10, in_chans=1).state_dict(), tmp_path / "t1.pth")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    for spec in (dict(name="t1", kind="timm", arch="resnet18", weights="t1.pth", factory_kwargs={"in_chans": 1}),
                 dict(name="cx1", kind="timm", arch="convnext_atto", factory_kwargs={"in_chans": 1},
                      preprocess={"size": 32}),
                 dict(name="r18", kind="torchvision", arch="resnet18", weights="r18.pth")):
        src = open_source(tmp_path / _spec(tmp_path, **spec))
        assert src.model.gray_to_rgb is (spec["kind"] == "torchvision"), spec["name"]
        r = _results(analyze_path(tmp_path / f"{spec['name']}.json", tmp_path / "res", analyses=["accuracy"],
                                  cache_dir=tmp_path / "cache", progress=False))
        assert 0.0 <= r["metrics"]["accuracy"]["value"] <= 1.0 and not r["skipped"]


def _test_logits_only_npz(tmp_path, val: bool = False):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    z = rng.normal(size=(90, 8)) + 4 * np.eye(8)[y]
    logits = 3 * np.eye(3)[y] + rng.normal(size=(90, 3))
    extra = {"val_embeddings": z, "val_labels": y} if val else {}
    np.savez(tmp_path / "t.npz", train_embeddings=z, train_labels=y, test_embeddings=z, test_labels=y,
             test_logits=logits, **extra)
    return tmp_path / "t.npz"


@pytest.mark.parametrize("val", [False, True])
def test_npz_with_test_logits_only_runs_the_analyses_that_read_them(tmp_path, val):
    """Logits for the test split alone (train, and val, without): accuracy, calibration (without temperature scaling:
    T is fitted on val's logits) and embedding_mmlb run; nothing reads the train split's logits."""
    path = _test_logits_only_npz(tmp_path, val)
    r = _results(analyze_path(path, tmp_path / "res", analyses=["accuracy", "calibration", "embedding_mmlb", "knn",
                                                                "ood_logits"], progress=False))
    assert r["metrics"]["accuracy"]["value"] > 0.5
    assert {"ece", "nll", "embedding_mmlb", "knn_accuracy"} <= set(r["metrics"]) and "ece_ts" not in r["metrics"]
    why = r["skipped"]["calibration.temperature_scaling"]
    assert ("val split's logits" in why) if val else ("needs a val split" in why), why
    assert r["skipped"]["ood_logits"] == "no dataset to draw OOD sets for"
    assert set(r["skipped"]) == {"calibration.temperature_scaling", "ood_logits"}


def test_npz_with_logits_but_not_for_test_says_so(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    z = rng.normal(size=(20, 4))
    np.savez(tmp_path / "t.npz", train_embeddings=z, train_labels=y, train_logits=rng.normal(size=(20, 2)),
             test_embeddings=z, test_labels=y)
    r = _results(analyze_path(tmp_path / "t.npz", tmp_path / "res", analyses=["accuracy"], progress=False))
    assert "test split" in r["skipped"]["accuracy"] and "no logits" in r["skipped"]["accuracy"]


def test_analyze_all_on_an_npz_with_test_logits_only_exits_0(tmp_path):
    import subprocess
    import sys

    path = _test_logits_only_npz(tmp_path, val=True)
    proc = subprocess.run([sys.executable, "-m", "embedlab", "analyze", str(path), "--out", str(tmp_path / "res"),
                           "--analyses", "all", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    r = _results(tmp_path / "res" / "t")
    assert "accuracy" in r["metrics"] and "ece" in r["metrics"] and "accuracy" not in r["skipped"]
