"""Lazy discovery of analyses (package modules and entry-point plug-ins), self-describing metric entries
(docs/RESULTS_FORMAT.md, schema version 2) and the layering of embedlab.metrics."""
from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import embedlab.analyses
import embedlab.metrics
from embedlab.analyses import ANALYSES, Output, metric, register_analysis
from embedlab.analyses.registry import NOT_ANALYSES
from embedlab.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_package_imports_no_analysis_and_listing_imports_them_all() -> None:
    got = json.loads(_run("""
        import json, sys
        import embedlab.analyses
        before = sorted(m for m in sys.modules if m.startswith("embedlab.analyses."))
        heavy = sorted(m for m in ("faiss", "sklearn", "scipy", "torchattacks") if m in sys.modules)
        from embedlab.analyses import ANALYSES, Inputs, Output, metric, register_analysis
        names = ANALYSES.names()
        after = sorted(m for m in sys.modules if m.startswith("embedlab.analyses."))
        print(json.dumps({"before": before, "heavy": heavy, "names": names, "after": after}))
    """))
    assert got["before"] == ["embedlab.analyses.registry"] and got["heavy"] == []
    modules = {f"embedlab.analyses.{m.name}" for m in pkgutil.iter_modules(embedlab.analyses.__path__)
               if m.name not in NOT_ANALYSES}
    assert modules <= set(got["after"]) and "embedlab.analyses.runner" not in got["after"]
    assert {"accuracy", "knn", "align_uniform", "embedding_mmlb", "calibration", "clustering", "ood", "ood_logits",
            "robustness"} <= set(got["names"])


def test_metric_modules_are_cheap_and_never_import_upper_layers() -> None:
    got = json.loads(_run("""
        import json, sys
        from embedlab.metrics.geometry import alignment
        import embedlab.metrics.classification, embedlab.metrics.calibration, embedlab.metrics.clustering
        import embedlab.metrics.ood, embedlab.metrics.convexity, embedlab.metrics.robustness
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("faiss", "sklearn", "scipy",
              "torchattacks") or m.startswith(("embedlab.analyses", "embedlab.trainers", "embedlab.reports")))))
    """))
    assert got == []
    for info in pkgutil.iter_modules(embedlab.metrics.__path__):
        tree = ast.parse((Path(embedlab.metrics.__path__[0]) / f"{info.name}.py").read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith(("embedlab.analyses", "embedlab.trainers", "embedlab.reports")), (info.name, n)


def test_entry_point_plugins_are_discovered_and_a_broken_one_only_warns(tmp_path: Path) -> None:
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent("""
        from embedlab.analyses import Output, metric, register_analysis

        @register_analysis("my_analysis", description="a user's plug-in", needs=("test",), title="Mine", note="n")
        def my_analysis(inp):
            return Output({"mine/score": metric(1.0, True, "my_analysis")})
    """))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('broken on import')\n")
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[embedlab.analyses]\nmine = my_plugin\nbroken = broken_plugin\n")
    got = json.loads(_run("""
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from embedlab.analyses import ANALYSES
            entry = ANALYSES.get("my_analysis")
            names = ANALYSES.names()
        out = entry.obj(None)
        print(json.dumps({"names": names, "section": entry.meta["section"], "metric": out.metrics["mine/score"],
                          "warnings": [str(w.message) for w in caught]}))
    """, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])))
    assert "my_analysis" in got["names"] and "accuracy" in got["names"]
    assert got["section"] == "my_analysis"
    assert got["metric"]["section"] == "my_analysis" and got["metric"]["column"] == "score"
    assert got["metric"]["key"] == {"metric": "mine/score"} and got["metric"]["table"] == ""
    assert any("'broken'" in w and "broken on import" in w for w in got["warnings"])


def test_registry_loader_runs_once_on_first_lookup() -> None:
    calls = []
    reg: Registry = Registry("thing", loader=lambda: calls.append(1) or reg.register("a")(object))
    assert calls == []
    assert "a" in reg and reg.names() == ["a"] and [e.name for e in reg] == ["a"] and reg.get("a").name == "a"
    assert calls == [1]


def test_metric_defaults_and_explicit_placement() -> None:
    ANALYSES.names()  # discovery done: "calibration" is registered with its section
    m = metric(0.5, False, "calibration", table="t", column="c", key={"metric": "x", "scaled": True}, n_bins=3)
    assert (m["section"], m["table"], m["column"], m["key"], m["settings"]) == (
        "calibration", "t", "c", {"metric": "x", "scaled": True}, {"n_bins": 3})
    out = Output({"a/b/c": metric(1.0, True, "knn"), "d": metric(2.0, None, "not-registered")})
    assert out.metrics["a/b/c"]["section"] == "overview" and out.metrics["a/b/c"]["column"] == "c"
    assert out.metrics["a/b/c"]["key"] == {"metric": "a/b/c"}
    assert out.metrics["d"]["section"] == "not-registered" and out.metrics["d"]["column"] == "d"
    with pytest.raises(TypeError, match="flat"):
        metric(1.0, True, "knn", key={"nested": {"no": 1}})


def test_sections_sharing_an_id_cannot_disagree() -> None:
    ANALYSES.names()
    with pytest.raises(ValueError, match="already has title 'Overview'"):
        register_analysis("__test_conflict", description="x", needs=("test",), section="overview", title="Other")


def test_results_json_is_schema_2_and_describes_itself(tmp_path: Path) -> None:
    from embedlab.analyses.runner import analyze_path

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 120), ("val", 90), ("test", 90)):
        y = rng.integers(0, 3, n)
        z = rng.normal(size=(n, 6)) + 3 * np.eye(3, 6)[y]
        arrays.update({f"{split}_embeddings": z.astype(np.float32), f"{split}_labels": y,
                       f"{split}_logits": (2 * z[:, :3]).astype(np.float32)})
    np.savez(tmp_path / "m.npz", **arrays)
    out = analyze_path(tmp_path / "m.npz", tmp_path / "out", analyses=["accuracy", "align_uniform", "calibration"],
                       progress=False)
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 2
    assert res["sections"] == {
        "overview": {"title": "Overview", "note": ""},
        "calibration": {"title": "Calibration",
                        "note": "Temperature T fitted by NLL on the validation split; every metric on the test split."}}
    m = res["metrics"]
    assert (m["accuracy"]["section"], m["accuracy"]["table"], m["accuracy"]["column"]) == ("overview", "", "accuracy")
    assert (m["ece_ts"]["table"], m["ece_ts"]["column"], m["ece_ts"]["key"]) == (
        "after temperature scaling", "ece", {"metric": "ece", "scaled": True})
    assert (m["temperature"]["table"], m["nll"]["table"]) == ("after temperature scaling", "before temperature scaling")
    assert all({"section", "table", "column", "key"} <= set(e) and e["section"] in res["sections"] for e in m.values())
    plots = res["plots"]
    assert plots["calibration"]["kind"] == "reliability"
    assert set(plots["calibration"]["diagrams"]) == {"before temperature scaling", "after temperature scaling"}
    assert plots["align_uniform"]["kind"] == "metric_scatter"
    assert (plots["align_uniform"]["x"], plots["align_uniform"]["y"]) == ("uniformity", "alignment")
