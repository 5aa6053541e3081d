"""Paper outputs of the report layer: LaTeX tables (reports/tex.py) and PDF/PNG figures (reports/paper_figures.py)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedlab.errors import EmbedlabError
from embedlab.reports import load_report_inputs, load_results
from embedlab.reports.aggregate import group_results
from embedlab.reports.tables import summary_sections
from embedlab.reports.tex import render_tex, tex_escape
from test_reports import N_PER_CLASS, ood_metric, write_results, write_study

NASTY = "m_1 50% & #2 $x$ {a} \\b ~c ^d"


def _braces_balanced(tex: str) -> bool:
    depth = 0
    for m in re.finditer(r"\\.|[{}]", tex, re.S):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _unescaped(tex: str, chars: str) -> list[str]:
    """Special characters not preceded by a backslash, outside math shifts and outside comments and commands."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    body = re.sub(r"\\.", "", body)  # every escaped character and command start
    return [c for c in chars if c in body]


def _check_structure(tex: str) -> None:
    assert _braces_balanced(tex)
    begins = re.findall(r"\\begin\{(\w+)\}", tex)
    ends = re.findall(r"\\end\{(\w+)\}", tex)
    assert sorted(begins) == sorted(ends)
    stack: list[str] = []
    for m in re.finditer(r"\\(begin|end)\{(\w+)\}", tex):
        if m.group(1) == "begin":
            stack.append(m.group(2))
        else:
            assert stack.pop() == m.group(2)
    n = tex.count(r"\begin{tabular}")
    assert n and tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == n
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert len(re.findall(r"(?<!\\)\$", body)) % 2 == 0  # math shifts pair up
    for line in body.splitlines():  # every row has as many cells as its tabular has columns
        if line.endswith(r"\\"):
            cells = len(re.findall(r"(?<!\\)&", line)) + 1
            assert cells == current_columns, line
        m = re.match(r"\\begin\{tabular\}\{([lr]+)\}", line)
        if m:
            current_columns = len(m.group(1))


@pytest.fixture()
def seeded(tmp_path: Path) -> Path:
    root = tmp_path / "seeded"
    rng = np.random.default_rng(3)
    for s in range(3):
        write_results(root, f"mm-seed{s}", seed=s, method="multimix", plots=True, data_seed=s, metrics={
            "accuracy": {"value": float(rng.uniform(0.8, 0.99)), "higher_is_better": True, "analysis": "accuracy"},
            "alignment": {"value": float(rng.uniform(0.2, 1)), "higher_is_better": False, "analysis": "align_uniform"},
            "uniformity": {"value": float(rng.uniform(-3, -1)), "higher_is_better": False, "analysis": "align_uniform"},
            "ood/gaussian/energy/auroc": ood_metric(float(rng.uniform(0.5, 1)), "gaussian", "energy", "auroc"),
            "ece": {"value": float(rng.uniform(0, 0.1)), "higher_is_better": False, "analysis": "calibration"}})
    write_results(root, "erm", name=NASTY, seed=0, method="erm", plots=True, data_seed=9, metrics={
        "accuracy": {"value": 0.9, "higher_is_better": True, "analysis": "accuracy"},
        "alignment": {"value": 0.5, "higher_is_better": False, "analysis": "align_uniform"},
        "uniformity": {"value": -2.0, "higher_is_better": False, "analysis": "align_uniform"},
        "ood/gaussian/energy/auroc": ood_metric(0.7, "gaussian", "energy", "auroc"),
        "weird_%&#": {"value": 1.5e9, "higher_is_better": None, "analysis": "weird_%&#"}})
    return root


# --------------------------------------------------------------------------------------------- LaTeX


def test_tex_escape() -> None:
    assert tex_escape("a_b % & # $ { } ~ ^ \\") == (r"a\_b \% \& \# \$ \{ \} \textasciitilde{} "
                                                    r"\textasciicircum{} \textbackslash{}")
    assert tex_escape("OOD set x \u00b7 AUROC \u03b5 = 2/255 \u2191") == (
        r"OOD set x $\cdot$ AUROC $\varepsilon$ = 2/255 $\uparrow$")
    assert tex_escape("two\nlines") == "two lines"


