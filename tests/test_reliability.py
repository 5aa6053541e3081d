"""Faults (issue #8): loading a file never executes code, and a SIGKILL or a full disk at the worst moment loses
nothing, leaves nothing that is taken for a good file, and the same command (or ``--resume``) finishes the work.
docs/RELIABILITY.md lists the promises and the tests that show them.

Faults are injected inside :func:`embedlab.io.atomic_write`, the one function through which embedlab writes every
file, by :class:`Faults`: it stands in for ``os`` and ``tempfile`` *in that module only* and, on the n-th write of a
file named ``target``, strikes when the temporary file is opened ("open", before any byte), half-way through its
bytes ("write") or after the fsync, right before the rename ("rename"). A strike is a SIGKILL of the process (no
cleanup runs) or ``OSError(ENOSPC)`` (a full disk). SIGKILLs happen in subprocesses that run the real CLI
(``python -c`` with this class's source); they start together, because each spends seconds importing torch on a
loaded 2-core machine, and each test then checks one of them.

Related tests elsewhere: tests/test_resume.py (SIGKILL in the middle of a training epoch, bit-identical resume),
tests/test_store.py::test_cache_reuse_and_rebuild (a corrupted cache entry is detected and rebuilt),
tests/test_external.py::test_malicious_pickle_is_refused_and_never_runs,
tests/test_checkpoint.py::test_pickle_is_not_loaded.
"""
from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedlab.checkpoint import load_checkpoint, load_model
from embedlab.cli import main
from embedlab.errors import EmbedlabError
from embedlab.store import cached_extract, extract, read_entry
from embedlab.trainers import STATE_FILE, state_digest
from embedlab.trainers.state import load_state

# a small deterministic run: cnn-gap of width 4 on digits, 3 epochs (about a second on one thread)
TRAIN = ["train", "--epochs", "3", "--model-opt", "width=4", "--deterministic", "--device", "cpu", "--no-progress"]
ENOSPC = "No space left on device"


