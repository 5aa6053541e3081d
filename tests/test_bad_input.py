"""Bad input (issue #8): every wrong option, name, path or file gets exactly one line on stderr, exit status 2, no
traceback (``--debug`` shows one: tests/test_cli.py::test_debug_shows_traceback), and nothing is overwritten
without ``--force``. Most cases run the CLI in-process (fast); a representative few run ``python -m embedlab`` in
real processes. Messages are matched exactly; where a message quotes a library (safetensors, torchvision, json)
or comes from the report layer, the part embedlab writes is matched exactly and the rest loosely.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from embedlab.analyses.registry import ANALYSES
from embedlab.cli import main
from embedlab.config import TrainConfig
from embedlab.data import DATASETS
from embedlab.methods import METHODS
from embedlab.models import MODELS
from embedlab.trainers import STATE_FILE

TRAIN_ARGS = ["--epochs", "1", "--model-opt", "width=4", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _error(capsys, *argv) -> str:
    """Run the CLI in-process: it must fail with status 2 and one line on stderr, without a traceback."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors leave from parse_args
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def _known(registry) -> str:
    return ", ".join(registry.names())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained digits run (1 epoch, tiny cnn-gap)."""
    out = tmp_path_factory.mktemp("run") / "run"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *TRAIN_ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(prev)
    return out


def _npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    z = rng.normal(size=(30, 4)) + 3 * np.eye(4)[y]
    arrays = {"train_embeddings": z, "train_labels": y, "test_embeddings": z, "test_labels": y,
              "test_logits": 2.0 * np.eye(3)[y], **override}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# ============================================================================================ train
def _argparse(flag: str, what: str, value: str, command: str = "train") -> str:
    return f"embedlab {command}: error: argument {flag}: expected {what}, got {value!r} (see embedlab {command} --help)"


@pytest.mark.parametrize("flag,value,what", [
    ("--epochs", "abc", "a positive integer"), ("--epochs", "0", "a positive integer"),
    ("--epochs", "1.5", "a positive integer"), ("--batch-size", "0", "a positive integer"),
    ("--lr", "0", "a positive number"), ("--lr", "nan", "a positive number"), ("--lr", "inf", "a positive number"),
    ("--lr", "fast", "a positive number"), ("--momentum", "-0.1", "a number >= 0"),
    ("--weight-decay", "x", "a number >= 0"), ("--lr-gamma", "0", "a positive number"),
    ("--seed", "-1", "an integer >= 0"), ("--seed", "1.5", "an integer >= 0"), ("--workers", "-1", "an integer >= 0"),
    ("--milestones", "3,a", "comma-separated integers"), ("--seeds", "a", "comma-separated integers"),
])
def test_train_option_of_wrong_type_or_range(tmp_path, capsys, flag, value, what):
    assert _error(capsys, "train", "--out", tmp_path / "r", flag, value) == _argparse(flag, what, value)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "1"], "train: batch_size must be >= 2, got 1"),
    (["--milestones", "0,5"], "train: milestones must be increasing epochs >= 1, got [0, 5]"),
    (["--milestones", "5,3"], "train: milestones must be increasing epochs >= 1, got [5, 3]"),
    (["--seeds", "1,1"], "--seeds: expected distinct integers >= 0, got '1,1'"),
    (["--seeds=-1,2"], "--seeds: expected distinct integers >= 0, got '-1,2'"),
    (["--seed", "0", "--seeds", "1,2"], "give either --seed or --seeds, not both"),
    (["--resume", "--force"], "--resume continues a run and --force overwrites it: give only one of them"),
    (["--set", "foo=1"], "--set: unknown option(s) foo; known: " + ", ".join(
        f.name for f in dataclasses.fields(TrainConfig))),
    (["--set", "epochs=abc"], "--set option epochs: expected int, got 'abc'"),
    (["--set", "lr=fast"], "--set option lr: expected float, got 'fast'"),
    (["--set", "channels_last=maybe"], "--set option channels_last: expected bool or null, got 'maybe'"),
    (["--set", "epochs=0"], "train: epochs must be >= 1, got 0"),
    (["--set", "seed=-1"], "train: seed must be >= 0, got -1"),
    (["--set", "lr=inf"], "--set option lr: expected a finite number, got 'inf'"),
    (["--set", "momentum=-1"], "train: momentum must be >= 0 and finite, got -1.0"),
    (["--set", "lr_gamma=0"], "train: lr_gamma must be > 0 and finite, got 0.0"),
    (["--set", "epochs"], "--set: expected key=value, got 'epochs'"),
    (["--set", "epochs.x=1"], "--set epochs.x: only dataset_options, model_options and method_options take "
                              "KEY.NAME=VALUE"),
    (["--set", "method_options=[1]"], "--set method_options: expected a JSON object such as {\"n\": 500} or "
                                      "method_options.NAME=VALUE, got '[1]'"),
    (["--dataset", "toy-gmm", "--set", "dataset_options.K=x"], "dataset 'toy-gmm' option K: expected int, got 'x'"),
    (["--model-opt", "width=x"], "model 'cnn-gap' option width: expected int, got 'x'"),
    (["--method", "multimix", "-O", "n=abc"], "method 'multimix' option n: expected int, got 'abc'"),
    (["-O", "n"], "--method-opt: expected key=value, got 'n'"),
    (["--mix-layer", "layer2"], "--mix-layer: method 'erm' does not mix hidden states (it has no layers option)"),
    (["--dataset", "nope"], f"unknown dataset 'nope'; known: {_known(DATASETS)}"),
    (["--model", "nope"], f"unknown model 'nope'; known: {_known(MODELS)}"),
    (["--set", "model=nope"], f"unknown model 'nope'; known: {_known(MODELS)}"),
    (["--method", "nope"], f"unknown method 'nope'; known: {_known(METHODS)}"),
])
def test_train_config_errors(tmp_path, capsys, args, message):
    assert _error(capsys, "train", "--out", tmp_path / "r", "--no-progress", *args) == f"embedlab: error: {message}"
    assert not (tmp_path / "r").exists()  # nothing was started


def _image_folder(root: Path, *, classes=("cat",), images=0, junk=False) -> Path:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for c in classes:
            (root / split / c).mkdir()
            for i in range(images):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / c / f"{i}.png")
            if junk:
                (root / split / c / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_data_root_errors(tmp_path, capsys):
    def fails(root) -> str:
        return _error(capsys, "train", "--out", tmp_path / "r", "--dataset", "imagefolder", "--data-root", root)

    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    assert fails(empty) == f"embedlab: error: imagefolder root '{empty}' has no train/ folder (expected " \
                           f"train/<class>/<image>)"
    assert fails(missing) == f"embedlab: error: imagefolder root '{missing}' does not exist or is not a directory"
    (tmp_path / "file").write_text("x")
    assert fails(tmp_path / "file") == (f"embedlab: error: imagefolder root '{tmp_path / 'file'}' does not exist or "
                                        f"is not a directory")
    no_classes = _image_folder(tmp_path / "no_classes", classes=())
    assert re.fullmatch(rf"embedlab: error: cannot read image folder {re.escape(str(no_classes / 'train'))}: "
                        r"Couldn't find any class folder in .*", fails(no_classes))
    no_images = _image_folder(tmp_path / "no_images", junk=True)
    assert re.fullmatch(rf"embedlab: error: cannot read image folder {re.escape(str(no_images / 'train'))}: "
                        r"Found no valid file for the classes cat\. .*", fails(no_images))
    assert _error(capsys, "train", "--out", tmp_path / "r", "--dataset", "imagefolder") == (
        "embedlab: error: dataset 'imagefolder' needs --data-root DIR (a folder with train/<class>/ and "
        "test/<class>/ image folders)")
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_force_and_bad_training_states_are_refused(run, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert _error(capsys, "train", *TRAIN_ARGS, "--out", run) == (
        f"embedlab: error: {run / 'model.safetensors'} already exists; choose another --out, pass --resume to "
        f"continue it or --force to overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # not touched
    for name, data in (("empty", b""), ("truncated", before[STATE_FILE][: len(before[STATE_FILE]) // 2])):
        other = tmp_path / name
        other.mkdir()
        (other / STATE_FILE).write_bytes(data)
        assert re.fullmatch(rf"embedlab: error: cannot read training state {re.escape(str(other / STATE_FILE))}: "
                            r".+ \(empty, truncated or not written by embedlab train\)",
                            _error(capsys, "train", *TRAIN_ARGS, "--out", other, "--resume"))
        assert (other / STATE_FILE).read_bytes() == data


# ============================================================================================ analyze
def test_analyze_option_errors(run, tmp_path, capsys):
    npz, res = _npz(tmp_path / "emb.npz"), tmp_path / "res"
    cases = [
        (["--analyses", "nope"], f"unknown analysis 'nope'; known: {_known(ANALYSES)}"),
        (["--analyses", ","], "--analyses: give 'all' or a comma-separated list of analysis names"),
        (["--opt", "knn"], "--opt: expected key=value, got 'knn'"),
        (["--opt", "k=5"], "--opt: expected ANALYSIS.KEY=VALUE, got k=5"),
        (["--opt", "nope.k=5"], f"unknown analysis 'nope'; known: {_known(ANALYSES)}"),
        (["--analyses", "knn", "--opt", "knn.zz=5"], "--opt knn.zz: unknown setting; knn takes: k, temperature"),
        (["--analyses", "knn", "--opt", "calibration.n_bins=3"],
         "--opt calibration.…: analysis 'calibration' is not selected (see --analyses)"),
        (["--analyses", "knn", "--opt", "knn.k=abc"], "--opt knn option k: expected int, got 'abc'"),
        (["--analyses", "knn", "--opt", "knn.k=0"],
         "--opt knn option k: must be >= 1, got 0"),
        (["--analyses", "knn", "--opt", "knn.temperature=-1"],
         "--opt knn option temperature: must be > 0, got -1"),
    ]
    for args, message in cases:
        assert _error(capsys, "analyze", npz, "--out", res, "--no-progress", *args) == f"embedlab: error: {message}"
    assert _error(capsys, "analyze", "--out", res) == (
        "embedlab: error: analyze: give at least one checkpoint, model spec or arrays file")
    assert not res.exists()


def test_analyze_missing_empty_and_broken_inputs(run, tmp_path, capsys):
    def fails(model) -> str:
        return _error(capsys, "analyze", model, "--out", tmp_path / "res", "--no-progress")

    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    expected = "(expected a run directory holding model.safetensors or a .safetensors file)"
    assert fails(empty) == f"embedlab: error: checkpoint not found: {empty / 'model.safetensors'} {expected}"
    assert fails(missing) == f"embedlab: error: checkpoint not found: {missing} {expected}"
    assert fails(tmp_path / "missing.npz") == f"embedlab: error: arrays file not found: {tmp_path / 'missing.npz'}"
    weights = (run / "model.safetensors").read_bytes()
    for name, data in (("zero.safetensors", b""), ("truncated.safetensors", weights[:-100])):
        (tmp_path / name).write_bytes(data)
        assert re.fullmatch(rf"embedlab: error: cannot read checkpoint {re.escape(str(tmp_path / name))}: .+ "
                            r"\(truncated or not a safetensors file\?\)", fails(tmp_path / name))
    good = _npz(tmp_path / "good.npz").read_bytes()
    for name, data, why in (("zero.npz", b"", "No data left in file"),
                            ("truncated.npz", good[: len(good) // 2], "File is not a zip file")):
        (tmp_path / name).write_bytes(data)
        assert fails(tmp_path / name) == (f"embedlab: error: cannot read arrays {tmp_path / name}: {why} (empty, "
                                          f"truncated or not an .npz file?)")
    nan = _npz(tmp_path / "nan.npz", test_embeddings=np.full((30, 4), np.nan))
    assert fails(nan) == f"embedlab: error: {nan}: test_embeddings or logits contain NaN or Inf"
    inf = _npz(tmp_path / "inf.npz", test_logits=np.full((30, 3), np.inf))
    assert fails(inf) == f"embedlab: error: {inf}: test_embeddings or logits contain NaN or Inf"
    assert not (tmp_path / "res").exists()


def _variant(run: Path, path: Path, change) -> Path:
    """A copy of ``run``'s checkpoint with its tensors and metadata passed through ``change``."""
    with safe_open(str(run / "model.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["embedlab"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    change(state, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"embedlab": json.dumps(meta)})
    return path


def test_analyze_checkpoint_of_another_model_class_count_or_with_nan_outputs(run, tmp_path, capsys):
    def fails(model) -> str:
        return _error(capsys, "analyze", model, "--out", tmp_path / "res", "--analyses", "accuracy", "--device",
                      "cpu", "--cache-dir", tmp_path / "cache", "--no-progress")

    wider = _variant(run, tmp_path / "wider.safetensors", lambda s, m: m["model"]["options"].update(width=8))
    assert re.fullmatch(rf"embedlab: error: checkpoint {re.escape(str(wider))} does not match its model 'cnn-gap': "
                        r"Error\(s\) in loading state_dict for .+", fails(wider))

    def five_classes(state, meta):
        meta["model"]["num_classes"] = 5
        state["head.weight"], state["head.bias"] = state["head.weight"][:5].clone(), state["head.bias"][:5].clone()

    fewer = _variant(run, tmp_path / "five.safetensors", five_classes)
    assert fails(fewer) == f"embedlab: error: {fewer}: model predicts 5 classes but dataset 'digits' has 10"
    diverged = _variant(run, tmp_path / "nan.safetensors", lambda s, m: s["head.weight"].fill_(float("nan")))
    assert fails(diverged) == (f"embedlab: error: {diverged}: the test logits contain NaN or Inf (a diverged "
                               f"model?); nothing to analyse")
    assert not (tmp_path / "res").exists()


def test_analyze_does_not_overwrite_results_of_another_model(tmp_path, capsys):
    res = tmp_path / "res"
    assert main(["analyze", str(_npz(tmp_path / "a" / "emb.npz")), "--out", str(res), "--analyses", "knn",
                 "--no-progress"]) == 0
    before = (res / "emb" / "results.json").read_bytes()
    other = _npz(tmp_path / "b" / "emb.npz", test_embeddings=np.eye(30, 4) + 1)  # another model, the same name
    capsys.readouterr()
    assert _error(capsys, "analyze", other, "--out", res, "--analyses", "knn", "--no-progress") == (
        f"embedlab: error: {res / 'emb' / 'results.json'} holds results of another model; choose another --out or "
        f"pass --force")
    assert (res / "emb" / "results.json").read_bytes() == before
    assert main(["analyze", str(other), "--out", str(res), "--analyses", "knn", "--force", "--no-progress"]) == 0
    assert (res / "emb" / "results.json").read_bytes() != before


# ============================================================================================ report
@pytest.mark.parametrize("flag,value,what", [
    ("--umap-neighbors", "0", "a positive integer"), ("--umap-neighbors", "abc", "a positive integer"),
    ("--umap-epochs", "0", "a positive integer"), ("--umap-min-dist", "-1", "a number >= 0"),
    ("--max-points", "-1", "an integer >= 0"), ("--max-points", "1.5", "an integer >= 0"),
    ("--seed", "-1", "an integer >= 0"),
])
def test_report_option_of_wrong_type_or_range(tmp_path, capsys, flag, value, what):
    out = tmp_path / "r.html"
    assert _error(capsys, "report", tmp_path, "-o", out, flag, value) == _argparse(flag, what, value, "report")
    assert not out.exists()


def test_report_missing_empty_and_broken_results_and_existing_output(tmp_path, capsys):
    res, out = tmp_path / "res", tmp_path / "report.html"
    assert main(["analyze", str(_npz(tmp_path / "emb.npz")), "--out", str(res), "--analyses", "knn",
                 "--no-progress"]) == 0
    capsys.readouterr()

    def fails(*paths) -> str:
        return _error(capsys, "report", *paths, "-o", out)

    empty = tmp_path / "empty"
    empty.mkdir()
    # the report layer words these; embedlab's part is one line naming the path
    assert re.fullmatch(rf"embedlab: error: no results\.json.* in {re.escape(str(empty))}\b.*", fails(empty))
    assert re.fullmatch(rf"embedlab: error: .*does not exist.*{re.escape(str(tmp_path / 'missing'))}.*",
                        fails(tmp_path / "missing"))
    results, arrays = (res / "emb" / "results.json"), (res / "emb" / "arrays.npz")
    good_results, good_arrays = results.read_bytes(), arrays.read_bytes()
    for broken in (b"", good_results[: len(good_results) // 2]):
        results.write_bytes(broken)
        assert re.fullmatch(rf"embedlab: error: invalid JSON in {re.escape(str(results))}: .+", fails(res))
    results.write_bytes(good_results)
    arrays.write_bytes(b"")
    assert re.fullmatch(rf"embedlab: error: cannot read arrays file {re.escape(str(arrays))}: .+", fails(res))
    arrays.write_bytes(good_arrays)
    assert not out.exists()

    out.write_text("an earlier report")
    assert fails(res) == f"embedlab: error: {out} already exists; choose another -o or pass --force to overwrite"
    assert out.read_text() == "an earlier report"


# ============================================================================================ demo
def test_demo_checks_everything_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _error(capsys, "demo", "--out", out, "--epochs", "0") == _argparse("--epochs", "a positive integer", "0",
                                                                              "demo")
    assert _error(capsys, "demo", "--out", out, "--methods", "erm,nope") == (
        f"embedlab: error: unknown method 'nope'; known: {_known(METHODS)}")
    assert _error(capsys, "demo", "--out", out, "--methods", ",") == (
        "embedlab: error: --methods: give at least one method (see `embedlab list methods`)")
    assert not out.exists()  # erm was not trained before the bad name was found
    (out / "runs" / "mixup").mkdir(parents=True)
    (out / "runs" / "mixup" / "model.safetensors").write_bytes(b"an earlier run")
    assert _error(capsys, "demo", "--out", out, "--methods", "erm,mixup") == (
        f"embedlab: error: {out / 'runs' / 'mixup' / 'model.safetensors'} already exists; choose another --out or "
        f"pass --force to redo the demo")
    assert not (out / "runs" / "erm").exists()
    (out / "report.html").write_text("an earlier demo")
    assert _error(capsys, "demo", "--out", out) == (
        f"embedlab: error: {out / 'report.html'} already exists; choose another --out or pass --force to redo the demo")
    assert (out / "report.html").read_text() == "an earlier demo"


# ============================================================================================ real processes
@pytest.fixture(scope="module", autouse=True)
def real_processes(tmp_path_factory):
    """A representative subset through ``python -m embedlab`` (argparse, config, file and report-layer errors),
    started when this module starts so that they run while the in-process tests do: ``[(argv, pattern, Popen)]``."""
    root = tmp_path_factory.mktemp("processes")
    (root / "empty").mkdir()
    (root / "zero.npz").write_bytes(b"")
    cases = [
        (["train", "--out", root / "r", "--epochs", "abc"],
         re.escape(_argparse("--epochs", "a positive integer", "abc"))),
        (["train", "--out", root / "r", "--set", "lr=fast"],
         re.escape("embedlab: error: --set option lr: expected float, got 'fast'")),
        (["analyze", root / "zero.npz", "--out", root / "res"],
         re.escape(f"embedlab: error: cannot read arrays {root / 'zero.npz'}: No data left in file (empty, "
                   f"truncated or not an .npz file?)")),
        (["report", root / "empty", "-o", root / "r.html"],
         rf"embedlab: error: no results\.json.* in {re.escape(str(root / 'empty'))}\b.*"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = [(argv, pattern, subprocess.Popen([sys.executable, "-m", "embedlab", *map(str, argv)],
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
               for argv, pattern in cases]
    yield root, started
    for _, _, proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_errors_in_real_processes_are_one_line_with_status_2(real_processes):
    root, started = real_processes
    for argv, pattern, proc in started:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert re.fullmatch(pattern, lines[0]), lines[0]
    assert not any((root / name).exists() for name in ("r", "res", "r.html"))
