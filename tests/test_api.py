"""The Python API (embedlab.api): the README's example runs, arrays give the numbers `embedlab analyze` gives on the
same .npz, Results is read-only, nn.Modules and runs evaluate, and `import embedlab` loads nothing heavy."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import embedlab
from embedlab.errors import EmbedlabError

ROOT = Path(__file__).resolve().parents[1]
ARRAY_ANALYSES = "accuracy,knn,align_uniform,calibration,clustering"


def _digits_arrays() -> dict[str, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    z = (X @ rng.standard_normal((64, 16))).astype(np.float32)
    clf = LogisticRegression(max_iter=3000).fit(z[:900], y[:900])
    out = {}
    for name, s in (("train", slice(0, 900)), ("val", slice(900, 1200)), ("test", slice(1200, None))):
        out[name] = {"embeddings": z[s], "labels": y[s].astype(np.int64),
                     "logits": clf.decision_function(z[s]).astype(np.float32)}
    return out


def test_evaluate_arrays_equals_cli_analyze_on_the_same_npz(tmp_path: Path) -> None:
    from embedlab.cli import main

    splits = _digits_arrays()
    np.savez(tmp_path / "digits.npz", **{(k if s == "test" else f"{s}_{k}"): v
                                         for s, d in splits.items() for k, v in d.items()})
    assert main(["analyze", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "cli"), "--analyses",
                 ARRAY_ANALYSES, "--no-progress"]) == 0
    cli = json.loads((tmp_path / "cli" / "digits" / "results.json").read_text())["metrics"]

    res = embedlab.evaluate(**splits, analyses=ARRAY_ANALYSES, name="digits", out=tmp_path / "api")
    assert set(res.metrics) == set(cli) and len(cli) > 15
    for k, e in cli.items():
        assert res.metrics[k] == e["value"], k  # bit-identical: the same code on the same arrays
    # the test split alone, as embeddings=/labels=/logits=: the metrics that need no other split agree too
    alone = embedlab.evaluate(embeddings=splits["test"]["embeddings"], labels=splits["test"]["labels"],
                              logits=splits["test"]["logits"], analyses="accuracy,align_uniform")
    for k in ("accuracy", "alignment", "uniformity"):
        assert alone.metrics[k] == cli[k]["value"], k
    # torch tensors are accepted as they are
    import torch

    t = embedlab.evaluate(embeddings=torch.from_numpy(splits["test"]["embeddings"]),
                          labels=torch.from_numpy(splits["test"]["labels"]), analyses="align_uniform")
    assert t.metrics["alignment"] == cli["alignment"]["value"]


def test_results_is_read_only_and_tabular(tmp_path: Path) -> None:
    splits = _digits_arrays()
    res = embedlab.evaluate(**splits, analyses="accuracy,calibration")
    assert isinstance(res.metrics["accuracy"], float)
    with pytest.raises(TypeError):
        res.metrics["accuracy"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        res.path = tmp_path  # type: ignore[misc]
    with pytest.raises(TypeError):
        res.entries["accuracy"]["value"] = 2.0  # type: ignore[index]
    d = res.to_dict()
    d["metrics"]["accuracy"]["value"] = -1.0  # a copy: the object does not change
    assert res.metrics["accuracy"] != -1.0
    frame = res.to_frame()
    assert {"model", "metric", "value", "higher_is_better", "analysis"} <= set(frame.columns)
    assert len(frame) == len(res.metrics)
    assert frame.set_index("metric")["value"].to_dict() == dict(res.metrics)
    assert "accuracy=" in repr(res)
    # without out=, the results live in a temporary folder that goes with the object
    folder = res.path
    assert (folder / "results.json").is_file()
    del res, frame
    gc.collect()
    assert not folder.exists()


def test_evaluate_rejects_bad_calls_with_one_clear_error() -> None:
    splits = _digits_arrays()
    with pytest.raises(EmbedlabError, match="give a source"):
        embedlab.evaluate()
    with pytest.raises(EmbedlabError, match="not both"):
        embedlab.evaluate("x.npz", **splits)
    with pytest.raises(EmbedlabError, match="unknown keys"):
        embedlab.evaluate(test={"embeddings": splits["test"]["embeddings"], "labels": splits["test"]["labels"],
                                "class_names": ["a"]})
    with pytest.raises(EmbedlabError, match="labels are missing"):
        embedlab.evaluate(embeddings=splits["test"]["embeddings"])
    with pytest.raises(EmbedlabError, match="unknown analysis"):
        embedlab.evaluate(**splits, analyses="knn,nope")


def test_evaluate_a_plain_nn_module_on_a_dataset() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    res = embedlab.evaluate(net, dataset="digits", analyses="accuracy,align_uniform", name="mlp")
    assert res.name == "mlp" and 0.0 <= res.metrics["accuracy"] <= 1.0
    assert res.to_dict()["dataset"]["num_examples"] > 0
    with pytest.raises(EmbedlabError, match="dataset="):
        embedlab.evaluate(net)


@pytest.mark.slow
def test_readme_from_python_example_runs(tmp_path: Path) -> None:
    """The README's "From Python" code block, verbatim, in a fresh process and an empty folder."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "results" / "pca" / "results.json").is_file()
    assert (tmp_path / "runs" / "multimix" / "model.safetensors").is_file()
    knn, sil = (float(v) for v in proc.stdout.splitlines()[0].split())
    assert 0.5 < knn <= 1.0 and -1.0 <= sil <= 1.0