def test_tex_tables_compile_structurally_and_match_the_report_tables(seeded: Path) -> None:
    results = load_results([seeded])
    tex = render_tex(results)
    _check_structure(tex)
    assert not _unescaped(tex, "_%#")  # every _ % # is escaped; a stray & would break the column count below
    assert r"m\_1 50\% \& \#2 \$x\$ \{a\} \textbackslash{}b \textasciitilde{}c \textasciicircum{}d" in tex
    assert r"weird\_\%\&\#" in tex and NASTY not in tex
    groups = group_results(results)
    sections = summary_sections(groups)
    n_tables = sum(len(s.tables) for s in sections)
    assert tex.count(r"\begin{table}") == n_tables
    rows = {}  # (model, table caption) -> cells, read back from the LaTeX
    for block in tex.split(r"\begin{table}")[1:]:
        header = re.search(r"\\midrule", block)
        assert header
        for line in block[header.end():block.index(r"\bottomrule")].strip().splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)&", line.rstrip("\\").strip())]
            rows.setdefault(cells[0], []).append(cells[2:])  # model, n, metrics...
    for sec in sections:
        for t_i, table in enumerate(sec.tables):
            for row in table.rows:
                assert any(len(c) == len(row.cells) for c in rows[tex_escape(row.name)])
    mm = group_results(results)[0] if group_results(results)[0].name == "mm" else group_results(results)[1]
    acc = [json.loads((seeded / f"mm-seed{s}" / "results.json").read_text())["metrics"]["accuracy"]["value"]
           for s in range(3)]
    from embedlab.reports.aggregate import Stat
    from embedlab.reports.tables import format_stat

    text = format_stat(Stat(float(np.mean(acc)), float(np.std(acc, ddof=1)), 3))
    mean, std = (p.strip() for p in text.split("\u00b1"))
    best = np.mean(acc) > 0.9
    cell = rf"$\mathbf{{{mean} \pm {std}}}$" if best else rf"${mean} \pm {std}$"
    assert re.search(rf"^mm & 3 & {re.escape(cell)} &", tex, re.M), tex
    assert mm.n == 3
    assert r"accuracy $\uparrow$" in tex and r"alignment $\downarrow$" in tex
    assert r"1.500 \times 10^{9}" in tex  # exponent form in math
    assert "OOD detection $\\cdot$ OOD set gaussian $\\cdot$ AUROC" in tex
    assert len(set(re.findall(r"\\label\{([^}]*)\}", tex))) == n_tables  # labels unique


def test_tex_best_cell_bold_single_seed(tmp_path: Path) -> None:
    write_results(tmp_path, "a", metrics={"accuracy": (0.91, True), "loss": (0.3, False)}, seed=0, method="x")
    write_results(tmp_path, "b", metrics={"accuracy": (0.95, True), "loss": (0.2, False)}, seed=1, method="y")
    tex = render_tex(load_results([tmp_path]))
    _check_structure(tex)
    assert r"a & $0.9100$ & $0.3000$ \\" in tex and r"b & $\mathbf{0.9500}$ & $\mathbf{0.2000}$ \\" in tex
    assert r"$n$" not in tex.split(r"\midrule")[0]  # no seeds column without seed groups


