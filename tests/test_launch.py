"""Grids through submitit (issue #26): ``embedlab study benchmark --launcher local|slurm --jobs N``.

The local launcher runs real submitit jobs (processes) on this machine; the SLURM path is checked for the submitit
parameters it builds and, end to end, with submitit's in-process debug executor standing in for the cluster."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from embedlab.cli import main

submitit = pytest.importorskip("submitit")
pytestmark = pytest.mark.usefixtures("one_thread")

GRID = ["study", "benchmark", "--recipe", "digits", "--epochs", "2", "--subset", "200", "--seeds", "0,1",
        "--methods", "erm,mixup", "--analyses", "accuracy,knn", "--set", "deterministic=true", "--device", "cpu",
        "--no-progress", "--no-report"]


def _metrics(path: Path) -> dict:
    res = json.loads((path / "benchmark.json").read_text())
    return {r["label"]: {m: e["per_seed"] for m, e in r["metrics"].items()} for r in res["rows"]}


@pytest.mark.slow
def test_local_launcher_gives_the_in_process_numbers_resumes_after_a_kill_and_reuses_finished_runs(
        tmp_path, capsys, monkeypatch):
    import embedlab.launch as L

    monkeypatch.setattr(L.os, "cpu_count", lambda: 2)  # 2 jobs on "2 cores": 1 torch thread each, as in-process
    here, pooled = tmp_path / "here", tmp_path / "pooled"
    assert main(GRID + ["--out", str(here)]) == 0
    # every job kills itself (SIGKILL) after its 5th optimizer step, i.e. in epoch 2 of 3 steps each
    monkeypatch.setenv("EMBEDLAB_TEST_KILL_AT_STEP", "5")
    assert main(GRID + ["--out", str(pooled), "--launcher", "local", "--jobs", "2"]) == 2
    captured = capsys.readouterr()
    assert "4 of 4 runs failed" in captured.err and "FAILED" in captured.out and ".submitit" in captured.out
    for run in (pooled / "runs").glob("*/seed*"):
        assert json.loads((run / "meta.json").read_text())["epoch"] == 1  # the first epoch survived the kill
    monkeypatch.delenv("EMBEDLAB_TEST_KILL_AT_STEP")
    assert main(GRID + ["--out", str(pooled), "--launcher", "local", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "at most 2 at once" in out and "pending 0 / running 0 / done 4 / failed 0" in out
    for run in (pooled / "runs").glob("*/seed*"):
        meta = json.loads((run / "meta.json").read_text())
        assert meta["epoch"] == 2 and meta["resumed"][0]["after_epoch"] == 1  # resumed, not restarted
    assert _metrics(pooled) == _metrics(here)
    assert json.loads((pooled / "benchmark.json").read_text())["complete"]
    # a finished grid: nothing is submitted again, benchmark.json is reassembled from the folders
    assert main(GRID + ["--out", str(pooled), "--launcher", "local", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs are finished and analysed: reused" in out and "started" not in out
    assert main(["study", "status", str(pooled)]) == 0
    assert "done 4 (of 4 runs)" in capsys.readouterr().out


class _Handle:
    def __init__(self, fn, args, outcome):
        self.job_id, self.fn, self.args, self.outcome, self.paths = "7", fn, args, outcome, None

    def done(self):
        return True

    def result(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.fn(*self.args)


class _Executor:
    """Stands in for submitit's LocalExecutor: the first submission of each run fails as a held run does."""

    def __init__(self):
        self.submitted: list[str] = []

    def submit(self, fn, job, *args):
        first = job.name not in self.submitted
        self.submitted.append(job.name)
        busy = RuntimeError("Traceback ...\nBusyError: another embedlab process is training X now (lock L); wait")
        return _Handle(lambda *a: "ok", (job, *args), busy if first else None)


def test_a_job_whose_run_is_held_elsewhere_is_submitted_again_not_failed(tmp_path, monkeypatch):
    from embedlab.launch import make_launcher
    from embedlab.trainers.studies.benchmark import GridJob

    jobs = [GridJob("erm", s, {"epochs": 1}, str(tmp_path / "runs" / "erm" / f"seed{s}"), f"erm-seed{s}")
            for s in (0, 1)]
    lines: list[str] = []
    ex = _Executor()
    launch = make_launcher("local", tmp_path, {}, jobs=2, poll_seconds=0, log=lines.append, executor=ex)
    finished: list[str] = []
    assert launch(jobs, lambda job: finished.append(job.name)) == {}
    assert sorted(finished) == ["erm-seed0", "erm-seed1"]  # each run reported once, when it is done
    assert ex.submitted == ["erm-seed0", "erm-seed1", "erm-seed0", "erm-seed1"]
    assert sum("held by another process" in line for line in lines) == 2


def test_slurm_parameters_and_a_grid_through_the_debug_executor(tmp_path, capsys, monkeypatch):
    from embedlab import api
    from embedlab.launch import SlurmOptions, make_launcher

    opts = SlurmOptions(partition="gpu", time_min=90, gpus_per_job=2, cpus_per_job=10, mem_gb=32,
                        additional={"qos": "high"})
    assert opts.parameters(8) == {"timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 2,
                                  "cpus_per_task": 10, "slurm_array_parallelism": 8, "name": "embedlab",
                                  "slurm_partition": "gpu", "mem_gb": 32.0,
                                  "slurm_additional_parameters": {"qos": "high"}}
    # the names are ones submitit's SLURM executor accepts, and they reach the sbatch file (submitit only needs to
    # find an `srun` to build its executor: a stand-in on PATH; nothing is submitted)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    ex = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="slurm")
    ex.update_parameters(**opts.parameters(8))
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--cpus-per-task=10", "--mem=32GB",
                 "--qos=high", "--job-name=embedlab"):
        assert f"#SBATCH {line}" in text, line
    assert ex._executor.parameters["array_parallelism"] == 8

    debug = submitit.AutoExecutor(folder=tmp_path / "dbg", cluster="debug")
    out = tmp_path / "grid"
    cfg = api.train_config(recipe="digits", overrides={"epochs": 1, "device": "cpu",
                                                       "dataset_options": {"train_subset": 200}})
    options = {"analyses": "accuracy", "device": "cpu"}
    launch = make_launcher("slurm", out, options, jobs=2, slurm=SlurmOptions(gpus_per_job=0), poll_seconds=0,
                           executor=debug)
    res = api.study("benchmark", out, config=cfg, methods="erm", seeds=(0,), analyses="accuracy", device="cpu",
                    progress=False, launch=launch)
    assert res["complete"] and res["rows"][0]["metrics"]["accuracy"]["n"] == 1
    assert "as a SLURM job array" in capsys.readouterr().out


def test_launcher_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(GRID + ["--out", str(tmp_path / "a"), "--jobs", "2"]) == 2
    assert "--jobs needs --launcher local or slurm" in capsys.readouterr().err
    assert main(["study", "status", str(tmp_path / "none")]) == 2
    assert "holds no grid" in capsys.readouterr().err
    import builtins

    real = builtins.__import__

    def no_submitit(name, *a, **k):
        if name == "submitit":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    assert main(GRID + ["--out", str(tmp_path / "b"), "--launcher", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'embedlab[cluster]'" in err
