"""Hostile and careless inputs (issue #16, "Hardening II"): a few-byte file that asks for 10**9 classes, a spec name
that climbs out of ``--out``, a spec that runs code without an opt-in, edited checkpoint headers, malformed ``.npz``
and ``results.json`` files, odd report targets. Each is one line on stderr with exit status 2 (or a success), and
nothing is written outside the output asked for. The memory cases run in a subprocess under ``RLIMIT_AS``.
"""
from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedlab.checkpoint import save_checkpoint
from embedlab.cli import main
from embedlab.models import create_model
from tests.test_bad_input import _npz

pytestmark = pytest.mark.usefixtures("one_thread")

MEMORY_LIMIT = 8 << 30  # bytes of address space: enough to import torch, far below 10**9 class names


def _outcome(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process: ``(status, stderr)``."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _error(capsys, *argv) -> str:
    rc, err = _outcome(capsys, *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _limited(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m embedlab ARGV`` with its address space limited to MEMORY_LIMIT."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "embedlab", *map(str, argv)], cwd=cwd, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _meta() -> dict:
    return {"model": {"name": "cnn-gap", "num_classes": 10, "input_shape": [1, 8, 8], "mean": None, "std": None,
                      "options": {"width": 4}},
            "method": {"name": "erm", "options": {}}, "dataset": {"name": "digits"},
            "config": {"dataset": "digits", "dataset_options": {}, "seed": 0}}


def _checkpoint(path: Path, meta: dict | None = None) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, create_model("cnn-gap", 10, (1, 8, 8), width=4), meta if meta is not None else _meta())
    return path


# ============================================================================ 1. memory: class counts are bounded
def test_class_counts_from_files_are_bounded_before_allocation_under_a_memory_limit(tmp_path):
    # a 4-example .npz whose last label is 10**9: formerly 10**9 class names (MemoryError under the limit)
    np.savez(tmp_path / "lh.npz", embeddings=np.ones((4, 2), "f4"), labels=np.array([0, 1, 0, 10**9]))
    line = _one_line(_limited(["analyze", "lh.npz", "--out", "R", "--no-progress"], tmp_path))
    assert line == ("embedlab: error: lh.npz: labels reach class 1000000000; embedlab reads at most 100000 classes "
                    "(labels must be class indices 0 .. C-1)")
    # the same results for `report`, without class names in results.json
    res = tmp_path / "res" / "m"
    res.mkdir(parents=True)
    np.savez(res / "arrays.npz", embeddings=np.ones((4, 2), "f4"), labels=np.array([0, 1, 0, 10**9]))
    (res / "results.json").write_text(json.dumps({"schema_version": 1, "kind": "embedlab.analysis",
                                                  "model": {"name": "m"}, "dataset": {}, "metrics": {}}))
    line = _one_line(_limited(["report", "res", "-o", "r.html"], tmp_path))
    assert line == (f"embedlab: error: labels in {Path('res/m/arrays.npz')} range over [0, 1000000000], which are not "
                    f"class indices 0 .. C-1 for 4 examples ({Path('res/m/results.json')} lists no class names)")
    # a checkpoint header asking for 10**8 classes (formerly a 51 GB allocation)
    meta = _meta()
    meta["model"]["num_classes"] = 10**8
    _checkpoint(tmp_path / "big.safetensors", meta)
    line = _one_line(_limited(["analyze", "big.safetensors", "--out", "R", "--device", "cpu", "--no-progress"],
                              tmp_path))
    assert line == ("embedlab: error: checkpoint big.safetensors: metadata model.num_classes must be an integer in "
                    "[1, 100000], got '100000000'")
    assert not (tmp_path / "R").exists() and not (tmp_path / "r.html").exists()


def test_labels_beyond_the_examples_need_class_names_or_logits(tmp_path, capsys):
    npz = tmp_path / "sparse.npz"
    np.savez(npz, embeddings=np.ones((4, 2), "f4"), labels=np.array([0, 1, 0, 99_999]))
    assert _error(capsys, "analyze", npz, "--out", tmp_path / "R", "--no-progress") == (
        f"embedlab: error: {npz}: labels reach class 99999 but there are only 4 examples; labels must be class "
        f"indices 0 .. C-1 (for classes without examples, give 'classes' names or 'logits')")
    assert not (tmp_path / "R").exists()


def test_a_header_asking_for_a_model_larger_than_its_weights_is_refused_before_building_it(tmp_path, capsys):
    meta = _meta()
    ckpt = _checkpoint(tmp_path / "m.safetensors", meta)
    meta["model"]["options"]["width"] = 10**6  # the model a 10**6-channel header describes would not fit in memory
    data = ckpt.read_bytes()
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(ckpt)), str(tmp_path / "wide.safetensors"),
              metadata={"embedlab": json.dumps({"format": "embedlab.checkpoint", "format_version": 1, **meta})})
    line = _error(capsys, "analyze", tmp_path / "wide.safetensors", "--out", tmp_path / "R", "--device", "cpu",
                  "--no-progress")
    assert line.startswith(f"embedlab: error: checkpoint {tmp_path / 'wide.safetensors'} does not match its model "
                           f"'cnn-gap': Error(s) in loading state_dict") and "1000000" in line
    assert ckpt.read_bytes() == data


