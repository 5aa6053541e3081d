"""A full disk for real (issue #16, items 4 and 5): a tiny tmpfs mounted for the test, not a faked OSError.

Extraction into the embedding cache and the training state both hit ENOSPC on a real file system and must end with
one line on stderr and exit status 2 (not SIGBUS, not a traceback). Mounting needs root (or a user namespace): where
the test cannot mount, it skips and says why.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def small_fs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or sys.platform != "linux":
        pytest.skip("needs Linux mount(8) to make a small tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "embedlab", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], where: Path) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "No space left on device" in lines[0] and str(where) in lines[0], lines[0]
    assert ".tmp" not in lines[0] and ".partial" not in lines[0], lines[0]  # the user's path, not a temporary
    return lines[0]


@pytest.mark.slow
def test_full_cache_filesystem_during_extraction_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _cli("train", "--dataset", "digits", "--epochs", "1", "--out", str(run), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with small_fs(tmp_path / "cache", "48k") as cache:
        proc = _cli("analyze", str(run), "--out", str(tmp_path / "res"), "--analyses", "knn", "--cache-dir",
                    str(cache), "--no-progress", cwd=tmp_path)
        line = _one_line_exit_2(proc, cache)
        assert "MiB" in line and "--cache-dir" in line
        assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no partial entry left behind
    # with room, the same command works (nothing half-written is reused)
    proc = _cli("analyze", str(run), "--out", str(tmp_path / "res"), "--analyses", "knn", "--cache-dir",
                str(tmp_path / "big"), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_full_disk_while_writing_the_training_state_is_one_line(tmp_path: Path) -> None:
    # 400 kB: room for the weights and metadata of the first epoch (about 150 kB each) but not for train_state.pt,
    # which also holds the optimizer's momentum buffers
    with small_fs(tmp_path / "out", "400k") as out:
        proc = _cli("train", "--dataset", "digits", "--epochs", "3", "--out", str(out / "run"), "--no-progress",
                    cwd=tmp_path)
        _one_line_exit_2(proc, out / "run")
        assert not [p.name for p in (out / "run").iterdir() if p.name.endswith(".tmp")]
