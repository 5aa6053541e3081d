"""Recipes: packaged JSON files that load into a strictly typed TrainConfig; layering recipe < --config <
flags/--set."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from embedlab.cli import _train_config, build_parser
from embedlab.config import TrainConfig, apply_assignments
from embedlab.errors import EmbedlabError
from embedlab.recipes import RECIPE_DIR, load_recipe, read_config_file, recipe_names

EXPECTED = {"cifar10-preact-resnet18", "cifar10-wrn16-8", "cifar100-preact-resnet18", "cifar100-wrn16-8",
            "tinyimagenet-preact-resnet18", "imagenet-resnet50", "cifar10-small-cnn", "digits"}


def _cfg(*argv: str, saved: dict | None = None) -> TrainConfig:
    return _train_config(build_parser().parse_args(["train", "--out", "x", *argv]), saved)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_loads_and_validates(name):
    r = load_recipe(name)
    cfg = r.resolved()
    assert r.description and r.path.parent == RECIPE_DIR and r.path.name == f"{name}.json"
    assert set(r.config) <= set(TrainConfig.__dataclass_fields__)
    assert cfg.model is not None and cfg.method == "erm"  # the method is chosen per run, the protocol is fixed
    assert json.loads(r.path.read_text())["config"] == r.config  # what a user reads is what runs


def test_packaged_recipes_and_their_protocols():
    assert set(recipe_names()) == EXPECTED
    for ds in ("cifar10", "cifar100"):
        for model in ("preact-resnet18", "wrn16-8"):
            c = load_recipe(f"{ds}-{model}").resolved()
            assert (c.dataset, c.model, c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs,
                    c.schedule, c.milestones, c.lr_gamma) == (ds, model, "sgd", 0.1, 0.9, 1e-4, 128, 2000, "step",
                                                              (500, 1000, 1500), 0.1)
    t = load_recipe("tinyimagenet-preact-resnet18").resolved()
    assert (t.dataset, t.model, t.epochs, t.milestones, t.dataset_options) == (
        "imagefolder", "preact-resnet18", 1200, (600, 900), {"image_size": 64})
    i = load_recipe("imagenet-resnet50").resolved()
    assert (i.dataset, i.model, i.epochs, i.dataset_options["image_size"]) == ("imagefolder", "resnet50", 300, 224)
    s = load_recipe("cifar10-small-cnn").resolved()
    assert (s.model, s.epochs, s.batch_size, s.optimizer) == ("small-cnn", 50, 250, "adam")
    # the digits recipe is what `embedlab demo` trains, and TrainConfig's defaults
    d = load_recipe("digits").resolved()
    assert d == TrainConfig(model="cnn-gap")
    assert (d.model, d.optimizer, d.lr, d.momentum, d.weight_decay, d.schedule, d.epochs, d.batch_size) == (
        "cnn-gap", "sgd", 0.05, 0.9, 5e-4, "cosine", 30, 64)


def test_wrn16_8_is_registered_with_cifar_stem():
    from embedlab.models import create_model

    m = create_model("wrn16-8", 10, (3, 32, 32))
    assert 10.9e6 < sum(p.numel() for p in m.parameters()) < 11.1e6  # WRN-16-8: 11.0 M parameters
    assert m.feature_map(torch.rand(1, 3, 32, 32)).shape == (1, 512, 64)  # 8×8 map: no stem down-sampling
    assert create_model("wrn", 10, (3, 32, 32), depth=10, widen=1).embed_dim == 64
    with pytest.raises(EmbedlabError, match="depth = 6n \\+ 4"):
        create_model("wrn", 10, (3, 32, 32), depth=15)


def _write(tmp_path: Path, obj: dict, name: str = "r.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_recipe_errors_name_the_recipe_and_key(tmp_path):
    cases = [
        ({"description": "d", "config": {"epoch": 3}},
         "recipe {p}: unknown option(s) epoch; known: dataset, data_root,"),
        ({"description": "d", "config": {"epochs": "2000"}}, "recipe {p} option epochs: expected int, got '2000'"),
        ({"description": "d", "config": {"epochs": True}}, "recipe {p} option epochs: expected int, got True"),
        ({"description": "d", "config": {"lr": "0.1"}}, "recipe {p} option lr: expected float, got '0.1'"),
        ({"description": "d", "config": {"model": 18}}, "recipe {p} option model: expected str or null, got 18"),
        ({"description": "d", "config": {"milestones": "500,1000"}},
         "recipe {p} option milestones: expected a list of int, got '500,1000'"),
        ({"description": "d", "config": {"dataset_options": [1]}},
         "recipe {p} option dataset_options: expected an object of key: value pairs, got [1]"),
        ({"description": "d", "config": {"epochs": 0}}, "recipe {p}: epochs must be >= 1, got 0"),
        ({"description": "d", "config": {}, "comment": "x"},
         "recipe {p}: unknown key(s) comment; known: description, reference, notes, config"),
        ({"config": {}}, "recipe {p}: missing key 'description'"),
    ]
    for obj, msg in cases:
        p = _write(tmp_path, obj)
        with pytest.raises(EmbedlabError) as e:
            load_recipe(p)
        assert str(e.value).startswith(msg.format(p=p)), str(e.value)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EmbedlabError, match=r"recipe .*bad\.json is not valid JSON"):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(EmbedlabError,
                       match=r"unknown recipe 'cifar10-wrn' \(did you mean 'cifar10-wrn16-8'\?\); known: "):
        load_recipe("cifar10-wrn")


def test_layering_recipe_then_config_then_flags_and_set(tmp_path):
    c = _cfg("--recipe", "cifar10-wrn16-8")
    assert (c.model, c.epochs, c.lr) == ("wrn16-8", 2000, 0.1)
    conf = _write(tmp_path, {"epochs": 7, "lr": 0.3, "batch_size": 32}, "c.json")
    c = _cfg("--recipe", "cifar10-wrn16-8", "--config", str(conf))
    assert (c.model, c.epochs, c.lr, c.batch_size) == ("wrn16-8", 7, 0.3, 32)  # --config over the recipe
    c = _cfg("--recipe", "cifar10-wrn16-8", "--config", str(conf), "--epochs", "5", "--set", "lr=0.01",
             "--set", "milestones=2,4", "--set", "method_options.n=500", "-O", "alpha=2", "--method", "multimix",
             "--set", "dataset_options.val_fraction=0.2", "--set", "channels_last=true", "--compile")
    assert (c.epochs, c.lr, c.batch_size, c.milestones, c.channels_last, c.compile) == (5, 0.01, 32, (2, 4), True, True)
    assert c.method_options == {"n": 500, "alpha": "2"} and c.dataset_options == {"val_fraction": 0.2}
    assert _cfg("--lr", "0.2", "--set", "lr=0.4").lr == 0.4  # --set comes last
    assert _cfg("--recipe", "cifar10-wrn16-8", "--set", "model=null").model is None
    # a recipe file by path, and a run's meta.json as --config
    assert _cfg("--recipe", str(RECIPE_DIR / "digits.json")).model == "cnn-gap"
    meta = _write(tmp_path, {"format": "embedlab.checkpoint", "config": TrainConfig(epochs=4).to_dict()}, "meta.json")
    assert read_config_file(meta)["epochs"] == 4 and _cfg("--config", str(meta)).epochs == 4


def test_set_errors(tmp_path):
    for items, msg in [
        (["epoch=3"], "--set: unknown option(s) epoch; known: dataset"),
        (["epochs=five"], "--set option epochs: expected int, got 'five'"),
        (["lr.x=1"], "--set lr.x: only dataset_options, model_options and method_options take KEY.NAME=VALUE"),
        (["method_options=n"], "--set method_options: expected a JSON object"),
        (["epochs"], "--set: expected key=value, got 'epochs'"),
    ]:
        with pytest.raises(EmbedlabError, match=re.escape(msg)):
            apply_assignments({}, items)
    assert apply_assignments({}, ['method_options={"n": 5}'])["method_options"] == {"n": 5}
    bad = _write(tmp_path, {"epochs": "3"}, "c.json")
    with pytest.raises(EmbedlabError, match=re.escape(f"--config {bad} option epochs: expected int, got '3'")):
        _cfg("--config", str(bad))


def test_resume_layers_flags_over_the_saved_config():
    saved = TrainConfig(epochs=9, lr=0.2, method="mixup", model="cnn-gap").to_dict()
    c = _cfg(saved=saved)
    assert (c.epochs, c.lr, c.method) == (9, 0.2, "mixup")
    assert _cfg("--epochs", "12", saved=saved).epochs == 12  # the trainer then reports the differing key


def test_recipes_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^(embedlab\s*=\s*\[.*"recipes/\*(\.json)?"|"embedlab\.recipes"\s*=\s*\[.*"\*(\.json)?")', text,
                     flags=re.M), "recipes missing from [tool.setuptools.package-data]"