# ============================================================================ 2. spec names stay under --out
@pytest.mark.parametrize("name,folder", [("../../escaped", "_.._escaped"), ("/tmp/x", "_tmp_x"), ("..", "model"),
                                         (".", "model"), ("a\\b\nc", "a_b_c"), (".hidden", "hidden")])
def test_a_source_name_becomes_one_safe_folder_under_out(tmp_path, name, folder):
    import dataclasses

    from embedlab.analyses.runner import analyze_source, open_source

    out = tmp_path / "deep" / "out"
    src = dataclasses.replace(open_source(_npz(tmp_path / "emb.npz")), name=name)
    res = analyze_source(src, out, analyses=["knn"], progress=False)
    assert res == out / folder and (res / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "emb.npz"]
    assert [p.name for p in out.iterdir()] == [folder]
    assert json.loads((res / "results.json").read_text())["model"]["name"] == name  # the name shown stays


def test_a_spec_name_with_a_path_writes_under_out(tmp_path, capsys):
    spec = {"name": "../../escaped", "kind": "torchvision", "arch": "resnet18", "dataset": "digits"}
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "s.json").write_text(json.dumps(spec))
    out = tmp_path / "a" / "b" / "out"
    assert main(["analyze", str(tmp_path / "a" / "b" / "s.json"), "--out", str(out), "--analyses", "accuracy",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert (out / "_.._escaped" / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "cache"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


# ============================================================================ 3. code runs only with --trust-code
def test_specs_that_run_code_need_trust_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    spec = {"name": "evil", "kind": "factory", "arch": "os:system", "factory_kwargs": {"command": f"touch {marker}"},
            "dataset": "digits"}
    (tmp_path / "evil.json").write_text(json.dumps(spec))
    args = ["analyze", tmp_path / "evil.json", "--out", tmp_path / "R", "--device", "cpu", "--no-progress"]
    assert _error(capsys, *args) == (
        f"embedlab: error: model spec {tmp_path / 'evil.json'}: kind 'factory' imports and calls the Python function "
        f"'os:system'; refusing without --trust-code (pass it only for code you trust)")
    assert not marker.exists()
    ts = {"name": "ts", "kind": "torchscript", "weights": "m.pt", "dataset": "digits", "embedding": "method:f"}
    (tmp_path / "ts.json").write_text(json.dumps(ts))
    assert _error(capsys, "analyze", tmp_path / "ts.json", "--out", tmp_path / "R", "--no-progress") == (
        f"embedlab: error: model spec {tmp_path / 'ts.json'}: kind 'torchscript' runs the TorchScript program in "
        f"'m.pt'; refusing without --trust-code (pass it only for code you trust)")
    # with the flag the code is trusted, and runs: the payload was live
    assert _error(capsys, *args, "--trust-code") == (
        "embedlab: error: factory 'os:system' returned int, not an nn.Module")
    assert marker.exists() and not (tmp_path / "R").exists()


def test_analyze_help_names_trust_code(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "--trust-code" in capsys.readouterr().out


# ============================================================================ 8. edited checkpoint metadata
@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(config=[1, 2]), "metadata 'config' must be an object, got '[1, 2]'"),
    (lambda m: m.update(model="cnn-gap"), "metadata 'model' must be an object, got 'cnn-gap'"),
    (lambda m: m.pop("dataset"), "metadata 'dataset' must be an object with a dataset name, got 'None'"),
    (lambda m: m["model"]["options"].update(zzz=3),
     "cannot build model 'cnn-gap' with options {'width': 4, 'zzz': 3}: cnn_gap() got an unexpected keyword "
     "argument 'zzz'"),
    (lambda m: m["model"]["options"].update(width="x"), "model 'cnn-gap' option width: expected int, got 'x'"),
    (lambda m: m["model"].update(num_classes="10"),
     "metadata model.num_classes must be an integer in [1, 100000], got '10'"),
    (lambda m: m["model"].update(input_shape=[1, "x"]),
     "metadata model.input_shape must be 1 to 4 sizes in [1, 65536], got \"[1, 'x']\""),
    (lambda m: m["model"].update(mean="abc"), "metadata model.mean must be null or a list of numbers, got 'abc'"),
    (lambda m: m["config"].update(dataset_options=[1]), "metadata config.dataset_options must be an object, got '[1]'"),
    (lambda m: m["dataset"].update(label_noise=3), "metadata dataset.label_noise must be null or an object, got '3'"),
])
def test_edited_checkpoint_metadata_is_one_line(tmp_path, capsys, change, message):
    meta = _meta()
    change(meta)
    ckpt = _checkpoint(tmp_path / "m.safetensors", meta)
    assert _error(capsys, "analyze", ckpt, "--out", tmp_path / "R", "--device", "cpu", "--no-progress") == (
        f"embedlab: error: checkpoint {ckpt}: {message}")
    assert not (tmp_path / "R").exists()


# ============================================================================ 9. malformed .npz inputs
@pytest.mark.parametrize("arrays,message", [
    ({"embeddings": np.zeros((0, 4)), "labels": np.zeros(0, int)},
     "embeddings hold no examples (0 rows); nothing to analyse"),
    ({"embeddings": np.zeros((30, 4)), "labels": (np.arange(30) % 3)[:, None]},
     "labels must be 1-D (N,) class indices, got shape (30, 1)"),
    ({"embeddings": np.full((30, 4), "a"), "labels": np.arange(30) % 3},
     "embeddings must be real numbers, got dtype <U1"),
    ({"embeddings": np.ones((30, 4)) + 1j, "labels": np.arange(30) % 3},
     "embeddings must be real numbers, got dtype complex128"),
    ({"train_embeddings": np.ones((30, 4)), "train_labels": np.arange(30) % 3,
      "test_embeddings": np.ones((30, 3)), "test_labels": np.arange(30) % 3},
     "the splits' embeddings differ in width (train 4, test 3); every split must come from the same model"),
    ({"embeddings": np.ones((30, 4)), "labels": np.arange(30) % 3 - 1}, "labels must be class indices >= 0, got -1"),
    ({"embeddings": np.ones((30, 4)), "labels": np.arange(30) % 3 + 0.5},
     "labels must be whole-number class indices, got non-integer values such as 0.5"),
    ({"embeddings": np.ones((30, 4)), "labels": np.array(["a", "b", "c"] * 10)},
     "labels must be integer class indices, got dtype <U1"),
    ({"embeddings": np.ones((30, 0)), "labels": np.arange(30) % 3},
     "embeddings must be 2-D (N, d) with d >= 1, got shape (30, 0)"),
    ({"embeddings": np.ones((3, 4)), "labels": np.arange(3), "logits": np.eye(3)},
     "analysis 'align_uniform' cannot run on this input: alignment needs at least one same-class pair, but no class "
     "in labels has >= 2 examples (leave it out with --analyses)"),
])
def test_malformed_arrays_are_one_line(tmp_path, capsys, arrays, message):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    assert _error(capsys, "analyze", npz, "--out", tmp_path / "R", "--analyses", "accuracy,align_uniform",
                  "--no-progress") == f"embedlab: error: {npz}: {message}"
    assert not (tmp_path / "R").exists()


def test_whole_number_float_labels_are_read_as_classes(tmp_path, capsys):
    npz = _npz(tmp_path / "f.npz", test_labels=(np.arange(30) % 3).astype(float))
    assert main(["analyze", str(npz), "--out", str(tmp_path / "R"), "--analyses", "accuracy", "--no-progress"]) == 0
    assert json.loads((tmp_path / "R" / "f" / "results.json").read_text())["dataset"]["classes"] == ["0", "1", "2"]


# ============================================================================ 10. hand-edited results.json
@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    assert main(["analyze", str(_npz(root / "emb.npz")), "--out", str(root / "res"), "--analyses",
                 "knn,calibration", "--no-progress"]) == 0
    return root / "res" / "emb" / "results.json"


def test_deeply_nested_results_json_is_one_line(results, tmp_path, capsys):
    res = tmp_path / "m"
    res.mkdir()
    (res / "arrays.npz").write_bytes((results.parent / "arrays.npz").read_bytes())
    (res / "results.json").write_text("[" * 200_000 + "]" * 200_000)
    assert _error(capsys, "report", res, "-o", tmp_path / "r.html") == (
        f"embedlab: error: invalid JSON in {res / 'results.json'}: nested too deeply to read")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("analysis,data", [("robustness", "abc"), ("ood", "abc"),
                                           ("robustness", {"pgd": {"eps": [1, 2], "accuracy": ["a", "b"]}}),
                                           ("calibration", {"reliability": {"count": [1], "confidence": ["x"],
                                                                            "accuracy": [0.5], "lower": [0],
                                                                            "upper": [1]}})])
def test_string_plot_data_in_results_json_is_one_line(results, tmp_path, capsys, analysis, data):
    res = tmp_path / "m"
    res.mkdir()
    (res / "arrays.npz").write_bytes((results.parent / "arrays.npz").read_bytes())
    edited = json.loads(results.read_text())
    edited["plots"][analysis] = data
    (res / "results.json").write_text(json.dumps(edited))
    line = _error(capsys, "report", res, "-o", tmp_path / "r.html", "--umap-epochs", "5", "--max-points", "50")
    assert line.startswith(f"embedlab: error: malformed {analysis!r} plot data in {res / 'results.json'}: ")
    assert not (tmp_path / "r.html").exists()


# ============================================================================ 11, 12, 14, 15
def test_analyze_with_an_unknown_device_is_one_line(tmp_path, capsys):
    assert _error(capsys, "analyze", _npz(tmp_path / "e.npz"), "--out", tmp_path / "R", "--device", "tpu") == (
        "embedlab: error: device must be auto, cpu or cuda[:N], got 'tpu'")
    assert not (tmp_path / "R").exists()


def test_report_refuses_targets_that_are_not_regular_files(results, tmp_path, capsys):
    res = results.parent
    fifo, link, target = tmp_path / "fifo", tmp_path / "link.html", tmp_path / "target.html"
    os.mkfifo(fifo)
    target.write_text("not mine")
    link.symlink_to(target)
    for out in (fifo, link):
        assert _error(capsys, "report", res, "-o", out, "--force") == (
            f"embedlab: error: {out} exists and is not a regular file; -o writes a new file there only in place of a "
            f"regular file (with --force)")
    # a device node (never with --force here: an older embedlab run as root would have replaced it)
    assert _error(capsys, "report", res, "-o", "/dev/null") == (
        "embedlab: error: /dev/null exists and is not a regular file; -o writes a new file there only in place of a "
        "regular file (with --force)")
    assert fifo.is_fifo() and link.is_symlink() and target.read_text() == "not mine"


def test_a_failed_temporary_file_is_reported_under_the_users_path(results, tmp_path, capsys, monkeypatch):
    import errno

    import embedlab.io

    def read_only(prefix="", suffix="", dir=None):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}gr0qmqpw{suffix}"))

    monkeypatch.setattr(embedlab.io.tempfile, "mkstemp", read_only)
    out = tmp_path / "x.md"
    assert _error(capsys, "report", results.parent, "-o", out, "--format", "md") == (
        f"embedlab: error: {out}: Read-only file system")