def _benchmark(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)

    def e(mean: float, std: float, diff: tuple[float, float, float] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": mean, "std": std, "ci95": [mean - 2 * std, mean + 2 * std], "n": 3}
        if diff is not None:
            out["diff_to_baseline"] = {"mean": diff[0], "std": 0.01, "ci95": [diff[1], diff[2]], "n": 3}
        return out

    data = {"kind": "embedlab.study", "study": "benchmark", "baseline": "erm", "seeds": [0, 1, 2],
            "config": {"dataset": "digits_x"}, "directions": {"accuracy": "higher", "ece": "lower"},
            "rows": [{"label": "erm", "seeds_done": [0, 1, 2], "metrics": {"accuracy": e(0.9, 0.01),
                                                                          "ece": e(0.05, 0.005)}},
                     {"label": "mix_up&co", "seeds_done": [0, 1, 2],
                      "metrics": {"accuracy": e(0.93, 0.02, (0.03, 0.01, 0.05)),
                                  "ece": e(0.06, 0.004, (0.01, -0.002, 0.022))}}]}
    path = folder / "benchmark.json"
    path.write_text(json.dumps(data))
    return path


def test_tex_benchmark_study_paired_differences(tmp_path: Path) -> None:
    study = _benchmark(tmp_path / "bench")
    inputs = load_report_inputs([study])
    tex = render_tex(inputs.results, inputs.studies)
    _check_structure(tex)
    assert tex.count(r"\begin{tabular}") == 2
    assert r"erm & 3 & $0.9000 \pm 0.0100$ & $\mathbf{0.0500 \pm 0.0050}$ \\" in tex
    assert r"mix\_up\&co & 3 & $\mathbf{0.9300 \pm 0.0200}$ & $0.0600 \pm 0.0040$ \\" in tex
    # the paired differences with their 95 % intervals; bold where the interval excludes 0
    assert r"mix\_up\&co & $\mathbf{+0.0300\ [+0.0100, +0.0500]}$ & $+0.0100\ [-0.0020, +0.0220]$ \\" in tex
    assert "paired difference to erm" in tex and r"95\,\% Student-$t$ interval" in tex and r"digits\_x" in tex
    toy = write_study(tmp_path / "toy")
    tex2 = render_tex([], load_report_inputs([toy]).studies)
    assert tex2.count(r"\begin{table}") == 0 and "benchmark studies only" in tex2


def test_tex_needs_something() -> None:
    with pytest.raises(EmbedlabError, match="no results"):
        render_tex([])


# --------------------------------------------------------------------------------------------- figures


@pytest.mark.slow
def test_write_figures_pdf_and_png(seeded: Path, tmp_path: Path) -> None:
    from PIL import Image

    from embedlab.reports.paper_figures import write_figures

    write_study(tmp_path / "study")
    inputs = load_report_inputs([seeded, tmp_path / "study"])
    out = tmp_path / "figs"
    paths = write_figures(inputs.results, out, studies=inputs.studies,
                          umap_kwargs={"n_epochs": 20, "n_neighbors": 8})
    names = [p.name for p in paths]
    assert len(names) == len(set(names)) and all(p.parent == out and p.is_file() for p in paths)
    assert all(re.fullmatch(r"[a-z0-9-]+\.(pdf|png)", n) for n in names), names
    stems = {n.rsplit(".", 1)[0] for n in names}
    assert {f"{s}.{ext}" for s in stems for ext in ("pdf", "png")} == set(names)  # both formats for every figure
    for prefix in ("umap-mm", "umap-m-1-50-2-x-a-b-c-d", "reliability-calibration-mm", "curves-robustness-pgd-linf",
                   "scores-ood-gaussian-energy", "scatter-align-uniform-uniformity-vs-alignment",
                   "training-train-loss", "training-val-accuracy", "confusion-mm", "study-toy-depth"):
        assert any(s.startswith(prefix) for s in stems), (prefix, sorted(stems))
    for p in paths:
        if p.suffix == ".png":
            with Image.open(p) as img:
                img.load()
                assert img.width > 0 and img.height > 0
                if not p.name.startswith("study-"):  # the study's figure is its own (a 4x4 test image)
                    assert img.width > 100 and img.height > 100 and len(np.unique(np.asarray(img))) > 2
        else:
            assert p.read_bytes().startswith(b"%PDF")
    again = write_figures(inputs.results, tmp_path / "figs2", studies=inputs.studies,
                          umap_kwargs={"n_epochs": 20, "n_neighbors": 8})
    assert [p.name for p in again] == names  # stable names


def test_write_figures_malformed_plot_is_one_line(tmp_path: Path) -> None:
    from embedlab.reports.paper_figures import write_figures

    d = write_results(tmp_path, "m", metrics={"accuracy": (0.5, True)}, plots=True, n_per_class=5)
    data = json.loads((d / "results.json").read_text())
    data["plots"]["robustness"] = {"pgd": {"eps": [1, 2], "accuracy": ["a", "b"]}}
    (d / "results.json").write_text(json.dumps(data))
    with pytest.raises(EmbedlabError) as err:
        write_figures(load_results([d]), tmp_path / "figs", umap_kwargs={"n_epochs": 10})
    assert str(err.value).startswith(f"malformed 'robustness' plot data in {d / 'results.json'}: ")
    assert "\n" not in str(err.value)
    with pytest.raises(EmbedlabError, match="bogus"):
        write_figures(load_results([d]), tmp_path / "figs", umap_kwargs={"bogus": 1})
    (tmp_path / "file").write_text("x")
    with pytest.raises(EmbedlabError, match="not a folder"):
        write_figures(load_results([d]), tmp_path / "file")


def test_png_bytes_uses_pillow_and_keeps_pixels() -> None:
    from PIL import Image

    from embedlab.reports.svg import png_bytes

    rng = np.random.default_rng(1)
    for shape, mode in (((4, 6), "L"), ((4, 6, 1), "L"), ((4, 6, 3), "RGB"), ((4, 6, 4), "RGBA")):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        data = png_bytes(img)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as back:
            assert back.mode == mode and np.array_equal(np.asarray(back).reshape(img.shape), img)
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2), np.float32))
    assert N_PER_CLASS  # the shared fixtures' size


