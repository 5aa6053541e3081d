"""Files outside the user's intent are never written or replaced (#24): an API ``name`` is never a path, a report
never replaces one of its inputs, and ``--figures DIR`` replaces nothing without ``--force`` and never writes
through a symbolic link."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import embedlab
from embedlab.cli import main
from tests.test_hostile_input import _error, _outcome as _run

pytestmark = pytest.mark.usefixtures("one_thread")

UMAP = ("--umap-epochs", "10", "--umap-neighbors", "5")


def _arrays() -> dict:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    z = (rng.normal(size=(24, 4)) + 3 * np.eye(4)[y]).astype(np.float32)
    return {"embeddings": z, "labels": y, "logits": (z[:, :3] * 2).astype(np.float32)}


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("res")
    embedlab.evaluate(train=_arrays(), test=_arrays(), name="emb", analyses="knn,calibration", out=root)
    return root


def _state(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.lstat().st_ino, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(folder.iterdir())}


def test_an_api_name_with_a_path_never_writes_outside_out(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where evaluate's temporary folders are made
    victim = tmp_path / "victim"
    for name in ("../escaped", str(victim)):
        r = embedlab.evaluate(test=_arrays(), name=name, analyses="align_uniform", out=tmp_path / "out")
        assert r.path.parent == tmp_path / "out"
    assert not (scratch / "escaped.npz").exists()  # was written: tmp/embedlab-arrays-*/../escaped.npz
    assert not Path(f"{victim}.npz").exists()  # was written: an absolute name replaced the temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmp"]
    assert all(out in p.parents for p in tmp_path.rglob("*.npz") for out in [tmp_path / "out"])
    assert not [p for p in scratch.iterdir() if p.name.startswith("embedlab-")]  # temporaries removed


def test_a_report_never_replaces_one_of_its_inputs(res, tmp_path, capsys):
    for target in (res / "emb" / "results.json", res / "emb" / "arrays.npz"):
        before = target.read_bytes()
        assert _error(capsys, "report", res, "-o", target, "--force", "--format", "md") == (
            f"embedlab: error: {target} is one of the report's inputs; choose another -o (--force never replaces an "
            f"input)")
        assert target.read_bytes() == before  # was replaced by the Markdown report
    link = tmp_path / "hard.md"
    os.link(res / "emb" / "results.json", link)  # the same file under another name
    assert "is one of the report's inputs" in _error(capsys, "report", res, "-o", link, "--force", "--format", "md")
    # a new file beside the inputs is fine
    assert _run(capsys, "report", res, "-o", res / "emb" / "summary.md", "--format", "md")[0] == 0
    (res / "emb" / "summary.md").unlink()


def test_figures_are_never_replaced_without_force(res, tmp_path, capsys):
    figs = tmp_path / "figs"
    assert _run(capsys, "report", res, "-o", tmp_path / "r1.md", "--format", "md", "--figures", figs, *UMAP)[0] == 0
    first = _state(figs)
    assert first and all(n.endswith((".pdf", ".png")) for n in first)
    line = _error(capsys, "report", res, "-o", tmp_path / "r2.md", "--format", "md", "--figures", figs, *UMAP)
    existing = sorted(first)[0]
    assert line.startswith(f"embedlab: error: {figs}/") and line.endswith(
        " already exists; choose another --figures or pass --force to replace the figures there")
    assert line.split(f"{figs}/")[1].split(" ")[0] in first, existing
    assert _state(figs) == first  # was: every figure silently replaced
    assert not (tmp_path / "r2.md").exists()  # nothing written: the report comes after the figures
    rc, _ = _run(capsys, "report", res, "-o", tmp_path / "r2.md", "--format", "md", "--figures", figs, "--force",
                 *UMAP)
    assert rc == 0 and set(_state(figs)) == set(first)  # replaced, no hidden staging folder left


def test_figures_are_never_written_through_a_symbolic_link(res, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    linked = tmp_path / "linked"
    linked.symlink_to(real, target_is_directory=True)
    assert _error(capsys, "report", res, "-o", tmp_path / "r.md", "--format", "md", "--figures", linked, "--force",
                  *UMAP) == (f"embedlab: error: figures folder {linked} is a symbolic link; embedlab never writes "
                             f"through one (give the folder it points to, or another --figures)")
    assert list(real.iterdir()) == [] and not (tmp_path / "r.md").exists()
    figs = tmp_path / "figs"
    assert _run(capsys, "report", res, "-o", tmp_path / "r.md", "--format", "md", "--figures", figs, *UMAP)[0] == 0
    one = sorted(figs.iterdir())[0]
    victim = tmp_path / "victim.txt"
    victim.write_text("not a figure")
    one.unlink()
    one.symlink_to(victim)
    assert _error(capsys, "report", res, "-o", tmp_path / "r2.md", "--format", "md", "--figures", figs, "--force",
                  *UMAP) == (f"embedlab: error: {one} is a symbolic link; embedlab never writes through one (remove "
                             f"it or choose another --figures)")
    assert victim.read_text() == "not a figure" and one.is_symlink()  # was overwritten through the link
    assert not any(p.name.startswith(".embedlab-figures-") for p in figs.iterdir())