def test_existing_training_state_alone_is_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_state.pt").write_bytes(b"a state")
    assert _error(capsys, "train", "--out", tmp_path / "run", "--epochs", "1", "--no-progress") == (
        f"embedlab: error: {tmp_path / 'run' / 'train_state.pt'} already exists; choose another --out, pass --resume "
        f"to continue it or --force to overwrite")


# ============================================================================ 13. `analyze .` inside a run
def test_analyze_dot_inside_a_run_directory_is_named_after_it(tmp_path, capsys, monkeypatch):
    run = tmp_path / "myrun"
    run.mkdir()
    _checkpoint(run / "model.safetensors")
    monkeypatch.chdir(run)
    out = tmp_path / "res"
    assert main(["analyze", ".", "--out", str(out), "--analyses", "accuracy", "--device", "cpu", "--cache-dir",
                 str(tmp_path / "cache"), "--no-progress"]) == 0
    assert [p.name for p in out.iterdir()] == ["myrun"] and (out / "myrun" / "results.json").is_file()


# ============================================================================ fuzz: success or one line, status 2
def _status_is_success_or_one_line(capsys, argv) -> None:
    rc, err = _outcome(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 0 or (rc == 2 and len(lines) == 1 and lines[0].startswith("embedlab: error: ")), (rc, err)


_values = st.one_of(st.integers(-3, 3), st.sampled_from([10**9, -10**9, 0.5, float("nan")]))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(n=st.integers(0, 6), d=st.integers(0, 3), label=_values, kind=st.sampled_from("fiucUb"),
       lab_kind=st.sampled_from("fiUb"), with_logits=st.booleans(), width=st.integers(0, 4),
       lab_ndim=st.integers(0, 2))
def test_fuzz_generated_arrays_files(tmp_path_factory, capsys, n, d, label, kind, lab_kind, with_logits, width,
                                     lab_ndim):
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(n * 7 + d)
    emb = rng.normal(size=(n, d))
    emb = {"f": emb, "i": emb.astype(int), "u": np.abs(emb).astype(np.uint8), "c": emb + 1j,
           "U": emb.astype(str), "b": emb > 0}[kind]
    labels = np.arange(n) % 2
    if n:
        labels = labels.astype(float if not float(label).is_integer() else int)
        labels[-1] = label
    labels = {"f": labels.astype(float), "i": labels, "U": labels.astype(str), "b": labels > 0}[lab_kind]
    labels = labels.reshape((n,) + (1,) * (lab_ndim - 1)) if lab_ndim else (
        np.asarray(labels.reshape(-1)[0]) if labels.size else np.zeros((), labels.dtype))
    arrays = {"embeddings": emb, "labels": labels}
    if with_logits:
        arrays["logits"] = rng.normal(size=(n, width))
    np.savez(root / "f.npz", **arrays)
    _status_is_success_or_one_line(capsys, ["analyze", root / "f.npz", "--out", root / "R", "--analyses",
                                            "accuracy,knn,align_uniform", "--no-progress"])


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from([("model",), ("model", "name"), ("model", "num_classes"), ("model", "input_shape"),
                             ("model", "options"), ("model", "options", "width"), ("model", "mean"), ("dataset",),
                             ("dataset", "name"), ("dataset", "label_noise"), ("config",),
                             ("config", "dataset_options"), ("config", "data_root"), ("format_version",)]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.text(max_size=5),
                       st.lists(st.integers(-1, 5), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2)))
