"""Tests for the report layer (reports/): loading results and studies, seed groups, tables, figures, HTML, Markdown."""
from __future__ import annotations

import base64
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedlab.errors import EmbedlabError
from embedlab.reports import load_report_inputs, load_results, render_markdown, render_report
from embedlab.reports.aggregate import group_results
from embedlab.reports.figures import confusion_counts, json_for_script, pool_reliability
from embedlab.reports.svg import confusion_heatmap, labelled_scatter, LabelledPoint, line_chart, png_bytes, Series
from embedlab.reports.tables import format_sig, format_stat
from embedlab.reports.aggregate import Stat
from embedlab.reports.umap_embed import knn_graph, umap_2d

CLASSES = ["cat", "dog", "bird", "fish"]
N_PER_CLASS = 40  # 4 classes -> 160 points per model
EVIL = "<script>alert(1)</script>"


def _reliability(rng: np.random.Generator, n_bins: int = 5) -> dict[str, list]:
    count = rng.integers(0, 40, n_bins).tolist()
    conf = [None if c == 0 else float((k + 0.5) / n_bins) for k, c in enumerate(count)]
    acc = [None if c == 0 else float(rng.uniform(0, 1)) for c in count]
    return {"lower": [k / n_bins for k in range(n_bins)], "upper": [(k + 1) / n_bins for k in range(n_bins)],
            "count": count, "confidence": conf, "accuracy": acc}