def test_import_embedlab_loads_no_layer_and_no_torch() -> None:
    code = ("import sys, embedlab\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'sklearn', 'faiss') "
            "or m.startswith(('embedlab.api', 'embedlab.analyses', 'embedlab.trainers', 'embedlab.reports'))]\n"
            "assert not bad, bad\n"
            "assert callable(embedlab.evaluate) and 'embedlab.api' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_train_returns_runs_and_the_cli_is_the_api(tmp_path: Path) -> None:
    runs = embedlab.train({"dataset": "digits", "epochs": 1, "batch_size": 256}, tmp_path / "r", seeds=[0, 1],
                          progress=False)
    assert [r.path.name for r in runs] == ["seed0", "seed1"]
    assert runs[0].checkpoint.is_file() and runs[1].config.seed == 1
    with pytest.raises(EmbedlabError, match="already exists"):
        embedlab.train({"dataset": "digits", "epochs": 1}, tmp_path / "r" / "seed0", progress=False)
    res = runs[0].evaluate(analyses="accuracy", out=tmp_path / "res")
    assert res.name == "seed0" and 0 <= res.metrics["accuracy"] <= 1
    # the command line imports the API and nothing else of embedlab's
    import ast

    tree = ast.parse((ROOT / "embedlab" / "cli.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("embedlab")} <= {"embedlab", "embedlab.errors", "embedlab.config",
                                                                  "embedlab.recipes"}


@pytest.mark.slow
def test_report_as_latex_and_paper_figures_from_the_api_and_the_cli(tmp_path: Path) -> None:
    from PIL import Image

    from embedlab.cli import main

    splits = _digits_arrays()
    a = embedlab.evaluate(**splits, analyses="accuracy,align_uniform,calibration", out=tmp_path / "res", name="a")
    tex = embedlab.report(a, tmp_path / "t.tex", format="tex")
    text = tex.read_text()
    assert "\\toprule" in text and "\\bottomrule" in text and f"{a.metrics['accuracy']:.4f}"[:5] in text
    with pytest.raises(EmbedlabError, match="already exists"):
        embedlab.report(a, tex, format="tex")
    assert main(["report", str(tmp_path / "res"), "-o", str(tmp_path / "r.html"), "--figures",
                 str(tmp_path / "figs"), "--umap-epochs", "20"]) == 0
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    pdfs = sorted((tmp_path / "figs").glob("*.pdf"))
    assert pngs and {p.stem for p in pngs} == {p.stem for p in pdfs}
    assert any("reliability" in p.stem for p in pngs) and any("umap" in p.stem for p in pngs)
    with Image.open(pngs[0]) as im:
        assert im.size[0] > 100
    assert pdfs[0].read_bytes()[:4] == b"%PDF"


@pytest.mark.slow
def test_a_new_analysis_is_one_file(tmp_path: Path) -> None:
    """A new analysis is one module (here a plug-in found through its entry point, as a module in analyses/ would
    be found in the package): evaluate runs it, results.json describes it and the report shows its section, table
    and figure, with no edit anywhere else."""
    plugin = tmp_path / "plug"
    plugin.mkdir()
    (plugin / "spread_analysis.py").write_text(textwrap.dedent('''
        from embedlab.analyses import Output, metric, register_analysis
        from embedlab.metrics.geometry import l2_normalize

        @register_analysis("spread", description="mean distance of normalised embeddings to their class mean",
                           needs=("test",), section="spread", title="Class spread", note="lower is tighter")
        def spread(inp, power: float = 1.0):
            z, y = l2_normalize(inp.t("test", "embeddings")), inp.t("test", "labels")
            per_class = {}
            for c in y.unique().tolist():
                zc = z[y == c]
                per_class[str(c)] = float(((zc - zc.mean(0)).norm(dim=1) ** power).mean())
            mean = sum(per_class.values()) / len(per_class)
            metrics = {"spread/mean": metric(mean, False, "spread", column="mean over classes", power=power)}
            metrics.update({f"spread/class/{c}": metric(v, False, "spread", table="per class", column=f"class {c}",
                                                        key={"class": c}) for c, v in per_class.items()})
            return Output(metrics, plots={"kind": "bars", "title": "Spread per class", "x_label": "class",
                                          "y_label": "spread", "bars": per_class})
    '''))
    info = plugin / "spread_analysis-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spread-analysis\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[embedlab.analyses]\nspread = spread_analysis\n")
    code = textwrap.dedent('''
        import json, sys, numpy as np, embedlab
        rng = np.random.default_rng(0)
        y = np.arange(60) % 3
        z = (rng.normal(size=(60, 8)) + 3 * np.eye(8)[y]).astype("float32")
        res = embedlab.evaluate(embeddings=z, labels=y, analyses="spread,align_uniform", out="res", name="toy")
        embedlab.report(res, "r.md", format="md")
        embedlab.report(res, "r.html")
        print(json.dumps({"metrics": dict(res.metrics), "sections": res.to_dict()["sections"]}))
    ''')
    env = {**os.environ, "PYTHONPATH": str(plugin), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["sections"]["spread"] == {"title": "Class spread", "note": "lower is tighter"}
    assert {"spread/mean", "spread/class/0", "spread/class/2"} <= set(got["metrics"])
    md = (tmp_path / "r.md").read_text()
    assert "Class spread" in md and "mean over classes" in md and "class 2" in md
    html = (tmp_path / "r.html").read_text()
    assert "Class spread" in html and "Spread per class" in html


def test_best_cells_are_marked_only_among_models_on_the_same_data(tmp_path: Path) -> None:
    """Two models on one test set and a third on another (a different dataset): the third's higher accuracy is not
    "best" over the other two; within the first test set the better model is."""
    rng = np.random.default_rng(0)

    def arrays(n: int, classes: int, correct: float) -> dict[str, np.ndarray]:
        y = np.arange(n) % classes
        pred = np.where(rng.random(n) < correct, y, (y + 1) % classes)
        return {"embeddings": rng.normal(size=(n, 4)).astype(np.float32), "labels": y,
                "logits": 5 * np.eye(classes, dtype=np.float32)[pred]}

    for name, (n, c, acc) in {"a": (200, 4, 0.6), "b": (200, 4, 0.7), "other": (90, 3, 0.95)}.items():
        embedlab.evaluate(**arrays(n, c, acc), analyses="accuracy", out=tmp_path / "res", name=name)
    embedlab.report(tmp_path / "res", tmp_path / "r.md", format="md")
    rows = {line.split("|")[1].strip(): line for line in (tmp_path / "r.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ("a", "b", "other")}
    assert "**" in rows["b"] and "**" not in rows["a"] and "**" not in rows["other"], rows