def test_fuzz_generated_checkpoint_headers(tmp_path_factory, capsys, path, value):
    root = tmp_path_factory.mktemp("fuzz")
    meta = _meta()
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    ckpt = _checkpoint(root / "m.safetensors", meta)
    _status_is_success_or_one_line(capsys, ["analyze", ckpt, "--out", root / "R", "--analyses", "accuracy",
                                            "--device", "cpu", "--cache-dir", root / "cache", "--no-progress"])


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(["model", "dataset", "metrics", "plots", "skipped", "arrays", "settings"]),
       sub=st.one_of(st.none(), st.sampled_from(["classes", "knn_accuracy", "calibration", "name", "num_examples"])),
       value=st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.text(max_size=5),
                       st.lists(st.one_of(st.integers(-1, 5), st.text(max_size=2)), max_size=4),
                       st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=2)),
                                       max_size=2)))
def test_fuzz_generated_results_files(results, tmp_path_factory, capsys, key, sub, value):
    root = tmp_path_factory.mktemp("fuzz")
    edited = copy.deepcopy(json.loads(results.read_text()))
    if sub is None or not isinstance(edited.get(key), dict):
        edited[key] = value
    else:
        edited[key][sub] = value
    (root / "m").mkdir()
    (root / "m" / "arrays.npz").write_bytes((results.parent / "arrays.npz").read_bytes())
    (root / "m" / "results.json").write_text(json.dumps(edited))
    _status_is_success_or_one_line(capsys, ["report", root / "m", "-o", root / "r.md", "--format", "md"])