@contextlib.contextmanager
def _threads(n: int):
    """``n`` torch threads inside the block (bit-identical training needs the same count in every run)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(autouse=True)
def _one_thread():
    with _threads(1):  # module fixtures run before this one: they set it themselves
        yield


class Faults:
    """Fault injection into :mod:`embedlab.io`; ``install(setattr)`` replaces that module's ``os`` and ``tempfile``
    (pass ``monkeypatch.setattr`` in-process, so that the test undoes it)."""

    class _Stand:
        """A module with some functions replaced."""

        def __init__(self, real, **replaced):
            self._real = real
            self.__dict__.update(replaced)

        def __getattr__(self, name):
            return getattr(self._real, name)

    class _Torn:
        """A file whose first write stops half-way (the half is flushed to disk), then strikes."""

        def __init__(self, fh, faults):
            self._fh, self._faults = fh, faults

        def write(self, data):
            data = bytes(data)
            self._fh.write(data[: max(1, len(data) // 2)])
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._faults.strike()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._fh.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def __init__(self, target, when, nth=1, fault="sigkill"):
        assert when in ("open", "write", "rename") and fault in ("sigkill", "enospc")
        self.target, self.when, self.nth, self.fault = target, when, nth, fault
        self.seen, self.tmp_of_fd, self.doomed = 0, {}, None

    def install(self, set_attr=setattr):
        import embedlab.io

        set_attr(embedlab.io, "tempfile", Faults._Stand(tempfile, mkstemp=self.mkstemp))
        set_attr(embedlab.io, "os", Faults._Stand(os, fdopen=self.fdopen, replace=self.replace))

    def strike(self):
        if self.fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device")

    def mkstemp(self, *args, **kwargs):
        fd, tmp = tempfile.mkstemp(*args, **kwargs)
        self.tmp_of_fd[fd] = tmp
        return fd, tmp

    def fdopen(self, fd, *args, **kwargs):
        fh = os.fdopen(fd, *args, **kwargs)
        tmp = self.tmp_of_fd.pop(fd, "")
        if not os.path.basename(tmp).startswith(f".{self.target}."):
            return fh
        self.seen += 1
        if self.seen != self.nth:
            return fh
        if self.when == "open":
            self.strike()
        if self.when == "rename":
            self.doomed = tmp
            return fh
        return Faults._Torn(fh, self)

    def replace(self, src, dst):
        if src == self.doomed:
            self.strike()
        return os.replace(src, dst)


_CHILD = """
import errno, json, os, signal, sys, tempfile
{faults}
Faults(**json.loads(os.environ["EMBEDLAB_TEST_FAULT"])).install()
{body}
"""


def _spawn(body: str, **fault) -> subprocess.Popen:
    """Run the Python code ``body`` in a fresh process with ``Faults(**fault)`` installed."""
    script = _CHILD.format(faults=textwrap.dedent(inspect.getsource(Faults)), body=body)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EMBEDLAB_TEST_FAULT": json.dumps(fault)}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _cli(*commands: list) -> str:
    """Child code running ``embedlab`` commands one after the other, as ``python -m embedlab`` would."""
    argvs = [[str(a) for a in c] for c in commands]
    return (f"from embedlab.cli import main\nfor argv in {argvs!r}:\n"
            "    rc = main(argv)\n    if rc:\n        raise SystemExit(rc)")


def _cache_inputs():
    """A small model and two splits to extract (imports inside: this function's source also runs in a child)."""
    import torch

    from embedlab.data import TensorData
    from embedlab.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-gap", 3, (1, 8, 8), width=4)
    g = torch.Generator().manual_seed(1)
    return model, {split: TensorData(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
                   for split in ("test", "train")}


_EXTRACT = """
from embedlab.store import cached_extract
model, data = _cache_inputs()
for split in ("test", "train"):
    cached_extract(model, "model-sha256", {{"name": "toy"}}, split, data[split], {cache!r}, batch_size=16)
"""


def _killed(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err  # killed at the chosen moment, not failed nor finished


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _digest(run: Path) -> str:
    return state_digest(load_file(run / "model.safetensors"))


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    z = rng.normal(size=(60, 5)) + 3 * np.eye(5)[y]
    np.savez(path, train_embeddings=z, train_labels=y, test_embeddings=z[::2], test_labels=y[::2],
             test_logits=2.0 * np.eye(3)[y[::2]])
    return path


@pytest.fixture(scope="module", autouse=True)
def faults(tmp_path_factory):
    """Every killed process of this module, started at once when the module starts: ``(root, {name: Popen})``."""
    root = tmp_path_factory.mktemp("faults")
    with _threads(1):
        assert main(["analyze", str(_npz(root / "emb.npz")), "--out", str(root / "results"), "--analyses",
                     "accuracy,knn", "--no-progress"]) == 0
    report = ["report", root / "results", "--max-points", "3"]  # ≤ 3 points: no UMAP to compute
    for name in ("killed", "full"):
        assert main([str(a) for a in (*report, "-o", root / name / "report.html", "--title", "old report")]) == 0
    extract = f"{textwrap.dedent(inspect.getsource(_cache_inputs))}\n{_EXTRACT.format(cache=str(root / 'cache'))}"
    procs = {
        # the epoch-2 training state (the commit point) torn half-way through its bytes
        "state": _spawn(_cli([*TRAIN, "--out", root / "state"]), target=STATE_FILE, when="write", nth=2),
        # the epoch-2 checkpoint complete on disk, killed right before its rename
        "checkpoint": _spawn(_cli([*TRAIN, "--out", root / "checkpoint"]), target="model.safetensors", when="rename",
                             nth=2),
        # extraction: the test split cached (1st done.json); the train split's arrays written, killed before its
        # done.json (the 2nd) is begun
        "cache": _spawn(extract, target="done.json", when="open", nth=2),
        "report": _spawn(_cli([*report, "-o", root / "killed" / "report.html", "--force", "--title", "new report"]),
                         target="report.html", when="write"),
        "full": _spawn(_cli([*report, "-o", root / "full" / "report.html", "--force", "--title", "new report"]),
                       target="report.html", when="write", fault="enospc"),
    }
    yield root, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def reference(faults):
    """The same run as the killed ones, uninterrupted (here, while they run)."""
    root, _ = faults
    with _threads(1):
        assert main([*TRAIN, "--out", str(root / "reference")]) == 0
    return _digest(root / "reference")


# ============================================================================================ untrusted files
class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_training_state_given_to_resume_is_refused_and_never_runs(tmp_path, capsys):
    marker, run = tmp_path / "pwned", tmp_path / "run"
    run.mkdir()
    torch.save({"format": "embedlab.train_state", "format_version": 1, "epoch": _Evil(marker)}, run / STATE_FILE)
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 2
    assert re.fullmatch(
        rf"embedlab: error: refusing to load training state {re.escape(str(run / STATE_FILE))}: not a plain tensor "
        r"file \(.*\bsystem\b.*\); embedlab never runs code from a file", _one_line(capsys.readouterr().err))
    assert not marker.exists() and sorted(p.name for p in run.iterdir()) == [STATE_FILE]  # nothing ran, nothing written
    torch.load(run / STATE_FILE, weights_only=False)  # control: the payload is live when a loader trusts the file
    assert marker.exists()


@pytest.mark.parametrize("layout", ["raw pickle as .safetensors", "torch.save as run/model.safetensors",
                                    "torch.save as .pt"])
def test_crafted_pickle_given_as_checkpoint_is_refused_and_never_runs(tmp_path, capsys, layout):
    marker = tmp_path / "pwned"
    payload = {"head.weight": _Evil(marker)}
    if layout.startswith("raw"):
        path = tmp_path / "evil.safetensors"
        path.write_bytes(pickle.dumps(payload))
    else:
        path = tmp_path / "run" / "model.safetensors" if "run/" in layout else tmp_path / "evil.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(payload, path)
    arg = path.parent if "run/" in layout else path
    assert main(["analyze", str(arg), "--out", str(tmp_path / "res"), "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    if path.suffix == ".pt":  # refused by its name before it is opened: a .pt needs a JSON spec
        assert err.startswith(f"embedlab: error: {path} is not an embedlab checkpoint: a .pt file"), err
    else:
        assert re.fullmatch(rf"embedlab: error: cannot read checkpoint {re.escape(str(path))}: .+ \(truncated or not "
                            r"a safetensors file\?\)", err)
    assert not marker.exists() and not (tmp_path / "res").exists()
    with open(path, "rb") as fh:  # control: the payload is live when a loader trusts the file
        pickle.load(fh) if layout.startswith("raw") else torch.load(fh, weights_only=False)
    assert marker.exists()


# ============================================================================================ SIGKILL
def test_sigkill_while_writing_the_training_state_keeps_the_previous_one(faults, reference):
    root, procs = faults
    _killed(procs["state"])
    run = root / "state"
    assert load_state(run / STATE_FILE)["epoch"] == 1  # the previous commit point, intact
    (torn,) = run.glob(f".{STATE_FILE}.*.tmp")  # the half-written state: never under the real name, unreadable
    with pytest.raises(EmbedlabError, match="cannot read training state"):
        load_state(torn)
    assert load_model(run)[1]["epoch"] == 1 and json.loads((run / "meta.json").read_text())["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1

    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0  # the same command continues after epoch 1
    meta = json.loads((run / "meta.json").read_text())
    assert meta["epoch"] == 3 and [r["after_epoch"] for r in meta["resumed"]] == [1]
    assert _digest(run) == reference  # nothing lost: bit-identical to the uninterrupted run


def test_sigkill_before_renaming_a_checkpoint_keeps_the_previous_one(faults, reference):
    root, procs = faults
    _killed(procs["checkpoint"])
    run = root / "checkpoint"
    assert load_state(run / STATE_FILE)["epoch"] == 2  # the commit point of epoch 2 was reached
    _, meta = load_model(run)  # the previous checkpoint: complete, loads strictly
    assert meta["epoch"] == 1
    (unrenamed,) = run.glob(".model.safetensors.*.tmp")  # epoch 2's weights, never taken for model.safetensors
    assert load_checkpoint(unrenamed)[1]["epoch"] == 2 and load_checkpoint(run)[1]["epoch"] == 1

    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0  # rewrites epoch 2's files from the state, goes on
    meta = json.loads((run / "meta.json").read_text())
    assert meta["epoch"] == 3 and [r["after_epoch"] for r in meta["resumed"]] == [2]
    assert _digest(run) == reference


def test_sigkill_during_extraction_caching_keeps_complete_entries_and_rebuilds_the_rest(faults):
    root, procs = faults
    _killed(procs["cache"])
    cache = root / "cache"
    (complete,) = [d for d in cache.iterdir() if not d.name.startswith(".")]  # the test split, cached before
    assert read_entry(complete) is not None  # verified against the SHA-256 in its done.json
    (partial,) = [d for d in cache.iterdir() if ".partial-" in d.name]  # the train split: arrays, no done.json
    assert {p.name for p in partial.glob("*.npy")} == {"embeddings.npy", "logits.npy", "labels.npy"}
    assert not (partial / "done.json").exists()
    stamp = (complete / "done.json").stat().st_mtime_ns

    model, data = _cache_inputs()
    hits = {split: cached_extract(model, "model-sha256", {"name": "toy"}, split, data[split], cache, batch_size=16)
            for split in ("test", "train")}  # the same calls again
    assert hits["test"][1] and not hits["train"][1]  # the complete entry reused, the interrupted one redone
    assert (complete / "done.json").stat().st_mtime_ns == stamp
    entries = [d for d in cache.iterdir() if not d.name.startswith(".")]
    assert len(entries) == 2 and all(read_entry(d) is not None for d in entries)
    for split, (got, _) in hits.items():  # and both equal an extraction that was never interrupted
        ref = extract(model, data[split], batch_size=16)
        assert np.array_equal(got.embeddings, ref.embeddings) and np.array_equal(got.logits, ref.logits)
        assert np.array_equal(got.labels, ref.labels)


def test_sigkill_while_writing_a_report_keeps_the_previous_one(faults, capsys):
    root, procs = faults
    html = root / "killed" / "report.html"
    before = html.read_bytes()
    _killed(procs["report"])
    assert html.read_bytes() == before and b"old report" in before  # the previous report, intact
    (torn,) = html.parent.glob(".report.html.*.tmp")  # the torn new one: never under the real name
    assert 0 < torn.stat().st_size < len(before)
    assert main(["report", str(root / "results"), "-o", str(html), "--force", "--max-points", "3", "--title",
                 "new report"]) == 0
    assert b"new report" in html.read_bytes()


# ============================================================================================ full disk
def test_full_disk_while_writing_a_report_is_one_line_in_a_real_process(faults):
    root, procs = faults
    html = root / "full" / "report.html"
    before = html.read_bytes()
    _, err = procs["full"].communicate(timeout=300)
    assert procs["full"].returncode == 2
    assert _one_line(err) == f"embedlab: error: {html}: {ENOSPC}"
    assert html.read_bytes() == before and not list(html.parent.glob(".*.tmp"))


def test_full_disk_while_training_keeps_the_last_epoch_and_resume_continues(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    Faults(STATE_FILE, "write", nth=2, fault="enospc").install(monkeypatch.setattr)
    assert main([*TRAIN, "--out", str(run)]) == 2
    assert _one_line(capsys.readouterr().err) == f"embedlab: error: {run / STATE_FILE}: {ENOSPC}"
    assert load_state(run / STATE_FILE)["epoch"] == 1 and load_model(run)[1]["epoch"] == 1
    assert not list(run.glob(".*.tmp"))  # the partial file was removed
    monkeypatch.undo()  # space freed: the same command with --resume finishes the run
    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "meta.json").read_text())["epoch"] == 3


def test_full_disk_while_analyzing_keeps_the_previous_results(tmp_path, monkeypatch, capsys):
    argv = ["analyze", str(_npz(tmp_path / "emb.npz")), "--out", str(tmp_path / "res"), "--analyses", "knn",
            "--no-progress"]
    assert main(argv) == 0
    out = tmp_path / "res" / "emb"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    Faults("arrays.npz", "write", fault="enospc").install(monkeypatch.setattr)
    assert main(argv) == 2  # the same model again: its results are refreshed in place, or not at all
    assert _one_line(capsys.readouterr().err) == f"embedlab: error: {out / 'arrays.npz'}: {ENOSPC}"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # intact, and no temporary file left