def test_write_figures_draws_v2_kinds_by_kind(tmp_path: Path) -> None:
    from PIL import Image

    from embedlab.reports.paper_figures import write_figures
    from test_reports import CLASSES, as_v2, v2_metric

    d = write_results(tmp_path, "m", metrics={}, n_per_class=6, history=False)
    as_v2(d, metrics={"mmlb": v2_metric(0.2, False, "mmlb", "convex", "", "MMLB")},
          sections={"convex": {"title": "Convexity", "note": ""}},
          plots={"mmlb": {"kind": "bars", "x_label": "class", "y_label": "rate",
                          "bars": {c: 0.1 * (i + 1) for i, c in enumerate(CLASSES)}},
                 "sweep": {"kind": "curves", "x_label": "f", "y_label": "gain", "section": "convex",
                           "curves": {"gain/odd name": {"x": [1, 2, 3], "y": [3.0, 2.0, 5.0], "note": "Hz"}}},
                 "later": {"kind": "hologram"}})
    paths = write_figures(load_results([d]), tmp_path / "figs", umap_kwargs={"n_epochs": 10})
    stems = sorted({p.stem for p in paths})
    assert stems == ["bars-convex", "confusion-m", "curves-convex-gain-odd-name", "umap-m"], stems
    with Image.open(tmp_path / "figs" / "bars-convex.png") as img:
        assert img.width > 100


def test_layouts_are_computed_once_for_report_and_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedlab.reports import figures as F
    from embedlab.reports.html import render_report
    from embedlab.reports.paper_figures import write_figures

    calls: list[int] = []
    real = F.umap_layouts

    def counting(inputs: Any, settings: Any, workers: Any = None) -> Any:
        calls.append(len(inputs))
        return real(inputs, settings, workers)

    monkeypatch.setattr(F, "umap_layouts", counting)
    monkeypatch.setattr(F, "_LAYOUTS", {})
    d = write_results(tmp_path, "m", metrics={"accuracy": (0.5, True)}, n_per_class=6, history=False)
    results = load_results([d])
    render_report(results, tmp_path / "r.html", umap_kwargs={"n_epochs": 10, "seed": 4})
    write_figures(results, tmp_path / "figs", umap_kwargs={"n_epochs": 10, "seed": 4})
    assert calls == [1]  # the figures reuse the report's layout
    write_figures(results, tmp_path / "figs2", umap_kwargs={"n_epochs": 10, "seed": 5})
    assert calls == [1, 1]  # other settings: a new layout