# ============================================================================ 14. unwritable outputs, checked first
def test_unwritable_outputs_fail_before_the_slow_work(tmp_path, capsys, monkeypatch):
    """An --out / -o / --figures that cannot be written (here: under a regular file) is one line naming the user's
    path, before any model is opened, any epoch trained or any UMAP computed."""
    import embedlab.analyses.runner
    import embedlab.reports.html
    import embedlab.trainers

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    ckpt = _checkpoint(tmp_path / "run" / "model.safetensors")
    too_late = lambda *a, **k: pytest.fail("the slow work started before the output was checked")  # noqa: E731
    monkeypatch.setattr(embedlab.analyses.runner, "open_source", too_late)
    monkeypatch.setattr(embedlab.reports.html, "render_report", too_late)
    monkeypatch.setattr(embedlab.trainers, "train", too_late)

    err = _error(capsys, "analyze", ckpt, "--out", blocker / "res", "--device", "cpu", "--no-progress")
    assert err == f"embedlab: error: {blocker / 'res'}: Not a directory"
    err = _error(capsys, "train", "--dataset", "digits", "--epochs", "1", "--out", blocker / "run", "--no-progress")
    assert err == f"embedlab: error: {blocker / 'run'}: Not a directory"
    res = tmp_path / "res"
    np.savez(tmp_path / "z.npz", embeddings=np.eye(4, dtype=np.float32), labels=np.array([0, 1, 0, 1]))
    monkeypatch.undo()
    assert main(["analyze", str(tmp_path / "z.npz"), "--out", str(res), "--analyses", "align_uniform",
                 "--no-progress"]) == 0
    monkeypatch.setattr(embedlab.reports.html, "render_report", too_late)
    err = _error(capsys, "report", res, "-o", blocker / "r.html")
    assert err == f"embedlab: error: {blocker / 'r.html'}: Not a directory"
    err = _error(capsys, "report", res, "-o", tmp_path / "r.html", "--figures", blocker / "figs")
    assert err == f"embedlab: error: {blocker / 'figs'}: Not a directory"


