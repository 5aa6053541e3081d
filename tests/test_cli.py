"""The command line end to end: train → analyze → report on digits, plus one-line errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedlab.cli import main


def run(*argv: str) -> int:
    return main(list(argv))


def test_list_methods_json(capsys):
    assert run("list", "methods", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"erm", "mixup", "manifold_mixup", "multimix", "dense_multimix"} <= names
    mm = next(r for r in rows if r["name"] == "multimix")
    assert mm["options"]["n"] == 1000 and mm["options"]["p"] == 0.5 and mm["space"] == "embedding"


@pytest.mark.parametrize("kind", ["models", "datasets", "analyses", "methods"])
def test_list_plain(kind, capsys):
    assert run("list", kind) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 4


@pytest.mark.slow
def test_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        (["train", "--out", str(tmp_path / "r"), "--method", "mixpu"], r"unknown method 'mixpu' \(did you mean 'mixup'\?\)"),
        (["train", "--out", str(tmp_path / "r"), "--epochs", "0"], r"argument --epochs: expected a positive integer, got '0'"),
        (["train", "--out", str(tmp_path / "r"), "--dataset", "cifar10", "--data-root", str(tmp_path)],
         r"cifar10 not found under"),
        (["train", "--out", str(tmp_path / "r"), "-O", "n"], r"expected key=value, got 'n'"),
        (["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "res")], r"checkpoint not found"),
        (["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")], str(tmp_path / "nope")),
    ]
    for argv, pattern in cases:
        proc = subprocess.run([sys.executable, "-m", "embedlab", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert re.search(pattern, lines[0]), lines[0]


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "embedlab", "--debug", "train", "--out", str(tmp_path), "--method", "x"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _cells(html: str) -> dict[tuple[str, str], float]:
    """(model, metric) → value from the report's summary table cells."""
    out = {}
    for row in re.findall(r"<tr[^>]*data-model=\"([^\"]+)\"[^>]*>(.*?)</tr>", html, flags=re.S):
        for metric, value in re.findall(r"data-metric=\"([^\"]+)\"[^>]*data-value=\"([^\"]+)\"", row[1]):
            out[(row[0], metric)] = float(value)
    return out


def test_train_analyze_report_end_to_end(tmp_path, capsys):
    runs, res, cache = tmp_path / "runs", tmp_path / "results", tmp_path / "cache"
    assert run("train", "--method", "erm", "--epochs", "3", "--seed", "1", "--out", str(runs / "erm"),
               "--no-progress") == 0
    assert run("train", "--dataset", "digits", "--method", "dense_multimix", "-O", "n=200", "--epochs", "3",
               "--seed", "1", "--out", str(runs / "dense_multimix"), "--no-progress") == 0
    meta = json.loads((runs / "dense_multimix" / "meta.json").read_text())
    assert meta["method"]["options"]["n"] == 200 and meta["model"]["name"] == "cnn-gap"
    assert len(meta["history"]) == 3 and meta["config"]["seed"] == 1 and "torch" in meta["versions"]
    assert len((runs / "erm" / "metrics.jsonl").read_text().splitlines()) == 3

    chosen = "accuracy,knn,align_uniform,calibration"
    assert run("analyze", str(runs / "erm"), str(runs / "dense_multimix"), "--out", str(res), "--analyses", chosen,
               "--cache-dir", str(cache), "--device", "cpu", "--no-progress") == 0
    cached = sorted(cache.glob("*/done.json"))
    assert len(cached) == 6  # train (kNN bank), val (temperature scaling) and test per model
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert run("analyze", str(runs / "erm"), "--out", str(res), "--analyses", chosen, "--cache-dir", str(cache),
               "--no-progress") == 0
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*/done.json"))] == stamps  # reused, not recomputed

    results = {d.name: json.loads((d / "results.json").read_text()) for d in res.iterdir()}
    assert set(results) == {"erm", "dense_multimix"}
    for r in results.values():
        assert {"accuracy", "knn_accuracy", "alignment", "uniformity", "ece"} <= set(r["metrics"])
        assert 0.5 < r["metrics"]["accuracy"]["value"] <= 1.0
        with np.load(res / r["model"]["name"] / "arrays.npz") as a:
            assert a["embeddings"].shape == (360, 128) and a["labels"].shape == (360,)

    report = tmp_path / "report.html"
    assert run("report", str(res), "-o", str(report)) == 0
    html = report.read_text()
    cells = _cells(html)
    for name, r in results.items():
        for metric, entry in r["metrics"].items():
            assert cells[(name, metric)] == pytest.approx(entry["value"], rel=1e-9)
        assert re.search(rf'<figure class="umap"[^>]*data-model="{name}"', html)
    assert "http://" not in html and "https://" not in html
    assert run("report", str(res), "-o", str(report)) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err
    md = tmp_path / "summary.md"
    assert run("report", str(res), "-o", str(md), "--format", "md") == 0
    assert md.read_text().count("\n|") >= 3


def test_retrain_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--epochs", "1", "--out", str(out), "--no-progress") == 0
    assert run("train", "--epochs", "1", "--out", str(out), "--no-progress") == 2
    assert "already exists" in capsys.readouterr().err
    assert run("train", "--epochs", "1", "--out", str(out), "--no-progress", "--force") == 0


def test_corrupted_cache_entry_is_rebuilt(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--epochs", "1", "--out", str(out), "--no-progress") == 0
    cache = tmp_path / "cache"
    assert run("analyze", str(out), "--out", str(tmp_path / "a"), "--cache-dir", str(cache), "--analyses", "accuracy",
               "--no-progress") == 0
    (entry,) = cache.glob("*/logits.npy")
    good = json.loads((tmp_path / "a" / "run" / "results.json").read_text())["metrics"]["accuracy"]["value"]
    entry.write_bytes(entry.read_bytes()[:100])
    assert run("analyze", str(out), "--out", str(tmp_path / "a"), "--cache-dir", str(cache), "--analyses", "accuracy",
               "--no-progress") == 0
    again = json.loads((tmp_path / "a" / "run" / "results.json").read_text())["metrics"]["accuracy"]["value"]
    assert again == good and entry.stat().st_size > 1000


def test_layers_import_one_way():
    """embedlab core never imports trainers/analyses/reports (except the CLI); reports never import analyses/trainers."""
    import ast

    root = Path(__file__).resolve().parents[1]
    forbidden = {"embedlab": {"trainers", "analyses", "reports"}, "trainers": {"analyses", "reports"},
                 "analyses": {"trainers", "reports"}, "reports": {"trainers", "analyses", "torch"}}
    for pkg, banned in forbidden.items():
        for f in (root / pkg).rglob("*.py"):
            if f.name == "cli.py" and pkg == "embedlab":
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for n in names:
                    assert n.split(".")[0] not in banned, f"{f.relative_to(root)} imports {n}"