def write_results(
    root: Path,
    dirname: str,
    *,
    name: str | None = None,
    metrics: dict[str, tuple[float | None, bool | None]] | dict[str, dict[str, Any]],
    seed: int = 0,
    data_seed: int | None = None,
    method: str = "mixup",
    method_options: dict[str, Any] | None = None,
    n_per_class: int = N_PER_CLASS,
    classes: list[str] = CLASSES,
    history: bool = True,
    plots: bool = False,
    thumbnails: bool = False,
) -> Path:
    """Write ``root/dirname/{results.json,arrays.npz}`` with seeded Gaussian-blob embeddings; return the dir.

    ``metrics`` maps a name to ``(value, higher_is_better)`` (analysis = the name) or to a full metric entry.
    ``plots`` adds calibration / robustness / OOD plot data; ``thumbnails`` adds 8x8 RGB thumbnails for half the points.
    """
    rng = np.random.default_rng(seed if data_seed is None else data_seed)
    d = 16
    centers = rng.normal(size=(len(classes), d)) * 6
    labels = np.repeat(np.arange(len(classes)), n_per_class).astype(np.int64)
    emb = (centers[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)
    logits = (np.eye(len(classes))[labels] * 3 + rng.normal(size=(len(labels), len(classes)))).astype(np.float32)
    out = root / dirname
    out.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {"embeddings": emb, "labels": labels, "logits": logits}
    if thumbnails:
        idx = np.arange(0, len(labels), 2, dtype=np.int64)
        arrays["thumbnail_index"] = idx
        arrays["thumbnails"] = rng.integers(0, 256, size=(len(idx), 8, 8, 3), dtype=np.uint8)
    np.savez(out / "arrays.npz", **arrays)
    hist = [{"epoch": e, "train_loss": 2.0 / e, "val_accuracy": 1 - 0.5 / e, "val_loss": 1.5 / e} for e in range(1, 6)]
    entries = {}
    for key, v in metrics.items():
        if isinstance(v, dict):
            entries[key] = v
        else:
            entries[key] = {"value": v[0], "higher_is_better": v[1], "analysis": key, "settings": {}}
    plot_data: dict[str, Any] = {}
    if plots:
        plot_data["calibration"] = {"reliability": _reliability(rng), "reliability_ts": _reliability(rng)}
        plot_data["robustness"] = {
            "pgd_linf": {"eps": [0.0, 1.0, 2.0, 4.0], "accuracy": sorted(rng.uniform(0, 1, 4).tolist(), reverse=True),
                         "norm": "Linf", "eps_unit": "1/255"}}
        edges = np.linspace(-3, 3, 11).tolist()
        plot_data["ood"] = {"conventions": {"orientation": "every score: higher = more in-distribution"},
                            "skipped_scores": {}, "sets": {"gaussian": {
                                s: {"hist": {"edges": edges, "id": rng.integers(0, 30, 10).tolist(),
                                             "ood": rng.integers(0, 30, 10).tolist()},
                                    "roc": {"fpr": [0.0, 0.2, 0.5, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]}}
                                for s in ("msp", "energy")}}}
    results = {
        "schema_version": 1,
        "kind": "embedlab.analysis",
        "model": {
            "name": name or dirname,
            "source": f"runs/{dirname}/model.safetensors",
            "sha256": "ab" * 32,
            "meta": {
                "method": {"name": method, "options": method_options if method_options is not None else {"alpha": 0.4}},
                "model": {"name": "cnn-gap"}, "dataset": {"name": "blobs"},
                "config": {"epochs": 5, "seed": seed, "method": method, "device": "cpu"},
                "hardware": {"device": "cpu", "cpu_threads": 2}, "versions": {"torch": "2.14.1"},
                **({"history": hist} if history else {}),
            },
        },
        "dataset": {"name": "blobs", "split": "test", "num_examples": len(labels), "classes": classes},
        "metrics": entries,
        "plots": plot_data,
        "skipped": {},
        "arrays": "arrays.npz",
        "created_utc": "2026-11-22T04:00:00Z",
        "versions": {"embedlab": "0.1.0"},
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


# accuracy: higher better (best = b); alignment: lower better (best = c); ece: null direction; only_a: one model
METRICS = {
    "a": {"accuracy": (0.91234567, True), "alignment": (0.8, False), "ece": (0.05, None), "only_a": (3.0, True)},
    "b": {"accuracy": (0.97, True), "alignment": (0.6, False), "ece": (0.02, None)},
    "c": {"accuracy": (0.95, True), "alignment": (0.4123, False), "ece": (0.01, None)},
}


def ood_metric(value: float, set_name: str, score: str, key: str) -> dict[str, Any]:
    return {"value": value, "higher_is_better": key != "fpr95", "analysis": "ood",
            "settings": {"set": set_name, "score": score}}


@pytest.fixture()
def results_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for i, (name, metrics) in enumerate(METRICS.items()):
        write_results(root, name, metrics=metrics, seed=i, method=f"method_{name}")
    return root


@pytest.fixture()
def seeded_root(tmp_path: Path) -> Path:
    """Three seeds of "mm" (one lacking a metric), one run of "erm", with plots, OOD metrics and thumbnails."""
    root = tmp_path / "seeded"
    rng = np.random.default_rng(42)
    for s in range(3):
        metrics: dict[str, Any] = {
            "accuracy": {"value": float(rng.uniform(0.8, 0.99)), "higher_is_better": True, "analysis": "accuracy"},
            "uniformity": {"value": float(rng.uniform(-3, -1)), "higher_is_better": False, "analysis": "align_uniform"},
            "alignment": {"value": float(rng.uniform(0.2, 1)), "higher_is_better": False, "analysis": "align_uniform"},
            "ood/gaussian/energy/auroc": ood_metric(float(rng.uniform(0.5, 1)), "gaussian", "energy", "auroc"),
            "ood/gaussian/energy/fpr95": ood_metric(float(rng.uniform(0, 1)), "gaussian", "energy", "fpr95"),
        }
        if s < 2:
            metrics["ece"] = {"value": float(rng.uniform(0, 0.1)), "higher_is_better": False, "analysis": "calibration"}
        write_results(root, f"mm-seed{s}", metrics=metrics, seed=s, method="multimix", plots=True, thumbnails=True,
                      data_seed=s)
    write_results(root, "erm", metrics={
        "accuracy": {"value": 0.9, "higher_is_better": True, "analysis": "accuracy"},
        "uniformity": {"value": -2.0, "higher_is_better": False, "analysis": "align_uniform"},
        "alignment": {"value": 0.5, "higher_is_better": False, "analysis": "align_uniform"},
        "ood/gaussian/energy/auroc": ood_metric(0.7, "gaussian", "energy", "auroc"),
        "ood/gaussian/energy/fpr95": ood_metric(0.4, "gaussian", "energy", "fpr95"),
    }, seed=0, method="erm", method_options={}, plots=True, thumbnails=True, data_seed=7)
    return root


def write_study(folder: Path) -> Path:
    """A toy_depth.json in the layout of trainers/studies/toy_depth.py, with one tiny PNG figure."""
    folder.mkdir(parents=True, exist_ok=True)

    def mci(mean: float) -> dict[str, Any]:
        return {"mean": mean, "sem": 0.1, "ci95": [mean - 0.2, mean + 0.2], "n": 10}

    block = {"n": 10, "bayes_risk_pct": mci(20.0), "mmlb": mci(0.3),
             "excess_risk_pct": {"baseline": mci(1.65), "mixup_k1": mci(1.59)},
             "diff_to_baseline_pct": {"mixup_k1": {**mci(-0.06), "frac_better": 0.8}}}
    summary = {"n_datasets": 10, "units": "percentage points", "all": block,
               "by_mmlb_quartile": [{"quartile": q, "mmlb_range": [0.1 * q, 0.1 * q + 0.05], **block} for q in (1, 2, 3, 4)],
               "by_K": {"2": block, "3": block},
               "corr_mmlb_bayes_risk": {"pearson": 0.91, "pearson_p": 1e-4, "spearman": 0.88, "spearman_p": 2e-4, "n": 10}}
    img = np.zeros((4, 4, 3), np.uint8)
    img[:, :, 0] = 200
    (folder / "mmlb_vs_bayes_risk.png").write_bytes(png_bytes(img))
    data = {"study": "toy-depth (seed 002 §3)", "config": {"realisations_per_k": 10, "ks": [2, 3]}, "summary": summary,
            "figures": {"mmlb_vs_bayes_risk": "mmlb_vs_bayes_risk.png", "missing": "nope.png"}}
    path = folder / "toy_depth.json"
    path.write_text(json.dumps(data))
    return path


class ReportParser(HTMLParser):
    """Collect summary cells, per-section models, UMAP data blocks, row names and every URL-valued attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, Any]] = {}  # (model, metric) -> attrs + text
        self.section_models: dict[str, set[str]] = {}
        self.legends: dict[str, list[str]] = {}
        self.umap_data: dict[str, dict[str, Any]] = {}
        self.row_names: list[str] = []
        self.urls: list[str] = []
        self.scripts: list[dict[str, str]] = []
        self.meta_csp = ""
        self._section = ""
        self._row: str | None = None
        self._cell: dict[str, Any] | None = None
        self._fig: str | None = None
        self._legend_fig: str | None = None
        self._script: dict[str, str] | None = None
        self._rowname: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href", "xlink:href", "action", "poster", "data")]
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.meta_csp = a.get("content", "")
        if tag == "section":
            self._section = a.get("id", "")
            self.section_models.setdefault(self._section, set())
        for key in ("data-model",):
            if key in a:
                self.section_models.setdefault(self._section, set()).add(a[key])
        if "data-models" in a:
            self.section_models.setdefault(self._section, set()).update(x for x in a["data-models"].split(",") if x)
        if tag == "tr" and "summary" in a.get("class", "") or (tag == "tr" and self._section == "summary" and "data-model" in a):
            self._row = a.get("data-model")
        elif tag == "th" and self._row is not None and "model" in a.get("class", "").split():
            self._rowname = []
        elif tag == "td" and self._row is not None and "data-metric" in a:
            self._cell = {"class": a.get("class", "").split(), "value": a.get("data-value"), "std": a.get("data-std"),
                          "n": a.get("data-n"), "text": ""}
            self.cells[(self._row, a["data-metric"])] = self._cell
        elif tag == "figure" and "umap" in a.get("class", "").split():
            self._fig = a["data-model"]
            self.legends[self._fig] = []
        elif tag == "li" and self._fig is not None and "data-class" in a:
            self._legend_fig = self._fig
            self.legends[self._fig].append("")
        elif tag == "script":
            self._script = {"type": a.get("type", ""), "id": a.get("id", ""), "src": a.get("src", ""), "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "th" and self._rowname is not None:
            self.row_names.append("".join(self._rowname))
            self._rowname = None
        elif tag == "tr":
            self._row = None
        elif tag == "figure":
            self._fig = None
        elif tag == "li":
            self._legend_fig = None
        elif tag == "section":
            self._section = ""
        elif tag == "script" and self._script is not None:
            self.scripts.append(self._script)
            if self._script["type"] == "application/json" and self._script["id"].startswith("umap-"):
                data = json.loads(self._script["text"])
                self.umap_data[data["model"]] = data
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._rowname is not None:
            self._rowname.append(data)
        if self._legend_fig is not None:
            self.legends[self._legend_fig][-1] += data.strip()
        if self._script is not None:
            self._script["text"] += data


def parse(html: str) -> ReportParser:
    p = ReportParser()
    p.feed(html)
    p.close()
    return p


@pytest.fixture()
def rendered(results_root: Path, tmp_path: Path) -> tuple[str, ReportParser]:
    results = load_results([results_root])
    out = render_report(results, tmp_path / "out" / "report.html", umap_kwargs={"n_neighbors": 10})
    html = out.read_text(encoding="utf-8")
    return html, parse(html)


@pytest.fixture()
def seeded_html(seeded_root: Path, tmp_path: Path) -> tuple[str, ReportParser]:
    study = write_study(tmp_path / "study")
    inputs = load_report_inputs([seeded_root, study.parent])
    out = render_report(inputs.results, tmp_path / "seeded.html", umap_kwargs={"n_neighbors": 10, "n_epochs": 50},
                        studies=inputs.studies)
    html = out.read_text(encoding="utf-8")
    return html, parse(html)


# --------------------------------------------------------------------------------------------- load


def test_load_results_accepts_dir_file_and_parent(results_root: Path) -> None:
    from_parent = load_results([results_root])
    assert [m.name for m in from_parent] == ["a", "b", "c"]
    single = load_results([results_root / "b", results_root / "c" / "results.json"])
    assert [m.name for m in single] == ["b", "c"]
    m = single[0]
    assert m.embeddings.dtype == np.float32 and m.embeddings.shape == (4 * N_PER_CLASS, 16)
    assert m.labels.dtype == np.int64 and m.class_names == CLASSES
    assert m.path == results_root / "b" / "results.json"
    assert m.seed == 1 and m.thumbnails is None


def test_duplicate_names_are_disambiguated(tmp_path: Path) -> None:
    write_results(tmp_path, "seed0", name="mixup", metrics={"accuracy": (0.9, True)})
    write_results(tmp_path, "seed1", name="mixup", metrics={"accuracy": (0.8, True)})
    assert [m.name for m in load_results([tmp_path])] == ["mixup (seed0)", "mixup (seed1)"]


def test_load_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EmbedlabError, match=re.escape(str(missing))):
        load_results([missing])


def test_load_no_results_json(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(EmbedlabError, match=r"no results.json or study file \(toy_depth.json, confmix.json, benchmark.json\) found"):
        load_results([tmp_path / "empty"])


def test_load_bad_json_names_file(results_root: Path) -> None:
    bad = results_root / "b" / "results.json"
    bad.write_text("{not json")
    with pytest.raises(EmbedlabError, match=re.escape(str(bad))) as err:
        load_results([results_root])
    assert "\n" not in str(err.value)


def test_load_wrong_kind_and_schema(tmp_path: Path) -> None:
    d = write_results(tmp_path, "m", metrics={})
    data = json.loads((d / "results.json").read_text())
    (d / "results.json").write_text(json.dumps({**data, "kind": "something.else"}))
    with pytest.raises(EmbedlabError, match="kind"):
        load_results([d])
    (d / "results.json").write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(EmbedlabError, match="schema_version 99"):
        load_results([d])


def test_load_mismatched_lengths_names_file(tmp_path: Path) -> None:
    d = write_results(tmp_path, "m", metrics={})
    np.savez(d / "arrays.npz", embeddings=np.zeros((10, 4), np.float32), labels=np.zeros(9, np.int64))
    with pytest.raises(EmbedlabError, match=re.escape(str(d / "arrays.npz"))):
        load_results([d])


def test_load_missing_arrays_names_file(tmp_path: Path) -> None:
    d = write_results(tmp_path, "m", metrics={})
    (d / "arrays.npz").unlink()
    with pytest.raises(EmbedlabError, match=re.escape(str(d / "arrays.npz"))):
        load_results([d])


def test_load_refuses_pickled_arrays(tmp_path: Path) -> None:
    d = write_results(tmp_path, "m", metrics={})
    np.savez(d / "arrays.npz", embeddings=np.array([object()] * 3, dtype=object), labels=np.zeros(3, np.int64))
    with pytest.raises(EmbedlabError, match="arrays"):
        load_results([d])


def test_load_thumbnails_and_their_validation(tmp_path: Path) -> None:
    d = write_results(tmp_path, "m", metrics={}, thumbnails=True)
    m = load_results([d])[0]
    assert m.thumbnails is not None and m.thumbnails.shape == (2 * N_PER_CLASS, 8, 8, 3)
    assert m.thumbnail_index is not None and m.thumbnail_index.dtype == np.int64
    with np.load(d / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["thumbnail_index"] = arrays["thumbnail_index"] + 10_000
    np.savez(d / "arrays.npz", **arrays)
    with pytest.raises(EmbedlabError, match="thumbnail_index .* must index"):
        load_results([d])


def test_study_files_are_found_beside_results(results_root: Path, tmp_path: Path) -> None:
    study = write_study(results_root / "toy")  # a study folder among the results folders
    inputs = load_report_inputs([results_root])
    assert [m.name for m in inputs.results] == ["a", "b", "c"]
    assert [s.path for s in inputs.studies] == [study]
    s = inputs.studies[0]
    assert list(s.figures) == ["mmlb_vs_bayes_risk"]  # the missing figure is left out
    assert load_results([results_root]) and len(load_results([results_root])) == 3
    generic = tmp_path / "other.json"
    generic.write_text(json.dumps({"kind": "embedlab.study", "summary": {"x": 1.5}}))
    only = load_report_inputs([generic])
    assert only.results == [] and only.studies[0].summary == {"x": 1.5}
    with pytest.raises(EmbedlabError, match="no results.json"):
        load_results([generic])


# --------------------------------------------------------------------------------------------- seed groups


def test_group_results_by_everything_but_the_seed(tmp_path: Path) -> None:
    for s in range(3):
        write_results(tmp_path, f"mm-seed{s}", metrics={"accuracy": (0.9, True)}, seed=s, method="multimix")
    write_results(tmp_path, "mm-alpha", metrics={"accuracy": (0.9, True)}, seed=0, method="multimix",
                  method_options={"alpha": 2.0})
    write_results(tmp_path, "twin-a", name="twin", metrics={}, seed=5, method="erm")
    write_results(tmp_path, "twin-b", name="twin", metrics={}, seed=5, method="erm")
    groups = group_results(load_results([tmp_path]))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"mm", "mm-alpha", "twin (twin-a)", "twin (twin-b)"}
    assert by_name["mm"].seeds == [0, 1, 2] and by_name["mm"].first.name == "mm-seed0"
    assert by_name["mm-alpha"].n == 1 and by_name["twin (twin-a)"].n == 1  # same seed twice: not a seed group


def test_seed_group_without_a_common_name_is_named_by_method(tmp_path: Path) -> None:
    write_results(tmp_path, "first", metrics={}, seed=0, method="multimix")
    write_results(tmp_path, "second", metrics={}, seed=1, method="multimix")
    assert [g.name for g in group_results(load_results([tmp_path]))] == ["multimix"]


def test_mean_std_cells_equal_the_files(seeded_root: Path, seeded_html: tuple[str, ReportParser]) -> None:
    html, p = seeded_html
    files = sorted(seeded_root.glob("mm-seed*/results.json"))
    per_seed = [json.loads(f.read_text())["metrics"] for f in files]
    for key in ("accuracy", "uniformity", "alignment", "ece", "ood/gaussian/energy/auroc", "ood/gaussian/energy/fpr95"):
        vals = np.array([m[key]["value"] for m in per_seed if key in m])
        cell = p.cells[("mm", key)]
        assert float(cell["value"]) == pytest.approx(vals.mean(), rel=1e-12, abs=1e-15)
        assert float(cell["std"]) == pytest.approx(vals.std(ddof=1), rel=1e-12, abs=1e-15)
        assert int(cell["n"]) == len(vals)
        assert cell["text"].strip() == format_stat(Stat(float(vals.mean()), float(vals.std(ddof=1)), len(vals)))
        mean_text, std_text = cell["text"].split("\u00b1")
        assert float(mean_text) == pytest.approx(vals.mean(), rel=5e-4)
        assert float(std_text) == pytest.approx(vals.std(ddof=1), abs=10 ** -len(mean_text.strip().split(".")[1]))
    assert int(p.cells[("mm", "ece")]["n"]) == 2  # the third seed lacks ECE
    erm = json.loads((seeded_root / "erm" / "results.json").read_text())["metrics"]
    assert float(p.cells[("erm", "accuracy")]["value"]) == erm["accuracy"]["value"]
    assert p.cells[("erm", "accuracy")]["std"] is None and "\u00b1" not in p.cells[("erm", "accuracy")]["text"]
    # best per column by mean and direction
    mm_acc = float(p.cells[("mm", "accuracy")]["value"])
    assert ("best" in p.cells[("mm", "accuracy")]["class"]) == (mm_acc > 0.9)
    assert ("best" in p.cells[("erm", "accuracy")]["class"]) == (mm_acc < 0.9)
    mm_fpr = float(p.cells[("mm", "ood/gaussian/energy/fpr95")]["value"])
    assert ("best" in p.cells[("mm", "ood/gaussian/energy/fpr95")]["class"]) == (mm_fpr < 0.4)
    assert re.search(r'<th scope="col" class="num" title="number of seeds">n</th>', html)


def test_ood_tables_state_the_convention(seeded_html: tuple[str, ReportParser]) -> None:
    html, _ = seeded_html
    assert "higher score means in-distribution" in html and "FPR@95TPR" in html
    assert "OOD set gaussian \u00b7 AUROC" in html and "OOD set gaussian \u00b7 FPR@95TPR" in html
    assert re.search(r'data-metric="ood/gaussian/energy/fpr95"[^>]*>energy<span class="arrow"[^>]*>\u2193', html)


def test_every_model_appears_in_every_section_with_data(seeded_html: tuple[str, ReportParser]) -> None:
    html, p = seeded_html
    models = {"mm", "erm"}
    for section in ("summary", "embeddings", "align-uniform", "calibration", "robustness", "ood", "confusion",
                    "training", "runs", "provenance"):
        assert p.section_models.get(section, set()) >= models, section
    assert set(p.umap_data) == models
    assert "seed 0 shown (lowest of 3 seeds)" in html
    assert "bins pooled over 3 seeds" in html and "Counts summed over 3 seeds" in html
    assert 'id="ood-score"' in html and '<option value="energy" selected>' in html


def test_study_section(seeded_html: tuple[str, ReportParser]) -> None:
    html, p = seeded_html
    assert '<section id="studies">' in html and "Seed 002 studies" in html
    assert "toy-depth (seed 002 \u00a73)" in html
    assert "mixup_k1" in html and "1.590 [1.390, 1.790]" in html and "80 %" in html
    assert "Q4 [0.40, 0.45]" in html and "K = 3" in html
    figures = [u for u in p.urls if u.startswith("data:image/png;base64,")]
    assert any(base64.b64decode(u.split(",", 1)[1]).startswith(b"\x89PNG") for u in figures)


def test_confmix_study_section_escapes_and_tolerates_missing_fields(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    data = {"kind": "embedlab.study", "study": "confmix", "seeds": [0, 1], "half_life": 25.0, "warmup": 5,
            "config": {"dataset": "cifar10", "model": "small-cnn", "epochs": 50, "batch_size": 250,
                       "optimizer": "adam", "lr": 0.001, "dataset_options": {}},
            "rows": [{"variant": "baseline (ERM)", "test_accuracy_mean": 0.6, "test_accuracy_std": 0.01,
                      "change_over_baseline_mean": 0.0, "change_over_baseline_std": 0.0,
                      "per_seed": {"0": 0.59, "1": 0.61}},
                     {"variant": evil, "test_accuracy_mean": 0.62, "test_accuracy_std": 0.02,
                      "change_over_baseline_mean": 0.02, "change_over_baseline_std": 0.005,
                      "per_seed": {"0": 0.6}, "alpha_per_epoch": {"0": [[6, 0.2], [7, 0.5]], "1": [[6, 0.4], "x"]}}],
            "seconds": 3600.4}
    path = tmp_path / "confmix.json"
    path.write_text(json.dumps(data))
    inputs = load_report_inputs([tmp_path])
    html = render_report([], tmp_path / "r.html", studies=inputs.studies).read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "0.6200 \u00b1 0.0200" in html and "+2.00 \u00b1 0.50" in html and "3600 s" in html
    assert '<td class="num">0.6000</td><td class="num">\u2013</td>' in html  # seed 1 missing: a dash
    assert "<dt>training images</dt><dd>all</dd>" in html and "<dt>ConfMix warm-up M (epochs)</dt><dd>5</dd>" in html
    # α chart: the mean over seeds per epoch (epoch 6: (0.2 + 0.4) / 2), the malformed point ignored
    assert re.search(r"<title>&lt;script&gt;alert\(1\)&lt;/script&gt;: 6, 0\.3</title>", html)
    md = render_markdown([], inputs.studies)
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; | 0.6200 \u00b1 0.0200 | +2.00 \u00b1 0.50 | 0.6000 | \u2013 |" in md
    assert "| baseline (ERM) | 0.6000 \u00b1 0.0100 | +0.00 \u00b1 0.00 | 0.5900 | 0.6100 |" in md


def test_report_of_only_a_study(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s")
    inputs = load_report_inputs([study])
    html = render_report(inputs.results, tmp_path / "r.html", studies=inputs.studies).read_text()
    assert "Seed 002 studies" in html and 'id="summary"' not in html


# --------------------------------------------------------------------------------------------- html


def test_table_values_and_best(rendered: tuple[str, ReportParser]) -> None:
    _, p = rendered
    for model, metrics in METRICS.items():
        for key, (value, _) in metrics.items():
            cell = p.cells[(model, key)]
            assert float(cell["value"]) == value
            assert cell["text"].strip() == format_sig(value)
            assert abs(float(cell["text"]) - value) <= 5e-4 * abs(value)
    for model in ("b", "c"):  # metric missing for b and c is shown as a dash with no value
        assert p.cells[(model, "only_a")]["text"].strip() == "\u2013" and p.cells[(model, "only_a")]["value"] is None
    assert p.cells[("a", "accuracy")]["text"].strip() == "0.9123"
    best = {key: [m for m in METRICS if "best" in p.cells[(m, key)]["class"]] for key in ("accuracy", "alignment", "ece", "only_a")}
    assert best == {"accuracy": ["b"], "alignment": ["c"], "ece": [], "only_a": []}


def test_header_arrows(rendered: tuple[str, ReportParser]) -> None:
    html, _ = rendered
    assert re.search(r'data-metric="accuracy"[^>]*>accuracy<span class="arrow"[^>]*>\u2191', html)
    assert re.search(r'data-metric="alignment"[^>]*>alignment<span class="arrow"[^>]*>\u2193', html)
    assert re.search(r'data-metric="ece"[^>]*>ece</th>', html)


def test_umap_data_and_legend(rendered: tuple[str, ReportParser]) -> None:
    html, p = rendered
    for m in METRICS:
        data = p.umap_data[m]
        assert data["n"] == 4 * N_PER_CLASS and data["classes"] == CLASSES
        xy = np.frombuffer(base64.b64decode(data["xy"]), dtype="<u2")
        labels = np.frombuffer(base64.b64decode(data["labels"]), dtype="<u2")
        assert xy.shape == (2 * data["n"],) and np.bincount(labels).tolist() == [N_PER_CLASS] * 4
        assert p.legends[m] == CLASSES
    assert "n_neighbors=10" in html and "all 160 test points" in html


def test_umap_thumbnails_are_mapped_to_points(seeded_html: tuple[str, ReportParser]) -> None:
    html, p = seeded_html
    atlases = json.loads(next(s["text"] for s in p.scripts if s["id"] == "thumb-atlases"))
    assert len(atlases) == 2  # one per distinct thumbnail set shown: mm's lowest seed and erm
    data = p.umap_data["erm"]
    slots = np.frombuffer(base64.b64decode(data["thumbs"]), dtype="<i4")
    assert (slots >= 0).sum() == 2 * N_PER_CLASS and (slots < 0).sum() == 2 * N_PER_CLASS
    assert data["atlas"] in {a["id"] for a in atlases}
    assert "thumbnail on hover for 80 points" in html


def test_training_curves_present(rendered: tuple[str, ReportParser]) -> None:
    html, p = rendered
    assert html.count('<figure class="curves"') == 3
    assert "train loss" in html and "validation accuracy" in html and ">epoch<" in html
    assert p.section_models["training"] >= set(METRICS)


def test_self_contained_no_external_urls(seeded_html: tuple[str, ReportParser]) -> None:
    html, p = seeded_html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script\b[^>]*\bsrc", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*//""", html, re.I)
    assert "url(" not in html and "@import" not in html
    assert all(u.startswith("data:") or u.startswith("#") for u in p.urls), [u[:40] for u in p.urls]
    assert "default-src 'none'" in p.meta_csp and "script-src 'unsafe-inline'" in p.meta_csp
    assert "connect-src" not in p.meta_csp
    assert [s["type"] for s in p.scripts if s["type"] != "application/json"] == [""]  # the one inline script


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    write_results(tmp_path, "evil", name=EVIL, metrics={"accuracy": (0.5, True)}, classes=["<b>x</b>", "y", "z", EVIL],
                  plots=True)
    write_results(tmp_path, "ok", metrics={"accuracy": (0.6, True), '"><img src=x>': (1.0, True)}, seed=1, plots=True,
                  method="erm")
    html = render_report(load_results([tmp_path]), tmp_path / "r.html").read_text()
    assert "<script>alert(1)" not in html and "<b>x</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    p = parse(html)
    assert EVIL in p.row_names  # renders as text
    assert p.umap_data[EVIL]["classes"][3] == EVIL  # JSON data round-trips; written into the page as text by the script
    assert EVIL in p.section_models["embeddings"] and EVIL in p.section_models["ood"]
    assert "\\u003cscript\\u003e" in html
    md = render_markdown(load_results([tmp_path]))
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_subsample_caption(results_root: Path, tmp_path: Path) -> None:
    results = load_results([results_root / "a"])
    html = render_report(results, tmp_path / "r.html", umap_kwargs={"max_points": 100, "seed": 7}).read_text()
    n = 4 * N_PER_CLASS
    assert f"100 of {n} test points (random subsample, seed 7)" in html
    assert f"100 of {n} shown" in html  # the badge on the plot itself
    assert parse(html).umap_data["a"]["n"] == 100


def test_nonfinite_embeddings_render_a_note(tmp_path: Path) -> None:
    d = write_results(tmp_path, "nan", metrics={"accuracy": (0.1, True)}, history=False)
    emb = np.full((8, 4), np.nan, np.float32)
    np.savez(d / "arrays.npz", embeddings=emb, labels=np.arange(8, dtype=np.int64) % 4)
    html = render_report(load_results(str(d)), tmp_path / "r.html").read_text()
    assert "UMAP skipped" in html and parse(html).umap_data == {}
    assert 'class="curves"' not in html


def test_unknown_umap_option(results_root: Path, tmp_path: Path) -> None:
    with pytest.raises(EmbedlabError, match="bogus"):
        render_report(load_results([results_root / "a"]), tmp_path / "r.html", umap_kwargs={"bogus": 1})


def test_run_metadata_table_reads_checkpoint_meta(results_root: Path, tmp_path: Path) -> None:
    html = render_report(load_results([results_root]), tmp_path / "meta.html").read_text()
    section = html[html.index('<section id="runs">'):html.index('<section id="provenance">')]
    for text in ("method_a", "alpha=0.4", "cnn-gap", "blobs", "cpu_threads: 2", "torch 2.14.1", ">5<"):
        assert text in section, text
    assert '{"name"' not in section


# --------------------------------------------------------------------------------------------- pieces


def test_json_for_script_cannot_close_the_element() -> None:
    text = json_for_script({"s": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": "</script><!-- & \u2028"}


def test_svg_helpers_escape() -> None:
    chart = line_chart([Series("<a>", "#000", [(0, 1), (1, 2)], model="b&c")], xlabel="<x>", ylabel="y")
    assert "<a>" not in chart and "&lt;a&gt;" in chart and 'data-model="b&amp;c"' in chart and "&lt;x&gt;" in chart
    plane = labelled_scatter([LabelledPoint("<p>", "#123456", 1.0, 2.0, 0.1, None)], xlabel="u", ylabel="a")
    assert "<p>" not in plane and "&lt;p&gt;" in plane
    heat = confusion_heatmap(np.array([[3, 1], [0, 4]]), ["<i>", "j"], title="t")
    assert "<i>" not in heat and "&lt;i&gt;" in heat and heat.count("<rect") == 5


def test_confusion_counts_and_pooled_reliability() -> None:
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    labels = np.array([0, 1, 0, 2])
    assert confusion_counts(logits, labels, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    a = {"lower": [0, 0.5], "upper": [0.5, 1], "count": [2, 0], "confidence": [0.4, None], "accuracy": [0.5, None]}
    b = {"lower": [0, 0.5], "upper": [0.5, 1], "count": [2, 4], "confidence": [0.2, 0.9], "accuracy": [1.0, 0.75]}
    pooled = pool_reliability([a, b])
    assert pooled is not None and pooled["count"] == [4, 4]
    assert pooled["confidence"][0] == pytest.approx(0.3) and pooled["accuracy"][0] == pytest.approx(0.75)


def test_png_bytes_roundtrip() -> None:
    pytest.importorskip("PIL")
    import io

    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(png_bytes(img))))
    assert np.array_equal(back, img)


# --------------------------------------------------------------------------------------------- umap


def three_blobs(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.zeros((3, 8))
    centers[0, 0] = centers[1, 1] = centers[2, 2] = 50.0
    y = np.repeat(np.arange(3), n_per)
    return (centers[y] + rng.normal(size=(len(y), 8))).astype(np.float32), y


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_umap_faiss_shape_determinism_separation(metric: str) -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = three_blobs()
    c1, idx = umap_2d(x, metric=metric, use_faiss=True, seed=3, n_epochs=100)
    c2, _ = umap_2d(x, metric=metric, use_faiss=True, seed=3, n_epochs=100)
    assert c1.shape == (len(x), 2) and c1.dtype == np.float32 and np.isfinite(c1).all()
    assert np.array_equal(idx, np.arange(len(x)))
    np.testing.assert_array_equal(c1, c2)
    assert cross_val_score(KNeighborsClassifier(5), c1, y, cv=3).mean() >= 0.99


def test_knn_graph_self_first_and_distances() -> None:
    x, _ = three_blobs(20)
    x = np.vstack([x, x[:5]])  # exact duplicates must not displace self from column 0
    ind, dist = knn_graph(x, 6, metric="cosine")
    assert ind.shape == dist.shape == (len(x), 6) and ind.dtype == np.int64 and dist.dtype == np.float32
    assert np.array_equal(ind[:, 0], np.arange(len(x))) and np.all(dist[:, 0] == 0)
    assert np.all(np.diff(dist, axis=1) >= -1e-6) and np.all((dist >= 0) & (dist <= 2))
    ind_e, dist_e = knn_graph(x, 4, metric="euclidean")
    expected = np.linalg.norm(x[ind_e[:, 1]] - x, axis=1)
    np.testing.assert_allclose(dist_e[:, 1], expected, rtol=1e-3, atol=1e-3)


def test_umap_subsample_and_tiny_inputs() -> None:
    x, _ = three_blobs()
    coords, idx = umap_2d(x, max_points=50, use_faiss=True, n_epochs=50)
    assert coords.shape == (50, 2) and len(np.unique(idx)) == 50 and np.all(np.diff(idx) > 0)
    _, idx2 = umap_2d(x, max_points=50, use_faiss=True, n_epochs=50)
    assert np.array_equal(idx, idx2)
    for n in (1, 2, 3, 5):
        c, i = umap_2d(x[:n], use_faiss=True)
        assert c.shape == (n, 2) and np.isfinite(c).all() and len(i) == n


@pytest.mark.slow
def test_parallel_layouts_equal_sequential_ones() -> None:
    from embedlab.reports.umap_embed import auto_workers, umap_layouts

    x, _ = three_blobs(40)
    inputs = [x, x[::-1].copy()]
    settings = {"n_neighbors": 10, "n_epochs": 30, "seed": 1}
    sequential = umap_layouts(inputs, settings, workers=1)
    parallel = umap_layouts(inputs, settings, workers=2)
    for (c1, i1), (c2, i2) in zip(sequential, parallel):
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(i1, i2)
    assert auto_workers([10_000]) == 1 and auto_workers([100, 100]) == 1  # little work stays in this process


# --------------------------------------------------------------------------------------------- markdown / format


def test_markdown_table(results_root: Path) -> None:
    md = render_markdown(load_results([results_root]))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| model | accuracy \u2191 | alignment \u2193 | ece |")
    rows = lines[2:5]
    assert [r.split("|")[1].strip() for r in rows] == ["a", "b", "c"]
    assert "**0.9700**" in rows[1] and "**0.4123**" in rows[2] and "**" not in rows[0]


def test_markdown_mean_std_over_seeds(seeded_root: Path) -> None:
    md = render_markdown(load_results([seeded_root]))
    assert "| model | seeds |" in md and "Mean \u00b1 sample standard deviation" in md
    accs = [json.loads(f.read_text())["metrics"]["accuracy"]["value"] for f in sorted(seeded_root.glob("mm-seed*/results.json"))]
    expected = format_stat(Stat(float(np.mean(accs)), float(np.std(accs, ddof=1)), 3))
    row = next(line for line in md.splitlines() if line.startswith("| mm | 3 |"))
    assert expected in row
    assert "**OOD detection \u00b7 OOD set gaussian \u00b7 AUROC**" in md


@pytest.mark.parametrize(
    "value, text",
    [(0.97, "0.9700"), (0.91234567, "0.9123"), (12.0, "12.00"), (123456.0, "123500"), (0.000123456, "0.0001235"),
     (9.99995, "10.00"), (-0.5, "-0.5000"), (0.0, "0"), (1.5e9, "1.500e+09")],
)
def test_format_sig(value: float, text: str) -> None:
    assert format_sig(value) == text


@pytest.mark.parametrize(
    "stat, text",
    [(Stat(0.99167, 0.00123, 3), "0.9917 \u00b1 0.0012"), (Stat(12.0, 0.349, 2), "12.00 \u00b1 0.35"),
     (Stat(0.5, None, 1), "0.5000"), (Stat(1.5e9, 2e7, 2), "1.500e+09 \u00b1 2.0e+07"), (None, "\u2013")],
)
def test_format_stat(stat: Stat | None, text: str) -> None:
    assert format_stat(stat) == text


def test_reports_does_not_import_torch_or_upper_layers() -> None:
    import subprocess

    code = (
        "import sys, warnings, numpy as np, embedlab.reports as reports, embedlab.reports.html as h, embedlab.reports.umap_embed as u, embedlab.reports.svg as s\n"
        "import embedlab.reports.tex, embedlab.reports.paper_figures, embedlab.reports.load as load\n"
        "assert 'matplotlib' not in sys.modules and 'seaborn' not in sys.modules, 'imported eagerly'\n"
        "s.png_bytes(np.zeros((2, 2, 3), np.uint8))\n"
        "u.knn_graph(np.random.default_rng(0).random((30, 4), dtype=np.float32), 5); s.palette(12)\n"
        "warnings.simplefilter('ignore'); import umap\n"  # what umap_2d imports lazily
        "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('embedlab.trainers', 'embedlab.analyses'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --------------------------------------------------------------------------------------------- CLI


def test_cli_report_html_md_and_force(results_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedlab.cli import main

    write_study(results_root / "toy")
    out = tmp_path / "r.html"
    assert main(["report", str(results_root), "-o", str(out), "--umap-neighbors", "8", "--umap-epochs", "50"]) == 0
    html = out.read_text()
    assert "Seed 002 studies" in html and "n_neighbors=8" in html and "n_epochs=50" in html
    assert main(["report", str(results_root), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    md = tmp_path / "r.md"
    assert main(["report", str(results_root), "-o", str(md), "--format", "md"]) == 0
    assert md.read_text().startswith("| model |")


# --------------------------------------------------------------------------------------------- schema version 2


def as_v2(folder: Path, *, metrics: dict[str, dict[str, Any]], sections: dict[str, dict[str, str]],
          plots: dict[str, Any]) -> Path:
    """Rewrite ``folder/results.json`` (from :func:`write_results`) as schema version 2 with these descriptors."""
    path = folder / "results.json"
    data = json.loads(path.read_text())
    data.update(schema_version=2, metrics=metrics, sections=sections, plots=plots)
    path.write_text(json.dumps(data))
    return folder


def v2_metric(value: float, hib: bool | None, analysis: str, section: str, table: str, column: str,
              **key: Any) -> dict[str, Any]:
    return {"value": value, "higher_is_better": hib, "analysis": analysis, "settings": {}, "section": section,
            "table": table, "column": column, "key": key}


def test_upgrade_v1_produces_the_v2_descriptors(seeded_root: Path) -> None:
    from embedlab.reports.load import upgrade_v1

    raw = json.loads((seeded_root / "mm-seed0" / "results.json").read_text())
    up = upgrade_v1(raw)
    assert raw["schema_version"] == 1 and "sections" not in raw  # the input is not changed
    assert up["schema_version"] == 2
    m = up["metrics"]
    assert {k: (m[k]["section"], m[k]["table"], m[k]["column"]) for k in m} == {
        "accuracy": ("overview", "", "accuracy"),
        "uniformity": ("overview", "", "uniformity"),
        "alignment": ("overview", "", "alignment"),
        "ood/gaussian/energy/auroc": ("ood", "OOD set gaussian \u00b7 AUROC", "energy"),
        "ood/gaussian/energy/fpr95": ("ood", "OOD set gaussian \u00b7 FPR@95TPR", "energy"),
        "ece": ("calibration", "before temperature scaling", "ece"),
    }
    assert m["ood/gaussian/energy/auroc"]["key"] == {"set": "gaussian", "score": "energy", "metric": "auroc"}
    assert m["ece"]["key"] == {"metric": "ece", "scaled": False}
    assert up["sections"]["ood"]["title"] == "OOD detection" and "in-distribution" in up["sections"]["ood"]["note"]
    assert set(up["sections"]) == {"overview", "ood", "calibration"}
    plots = up["plots"]
    assert {a: p["kind"] for a, p in plots.items()} == {
        "align_uniform": "metric_scatter", "calibration": "reliability", "robustness": "curves",
        "ood": "score_histograms"}
    assert list(plots["calibration"]["diagrams"]) == ["before temperature scaling", "after temperature scaling"]
    assert plots["calibration"]["diagrams"]["before temperature scaling"] == raw["plots"]["calibration"]["reliability"]
    curve = plots["robustness"]["curves"]["pgd_linf"]
    assert curve["x"] == raw["plots"]["robustness"]["pgd_linf"]["eps"]
    assert curve["y"] == raw["plots"]["robustness"]["pgd_linf"]["accuracy"] and "1/255" in curve["note"]
    assert plots["ood"]["sets"] == raw["plots"]["ood"]["sets"]
    assert (plots["align_uniform"]["x"], plots["align_uniform"]["y"]) == ("uniformity", "alignment")
    # robustness and calibration metrics, OOD means, the generic a/b/c rule, bare numbers
    more = upgrade_v1({"metrics": {
        "robust_acc/pgd_l2/eps=0.5": {"value": 0.4, "higher_is_better": True, "analysis": "robustness"},
        "ece_ts": {"value": 0.01, "higher_is_better": False, "analysis": "calibration"},
        "temperature": {"value": 1.5, "higher_is_better": None, "analysis": "calibration"},
        "ood/mean/msp/auroc": {"value": 0.8, "higher_is_better": True, "analysis": "ood_logits"},
        "x/y/z": {"value": 1.0, "higher_is_better": None, "analysis": "thing"},
        "bare": 3.5}, "plots": {"embedding_mmlb": {"per_class": {"a": 0.1}}, "robustness": "abc"}})
    mm = more["metrics"]
    assert (mm["robust_acc/pgd_l2/eps=0.5"]["table"], mm["robust_acc/pgd_l2/eps=0.5"]["column"]) == (
        "robust accuracy \u00b7 pgd_l2", "\u03b5 = 0.5")
    assert mm["robust_acc/pgd_l2/eps=0.5"]["key"] == {"metric": "robust_acc", "attack": "pgd_l2", "eps": 0.5,
                                                      "eps_unit": "L2 in [0, 1] pixels"}
    assert (mm["ece_ts"]["table"], mm["ece_ts"]["column"], mm["ece_ts"]["key"]) == (
        "after temperature scaling", "ece", {"metric": "ece", "scaled": True})
    assert mm["temperature"]["table"] == "after temperature scaling"
    assert (mm["ood/mean/msp/auroc"]["section"], mm["ood/mean/msp/auroc"]["table"]) == (
        "ood", "mean over OOD sets \u00b7 AUROC")
    assert (mm["x/y/z"]["section"], mm["x/y/z"]["table"], mm["x/y/z"]["column"]) == ("thing", "x/y", "z")
    assert mm["bare"]["value"] == 3.5 and mm["bare"]["section"] == "overview"
    assert more["plots"] == {"robustness": "abc"}  # never-drawn plots dropped; malformed ones kept for the report


def test_v2_results_load_and_v1_files_are_upgraded(results_root: Path, tmp_path: Path) -> None:
    loaded = load_results([results_root / "a"])[0]
    assert loaded.results["schema_version"] == 2 and loaded.metrics["accuracy"]["section"] == "overview"
    d = write_results(tmp_path, "v3", metrics={"accuracy": (0.5, True)})
    data = json.loads((d / "results.json").read_text())
    for version in (3, "2", None, True):
        (d / "results.json").write_text(json.dumps({**data, "schema_version": version}))
        with pytest.raises(EmbedlabError, match=re.escape(f"unsupported schema_version {version!r}")) as err:
            load_results([d])
        assert "\n" not in str(err.value) and "reads 1, 2" in str(err.value)


@pytest.fixture()
def v2_root(tmp_path: Path) -> Path:
    """Two models in schema version 2 with an analysis the report layer has never heard of ("wobble"): its own
    section, two tables, a `curves` plot; and a second `curves` analysis sharing its section."""
    root = tmp_path / "v2"
    for i, name in enumerate(("alpha", "beta")):
        d = write_results(root, name, metrics={}, seed=i, method=f"m{i}")
        metrics = {
            "acc": v2_metric(0.8 + 0.1 * i, True, "accuracy", "overview", "", "top-1 accuracy", metric="acc"),
            "wobble/amp/low": v2_metric(1.0 - 0.2 * i, False, "wobble", "wobble", "amplitude", "low f",
                                        metric="amp", band="low"),
            "wobble/amp/high": v2_metric(2.0 + i, False, "wobble", "wobble", "amplitude", "high f",
                                         metric="amp", band="high"),
            "wobble/phase": v2_metric(0.1 * i, None, "wobble", "wobble", "", "phase", metric="phase"),
            "drift": v2_metric(0.5, True, "drift", "wobble", "drift table", "drift", metric="drift"),
        }
        sections = {"overview": {"title": "Overview", "note": ""},
                    "wobble": {"title": "Wobble & drift <analysis>", "note": "Wobble is measured in mm."}}
        plots = {
            "wobble": {"kind": "curves", "x_label": "frequency", "y_label": "amplitude",
                       "curves": {"sweep": {"x": [1, 2, 3], "y": [0.1 * i, 0.2, 0.3], "note": "Hz"}}},
            "drift": {"kind": "curves", "x_label": "frequency", "y_label": "amplitude",
                      "curves": {"drift": {"x": [0, 1], "y": [5.0, 6.0 + i], "note": ""}}},
            "future": {"kind": "hologram", "data": [1, 2]},  # a kind this report cannot draw: left out
        }
        as_v2(d, metrics=metrics, sections=sections, plots=plots)
    return root


def test_v2_tables_come_from_the_descriptors(v2_root: Path, tmp_path: Path) -> None:
    from embedlab.reports.tables import summary_sections

    groups = group_results(load_results([v2_root]))
    sections = summary_sections(groups)
    assert [(s.key, s.title) for s in sections] == [("overview", "Overview"), ("wobble", "Wobble & drift <analysis>")]
    wobble = sections[1]
    assert wobble.note == "Wobble is measured in mm."
    assert [(t.title, [c.label for c in t.columns]) for t in wobble.tables] == [
        ("amplitude", ["low f", "high f"]), ("", ["phase"]), ("drift table", ["drift"])]
    low = wobble.tables[0]
    assert [c.best for c in low.rows[0].cells] == [False, True] and [c.best for c in low.rows[1].cells] == [True, False]
    assert sections[0].tables[0].columns[0].key == "acc" and sections[0].tables[0].rows[1].cells[0].best
    md = render_markdown(load_results([v2_root]))
    assert "**Wobble &amp; drift &lt;analysis&gt; \u00b7 amplitude**" in md and "| model | low f \u2193 | high f \u2193 |" in md
    html = render_report(load_results([v2_root]), tmp_path / "v2.html", umap_kwargs={"n_epochs": 20}).read_text()
    p = parse(html)
    assert float(p.cells[("beta", "wobble/amp/low")]["value"]) == pytest.approx(0.8)
    assert "Wobble &amp; drift &lt;analysis&gt;" in html and "<analysis>" not in html


def test_v2_figures_are_drawn_by_kind(v2_root: Path, tmp_path: Path) -> None:
    html = render_report(load_results([v2_root]), tmp_path / "v2.html", umap_kwargs={"n_epochs": 20}).read_text()
    section = html[html.index('<section id="wobble"'):]
    section = section[:section.index("</section>")]
    assert 'data-section="wobble"' in section and "<h2>Wobble &amp; drift &lt;analysis&gt;</h2>" in section
    assert section.count('<figure class="curves-plot"') == 2  # "sweep" and "drift": two analyses, one section
    assert "frequency (Hz)" in section and 'data-curve="sweep"' in section
    assert "hologram" not in html
    assert parse(html).section_models["wobble"] >= {"alpha", "beta"}
    assert '<a href="#wobble">Wobble &amp; drift &lt;analysis&gt;</a>' in html


@pytest.mark.parametrize("plot", ["abc", {"no": "kind"}, {"kind": 3}, {"kind": "curves", "curves": "x"},
                                  {"kind": "curves", "curves": {"c": {"x": [1, 2], "y": ["a", "b"]}}},
                                  {"kind": "curves", "curves": {"c": {"x": [1, 2], "y": [1]}}},
                                  {"kind": "reliability", "diagrams": {"d": {"count": [1], "confidence": ["x"],
                                                                             "accuracy": [0.5], "lower": [0],
                                                                             "upper": [1]}}},
                                  {"kind": "score_histograms", "sets": 5},
                                  {"kind": "metric_scatter", "x": 1, "y": "acc"}])
def test_malformed_v2_plot_is_one_line(v2_root: Path, tmp_path: Path, plot: Any) -> None:
    path = v2_root / "alpha" / "results.json"
    data = json.loads(path.read_text())
    data["plots"]["wobble"] = plot
    path.write_text(json.dumps(data))
    with pytest.raises(EmbedlabError) as err:
        render_report(load_results([v2_root / "alpha"]), tmp_path / "bad.html", umap_kwargs={"n_epochs": 10})
    assert str(err.value).startswith(f"malformed 'wobble' plot data in {path}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "bad.html").exists()
    assert render_markdown(load_results([v2_root / "alpha"]))  # tables need no plots


def test_v1_and_v2_of_the_same_results_render_the_same_tables(seeded_root: Path, tmp_path: Path) -> None:
    from embedlab.reports.load import upgrade_v1

    v2 = tmp_path / "as_v2"
    for d in sorted(seeded_root.iterdir()):
        target = v2 / d.name
        target.mkdir(parents=True)
        (target / "arrays.npz").write_bytes((d / "arrays.npz").read_bytes())
        (target / "results.json").write_text(json.dumps(upgrade_v1(json.loads((d / "results.json").read_text()))))
    assert render_markdown(load_results([v2])) == render_markdown(load_results([seeded_root]))


def test_v2_bars_plot(tmp_path: Path) -> None:
    for s in range(2):
        for name in ("mm", "erm"):
            d = write_results(tmp_path, f"{name}-seed{s}", metrics={}, seed=s, method=name, n_per_class=5)
            as_v2(d, metrics={"mmlb": v2_metric(0.1 + s, False, "mmlb", "convex", "", "MMLB")},
                  sections={"convex": {"title": "Convexity", "note": ""}},
                  plots={"mmlb": {"kind": "bars", "x_label": "class", "y_label": "rate", "title": "per class",
                                  "bars": {c: 0.1 * (i + 1) + 0.02 * s for i, c in enumerate(CLASSES)}}})
    html = render_report(load_results([tmp_path]), tmp_path / "r.html", umap_kwargs={"n_epochs": 10}).read_text()
    section = html[html.index('<section id="convex"'):]
    section = section[:section.index("</section>")]
    assert "<h2>per class</h2>" in section  # a plot title names its figure section
    assert section.count('<rect class="bar"') == 2 * len(CLASSES)
    assert "mm \u00b7 dog: 0.21 \u00b1 0.014" in section  # mean and std over the two seeds
    assert "whiskers" in section and parse(html).section_models["convex"] >= {"mm", "erm"}