# ============================================================================ 6. results.json and arrays.npz as one unit
def test_results_beside_arrays_of_another_analysis_are_refused(tmp_path, capsys):
    """A failure between replacing arrays.npz and results.json (or a hand copy) leaves one model's results beside
    another's arrays: the report refuses the pair with one line instead of mixing them."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", embeddings=rng.normal(size=(20, 4)).astype(np.float32),
                 labels=np.arange(20) % 2)
        assert main(["analyze", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / "res"), "--analyses",
                     "align_uniform", "--no-progress"]) == 0
    assert main(["report", str(tmp_path / "res"), "-o", str(tmp_path / "ok.md"), "--format", "md"]) == 0
    (tmp_path / "res" / "a" / "arrays.npz").write_bytes((tmp_path / "res" / "b" / "arrays.npz").read_bytes())
    err = _error(capsys, "report", tmp_path / "res", "-o", tmp_path / "r.md", "--format", "md")
    assert "does not belong to" in err and str(tmp_path / "res" / "a" / "arrays.npz") in err


# ============================================================================ 7. two analyses writing one folder
def test_a_second_analyze_of_the_same_results_folder_fails_at_once(tmp_path, capsys):
    """While one process writes OUT/<name> (holding its lock), another `analyze` of a model with that name into the
    same --out fails with one line instead of silently replacing the first's results; afterwards it runs."""
    import fcntl

    np.savez(tmp_path / "m.npz", embeddings=np.eye(6, dtype=np.float32), labels=np.arange(6) % 2)
    (tmp_path / "res").mkdir()
    with open(tmp_path / "res" / ".m.lock", "a+") as fh:  # what a running `analyze` of "m" holds
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = _error(capsys, "analyze", tmp_path / "m.npz", "--out", tmp_path / "res", "--analyses", "align_uniform",
                     "--no-progress")
        assert "another embedlab process is writing" in err and str(tmp_path / "res" / "m") in err
        assert not (tmp_path / "res" / "m").exists()
    (tmp_path / "res" / ".m.lock").unlink()  # as its holder does when it is done
    assert main(["analyze", str(tmp_path / "m.npz"), "--out", str(tmp_path / "res"), "--analyses", "align_uniform",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["m"]  # no lock file left behind


def test_concurrent_analyses_of_two_models_with_one_name_never_both_succeed(tmp_path):
    """The issue's race, for real: two processes analyse different arrays named "m" into one --out at once. Either
    one fails with one line (it met the other's lock) or the second saw the first's finished results of another
    model and refused them; never do both exit 0 with the first's results silently replaced."""
    rng = np.random.default_rng(1)
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        np.savez(tmp_path / d / "m.npz", embeddings=rng.normal(size=(3000, 64)).astype(np.float32),
                 labels=np.arange(3000) % 10)
    procs = [subprocess.Popen([sys.executable, "-m", "embedlab", "analyze", str(tmp_path / d / "m.npz"), "--out",
                               str(tmp_path / "res"), "--analyses", "align_uniform,clustering", "--no-progress"],
                              stderr=subprocess.PIPE, text=True) for d in ("x", "y")]
    codes, errs = zip(*[(p.wait(timeout=600), p.stderr.read()) for p in procs])
    assert sorted(codes) == [0, 2], (codes, errs)
    err = errs[codes.index(2)].strip().splitlines()
    assert len(err) == 1 and ("another embedlab process" in err[0] or "results of another model" in err[0]), err


# ============================================================================ 16. tiny embeddings, kNN k beyond the bank
@pytest.mark.parametrize("scale", [1e-13, 1e-20, 1e-30, 1e15])
def test_cosine_metrics_do_not_change_with_the_embeddings_scale(scale):
    """Cosine metrics are invariant to a positive rescaling (RELIABILITY §5), also below ||z|| = 1e-12 where a
    floored normalisation (F.normalize's eps) leaves vectors short of unit length."""
    from embedlab.metrics.classification import knn_accuracy
    from embedlab.metrics.clustering import silhouette_cosine
    from embedlab.metrics.geometry import alignment, uniformity
    from embedlab.metrics.ood import knn_score

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    z = torch.randn(60, 8, generator=g) + 2 * torch.eye(8)[y]
    tiny = z * scale
    assert alignment(tiny, y) == pytest.approx(alignment(z, y), rel=1e-6)
    assert uniformity(tiny) == pytest.approx(uniformity(z), rel=1e-6)
    assert silhouette_cosine(tiny, y) == pytest.approx(silhouette_cosine(z, y), rel=1e-6)
    assert knn_accuracy(tiny[:40], y[:40], tiny[40:], y[40:], 3, k=5) == knn_accuracy(z[:40], y[:40], z[40:], y[40:], 3,
                                                                                        k=5)
    assert torch.allclose(knn_score(tiny[:40], tiny[40:], k=5), knn_score(z[:40], z[40:], k=5), atol=1e-6)


def test_knn_k_larger_than_the_bank_is_refused_when_given(tmp_path, capsys):
    """`--opt knn.k=K` beyond the training embeddings is one line naming the setting; the default k=20 is lowered to
    the bank's size (and recorded) so that `--analyses all` still runs on a small training split."""
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    z = rng.normal(size=(12, 4)).astype(np.float32)
    np.savez(tmp_path / "s.npz", train_embeddings=z, train_labels=y, test_embeddings=z, test_labels=y)
    err = _error(capsys, "analyze", tmp_path / "s.npz", "--out", tmp_path / "r", "--analyses", "knn", "--opt",
                 "knn.k=50", "--no-progress")
    assert "--opt knn" in err and "k=50" in err and "12 train embeddings" in err
    assert main(["analyze", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r"), "--analyses", "knn",
                 "--no-progress"]) == 0
    entry = json.loads((tmp_path / "r" / "s" / "results.json").read_text())["metrics"]["knn_accuracy"]
    assert entry["settings"]["k"] == 12 and entry["settings"]["k_requested"] == 20


@pytest.mark.parametrize("opt, message", [
    ("knn.k=0", "--opt knn option k: must be >= 1, got 0"),
    ("knn.temperature=-1", "--opt knn option temperature: must be > 0, got -1"),
    ("calibration.n_bins=0", "--opt calibration option n_bins: must be >= 1 and <= 100000, got 0"),
    ("robustness.max_examples=0", "--opt robustness option max_examples: must be >= 1, got 0"),
    ("ood.react_percentile=101", "--opt ood option react_percentile: must be > 0 and <= 100, got 101"),
    ("ood.vim_dim=0", "--opt ood option vim_dim: must be >= 1, got 0"),
    ("clustering.probe_C=0", "--opt clustering option probe_C: must be > 0, got 0"),
])
def test_out_of_range_settings_fail_before_the_model_is_opened(tmp_path, capsys, monkeypatch, opt, message):
    """Each analysis declares its settings' ranges (Annotated[int, Bound(...)]); a value outside is one line naming
    the setting, before any model is loaded or embedding extracted."""
    import embedlab.analyses.runner

    monkeypatch.setattr(embedlab.analyses.runner, "open_source",
                        lambda *a, **k: pytest.fail("opened the model before checking the settings"))
    analysis = opt.split(".")[0]
    err = _error(capsys, "analyze", tmp_path / "any.safetensors", "--out", tmp_path / "r", "--analyses", analysis,
                 "--opt", opt, "--no-progress")
    assert err == f"embedlab: error: {message}"
    assert not (tmp_path / "r").exists()
