"""Tests for the report layer (reports/): loading saved results, UMAP layouts, HTML and Markdown rendering."""
from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedlab.errors import EmbedlabError
from reports import load_results, render_markdown, render_report
from reports.html import format_sig, svg_scatter
from reports.umap_embed import knn_graph, umap_2d

CLASSES = ["cat", "dog", "bird", "fish"]
N_PER_CLASS = 40  # 4 classes -> 160 points per model


def write_results(
    root: Path,
    dirname: str,
    *,
    name: str | None = None,
    metrics: dict[str, tuple[float | None, bool | None]],
    seed: int = 0,
    n_per_class: int = N_PER_CLASS,
    classes: list[str] = CLASSES,
    history: bool = True,
) -> Path:
    """Write ``root/dirname/{results.json,arrays.npz}`` with seeded Gaussian-blob embeddings; return the dir."""
    rng = np.random.default_rng(seed)
    d = 16
    centers = rng.normal(size=(len(classes), d)) * 6
    labels = np.repeat(np.arange(len(classes)), n_per_class).astype(np.int64)
    emb = (centers[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)
    out = root / dirname
    out.mkdir(parents=True)
    np.savez(out / "arrays.npz", embeddings=emb, labels=labels, logits=rng.normal(size=(len(labels), len(classes))).astype(np.float32))
    hist = [{"epoch": e, "train_loss": 2.0 / e, "val_accuracy": 1 - 0.5 / e} for e in range(1, 6)]
    results = {
        "schema_version": 1,
        "kind": "embedlab.analysis",
        "model": {
            "name": name or dirname,
            "source": f"runs/{dirname}/model.safetensors",
            "sha256": "ab" * 32,
            "meta": {
                "method": {"name": "mixup", "options": {"alpha": 0.4}}, "model": {"name": "cnn-gap"},
                "dataset": {"name": "blobs"}, "config": {"epochs": 5, "seed": seed},
                **({"history": hist} if history else {}),
            },
        },
        "dataset": {"name": "blobs", "split": "test", "num_examples": len(labels), "classes": classes},
        "metrics": {
            key: {"value": v, "higher_is_better": hib, "analysis": key, "settings": {}} for key, (v, hib) in metrics.items()
        },
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


@pytest.fixture()
def results_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for i, (name, metrics) in enumerate(METRICS.items()):
        write_results(root, name, metrics=metrics, seed=i)
    return root


class TableParser(HTMLParser):
    """Collect the summary table's cells, the UMAP figures' circle counts and every src/href value."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, Any]] = {}  # (model, metric) -> attrs + text
        self.circles: dict[str, int] = {}
        self.legends: dict[str, list[str]] = {}
        self.urls: list[str] = []
        self._table = ""
        self._row: str | None = None
        self._cell: dict[str, Any] | None = None
        self._fig: str | None = None
        self._in_legend = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href", "xlink:href", "action")]
        if tag == "table":
            self._table = a.get("class", "")
        elif tag == "tr" and self._table == "summary" and "data-model" in a:
            self._row = a["data-model"]
        elif tag == "td" and self._row is not None:
            self._cell = {"class": a.get("class", "").split(), "value": a.get("data-value"), "text": ""}
            self.cells[(self._row, a["data-metric"])] = self._cell
        elif tag == "figure" and "umap" in a.get("class", "").split():
            self._fig = a["data-model"]
            self.circles[self._fig] = 0
            self.legends[self._fig] = []
        elif tag == "circle" and self._fig is not None:
            self.circles[self._fig] += 1
        elif tag == "ul" and self._fig is not None and "legend" in a.get("class", ""):
            self._in_legend = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = ""
        elif tag == "figure":
            self._fig = None
        elif tag == "ul":
            self._in_legend = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_legend and data.strip():
            self.legends[self._fig].append(data.strip())  # type: ignore[index]


def parse(html: str) -> TableParser:
    p = TableParser()
    p.feed(html)
    p.close()
    return p


@pytest.fixture()
def rendered(results_root: Path, tmp_path: Path) -> tuple[str, TableParser]:
    results = load_results([results_root])
    out = render_report(results, tmp_path / "out" / "report.html", umap_kwargs={"n_neighbors": 10})
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
    with pytest.raises(EmbedlabError, match="no results.json found"):
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
    c1, idx = umap_2d(x, metric=metric, use_faiss=True, seed=3)
    c2, _ = umap_2d(x, metric=metric, use_faiss=True, seed=3)
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
    coords, idx = umap_2d(x, max_points=50, use_faiss=True)
    assert coords.shape == (50, 2) and len(np.unique(idx)) == 50 and np.all(np.diff(idx) > 0)
    _, idx2 = umap_2d(x, max_points=50, use_faiss=True)
    assert np.array_equal(idx, idx2)
    for n in (1, 2, 3, 5):
        c, i = umap_2d(x[:n], use_faiss=True)
        assert c.shape == (n, 2) and np.isfinite(c).all() and len(i) == n


# --------------------------------------------------------------------------------------------- html


def test_table_values_and_best(rendered: tuple[str, TableParser]) -> None:
    _, p = rendered
    for model, metrics in METRICS.items():
        for key, (value, _) in metrics.items():
            cell = p.cells[(model, key)]
            assert float(cell["value"]) == value
            assert cell["text"].strip() == format_sig(value)
            assert abs(float(cell["text"]) - value) <= 5e-4 * abs(value)
    # metric missing for b and c is shown as a dash with no value
    for model in ("b", "c"):
        assert p.cells[(model, "only_a")]["text"].strip() == "\u2013" and p.cells[(model, "only_a")]["value"] is None
    assert p.cells[("a", "accuracy")]["text"].strip() == "0.9123"

    best = {key: [m for m in METRICS if "best" in p.cells[(m, key)]["class"]] for key in ("accuracy", "alignment", "ece", "only_a")}
    assert best == {"accuracy": ["b"], "alignment": ["c"], "ece": [], "only_a": []}


def test_header_arrows(rendered: tuple[str, TableParser]) -> None:
    html, _ = rendered
    assert re.search(r'data-metric="accuracy"[^>]*>accuracy<span class="arrow"[^>]*>\u2191', html)
    assert re.search(r'data-metric="alignment"[^>]*>alignment<span class="arrow"[^>]*>\u2193', html)
    assert re.search(r'data-metric="ece"[^>]*>ece</th>', html)


def test_umap_figures_and_legend(rendered: tuple[str, TableParser]) -> None:
    html, p = rendered
    assert p.circles == {m: 4 * N_PER_CLASS for m in METRICS}
    for m in METRICS:
        assert p.legends[m] == CLASSES
    assert "<title>fish</title>" in html
    assert "n_neighbors=10" in html


def test_training_curves_present(rendered: tuple[str, TableParser]) -> None:
    html, _ = rendered
    assert html.count('<figure class="curves"') == 3
    assert "train loss" in html and "val accuracy" in html and ">epoch<" in html


def test_self_contained_no_external_urls(rendered: tuple[str, TableParser]) -> None:
    html, p = rendered
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script\b[^>]*\bsrc", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*//""", html, re.I)
    assert "url(" not in html and "@import" not in html
    assert p.urls == []


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    write_results(tmp_path, "evil", name=evil, metrics={"accuracy": (0.5, True)}, classes=["<b>x</b>", "y", "z", "w"])
    write_results(tmp_path, "ok", metrics={"accuracy": (0.6, True), '"><img src=x>': (1.0, True)}, seed=1)
    html = render_report(load_results([tmp_path]), tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<img" not in html
    p = parse(html)
    assert set(p.circles) == {evil, "ok"}  # parser unescapes attribute values
    md = render_markdown(load_results([tmp_path]))
    assert "<script>" not in md


def test_subsample_caption(results_root: Path, tmp_path: Path) -> None:
    results = load_results([results_root / "a"])
    html = render_report(results, tmp_path / "r.html", umap_kwargs={"max_points": 100, "seed": 7}).read_text()
    n = 4 * N_PER_CLASS
    assert f"showing 100 of {n} points (random subsample, seed 7)" in html
    assert parse(html).circles == {"a": 100}


def test_nonfinite_embeddings_render_a_note(tmp_path: Path) -> None:
    d = write_results(tmp_path, "nan", metrics={"accuracy": (0.1, True)}, history=False)
    emb = np.full((8, 4), np.nan, np.float32)
    np.savez(d / "arrays.npz", embeddings=emb, labels=np.arange(8, dtype=np.int64) % 4)
    html = render_report(load_results(str(d)), tmp_path / "r.html").read_text()
    assert "UMAP skipped" in html and parse(html).circles == {"nan": 0}
    assert 'class="curves"' not in html


def test_unknown_umap_option(results_root: Path, tmp_path: Path) -> None:
    with pytest.raises(EmbedlabError, match="bogus"):
        render_report(load_results([results_root / "a"]), tmp_path / "r.html", umap_kwargs={"bogus": 1})


def test_svg_scatter_escapes_and_counts() -> None:
    svg = svg_scatter(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([0, 1]), ["<a>", "b&c"], ["#000000", "#ffffff"])
    assert svg.count("<circle") == 2 and "&lt;a&gt;" in svg and "b&amp;c" in svg and "<a>" not in svg


# --------------------------------------------------------------------------------------------- markdown / format


def test_markdown_table(results_root: Path) -> None:
    md = render_markdown(load_results([results_root]))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| model | accuracy \u2191 | alignment \u2193 | ece |")
    rows = lines[2:]
    assert len(rows) == 3 and [r.split("|")[1].strip() for r in rows] == ["a", "b", "c"]
    assert "**0.9700**" in rows[1] and "**0.4123**" in rows[2] and "**" not in rows[0]


@pytest.mark.parametrize(
    "value, text",
    [(0.97, "0.9700"), (0.91234567, "0.9123"), (12.0, "12.00"), (123456.0, "123500"), (0.000123456, "0.0001235"),
     (9.99995, "10.00"), (-0.5, "-0.5000"), (0.0, "0"), (1.5e9, "1.500e+09")],
)
def test_format_sig(value: float, text: str) -> None:
    assert format_sig(value) == text


def test_reports_does_not_import_torch_or_upper_layers() -> None:
    import subprocess

    code = (
        "import sys, warnings, numpy as np, reports, reports.html as h, reports.umap_embed as u\n"
        "u.knn_graph(np.random.default_rng(0).random((30, 4), dtype=np.float32), 5); h.class_palette(3)\n"
        "warnings.simplefilter('ignore'); import umap\n"  # what umap_2d imports lazily
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'trainers', 'analyses')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_run_metadata_table_reads_checkpoint_meta(results_root: Path, tmp_path: Path) -> None:
    out = render_report(load_results([results_root]), tmp_path / "meta.html")
    html = out.read_text()
    section = html[html.index("Runs"):html.index("Embedding space")] if "Embedding space" in html else html
    for text in ("mixup", "alpha=0.4", "cnn-gap", "blobs"):
        assert text in section, text
    assert '{"name"' not in section
