"""--resume after SIGKILL in the middle of an epoch ends bit-identical to an uninterrupted run (CPU, deterministic)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from embedlab.cli import main
from embedlab.trainers import STATE_FILE, state_digest

# digits: 1257 training examples, batch 64 → 19 steps per epoch; step 25 is the 6th step of epoch 2.
# multimix draws Dirichlet weights and (with p = 0.5) falls back to mixup: the mixing generator matters.
ARGS = ["train", "--epochs", "3", "--method", "multimix", "-O", "n=100", "--deterministic", "--device", "cpu",
        "--no-progress"]
KILL_STEP = 25


pytestmark = pytest.mark.usefixtures("one_thread")


def _embedlab(*argv: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embedlab", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env})


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    victim = _embedlab(*ARGS, "--out", str(killed), EMBEDLAB_TEST_KILL_AT_STEP=str(KILL_STEP))
    assert main([*ARGS, "--out", str(full)]) == 0  # the uninterrupted run, here, while the other one runs
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == -9, err  # SIGKILL: no cleanup ran

    # the killed run left epoch 1 complete and consistent, and a state that loads without running code
    state = torch.load(killed / STATE_FILE, weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 19 and state["world_size"] == 1
    assert set(state["rng"][0]) == {"torch", "mix", "loader", "numpy", "python"}
    assert set(state) >= {"model", "optimizer", "scheduler", "config", "meta"}
    assert json.loads((killed / "meta.json").read_text())["epoch"] == 1
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1
    assert not list(killed.glob(".*.tmp"))

    proc = _embedlab(*ARGS, "--out", str(killed), "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert state_digest(a) == state_digest(b)
    hist = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, killed)]
    strip = [[{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in h] for h in hist]
    assert strip[0] == strip[1] and len(strip[0]) == 3
    meta = json.loads((killed / "meta.json").read_text())
    assert meta["epoch"] == 3 and [r["after_epoch"] for r in meta["resumed"]] == [1]
    assert (killed / "tensorboard").is_dir()

    # a different config is refused, naming the keys; a finished run resumes to nothing
    before = (killed / "model.safetensors").read_bytes()
    args = [a if a != "3" else "4" for a in ARGS]
    assert main([*args, "--set", "lr=0.1", "--out", str(killed), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (
        f"embedlab: error: --resume: the config differs from the run saved in {killed} in epochs (saved 3, now 4), "
        f"lr (saved 0.05, now 0.1); resume with the same options, or start a new run (another --out, or --force)")
    assert main([*ARGS, "--out", str(killed), "--resume"]) == 0
    assert "is complete (3 epochs); nothing to resume" in capsys.readouterr().out
    assert (killed / "model.safetensors").read_bytes() == before


def test_resume_without_a_run_starts_one_and_refuses_foreign_checkpoints(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "meta.json").read_text())["epoch"] == 1 and "resumed" not in json.loads(
        (out / "meta.json").read_text())
    (out / STATE_FILE).unlink()
    assert main(["train", "--epochs", "1", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert f"holds a checkpoint but no {STATE_FILE} to resume from" in capsys.readouterr().err
    assert main(["train", "--epochs", "1", "--out", str(out), "--resume", "--force"]) == 2
    assert "give only one of them" in capsys.readouterr().err
