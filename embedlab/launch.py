"""Launchers for method × seed grids (``embedlab study benchmark --launcher local|slurm``), through **submitit**.

Every run of the grid is one submitit job that trains the run (``resume=True``: epoch by epoch) and analyses it,
exactly as the in-process loop does (:func:`run_job`); the grid's state is its run and results folders, so the same
command after a crash, a cancel or a pre-emption submits only the runs that are not finished, and a finished grid is
summarised without submitting anything. A run folder is locked while it trains (``embedlab.io.exclusive``), so two
invocations never train the same run at once: a job that finds its run held waits and is submitted again.

``local``
    ``submitit.LocalExecutor``: up to ``jobs`` runs at once as processes of this machine. With CUDA devices, each job
    gets one (``CUDA_VISIBLE_DEVICES``, round robin); on CPU the cores are split between the jobs (torch threads =
    cores // jobs). submitit's LocalExecutor starts every job it is given at once, so the pool (at most ``jobs``
    submitted, the next when one ends) is here; everything else (process start, logs, results, errors) is
    submitit's.
``slurm``
    ``submitit.AutoExecutor(cluster="slurm")``: one job array, at most ``jobs`` running at once
    (``slurm_array_parallelism``), with the partition, time limit, GPUs, CPUs and memory per job and any further
    ``#SBATCH`` keys passed through. Each job is ``submitit.helpers.Checkpointable``: on pre-emption or time-out
    submitit requeues it, and the run resumes from its own last epoch.

Job logs: ``OUT/.submitit/<job id>_*``. A failed job is reported with its run name, the last line of its error and
its log path; the other runs go on.

The composition root of a grid job: it imports the trainers and the analyses (through :mod:`embedlab.api`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from embedlab.errors import EmbedlabError

LAUNCHERS = ("none", "local", "slurm")
WEEK_MIN = 7 * 24 * 60
BUSY = "another embedlab process is"


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What each SLURM job asks for. ``time_min``: wall-clock limit in minutes; ``mem_gb``: memory per job;
    ``additional``: further ``#SBATCH`` keys (``{"qos": "high", "account": "lab"}``), passed through as they are."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: float | None = None
    additional: dict[str, str] = dataclasses.field(default_factory=dict)

    def parameters(self, jobs: int) -> dict[str, Any]:
        """The ``executor.update_parameters`` keywords (submitit's names) for at most ``jobs`` runs at once."""
        p: dict[str, Any] = {"timeout_min": int(self.time_min), "nodes": 1, "tasks_per_node": 1,
                             "gpus_per_node": int(self.gpus_per_job), "cpus_per_task": int(self.cpus_per_job),
                             "slurm_array_parallelism": int(jobs), "name": "embedlab"}
        if self.partition:
            p["slurm_partition"] = self.partition
        if self.mem_gb is not None:
            p["mem_gb"] = float(self.mem_gb)
        if self.additional:
            p["slurm_additional_parameters"] = dict(self.additional)
        return p


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise EmbedlabError("--launcher local/slurm runs grids through submitit, an optional extra that is not "
                            "installed: pip install 'embedlab[cluster]'") from None
    return submitit


def run_job(job: Any, out: str, options: dict[str, Any], threads: int | None = None) -> str:
    """Train (resuming) and analyse one grid run in this process; returns its results folder. What every launched
    job calls, and the same steps the in-process loop takes."""
    import torch

    from embedlab import api
    from embedlab.config import TrainConfig
    from embedlab.trainers import train

    if threads:
        torch.set_num_threads(threads)
    analyze = api._study_analyzer(Path(out), "benchmark.json", {**options, "progress": False})
    ckpt = train(TrainConfig.from_dict(job.config), job.run, progress=False, resume=True)
    return str(analyze(ckpt, job.name))


def _checkpointable_job(submitit: Any) -> type:
    class Job(submitit.helpers.Checkpointable):
        """A grid run as a submitit job; ``checkpoint`` (submitit's requeue hook on pre-emption or time-out) resubmits
        the same call, which resumes the run from its last completed epoch."""

        def __call__(self, job: Any, out: str, options: dict[str, Any], threads: int | None = None) -> str:
            return run_job(job, out, options, threads)

    return Job


def finished(job: Any, out: Path) -> bool:
    """True when the run has all its epochs and results that may be reused as they are (same weights, unedited):
    nothing to submit."""
    import json

    from embedlab.io import digest_ok, sha256_file

    run, res = Path(job.run), out / "results" / job.name
    try:
        meta = json.loads((run / "meta.json").read_text())
        if meta.get("epoch") != job.config.get("epochs"):
            return False
        results = json.loads((res / "results.json").read_text())
        return bool(digest_ok(results)) and results["model"]["sha256"] == sha256_file(run / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def make_launcher(kind: str, out: str | os.PathLike[str], options: dict[str, Any], *, jobs: int = 1,
                  slurm: SlurmOptions | None = None, poll_seconds: float = 5.0, log: Callable[[str], None] = print,
                  executor: Any = None) -> Callable[[Sequence[Any]], dict[str, str]]:
    """A launcher for ``run_benchmark(launch=...)``: ``kind`` ``local`` or ``slurm`` (see the module doc).
    ``options`` are the study's analysis options (``analyses``, ``analysis_settings``, ``device``); ``executor``
    stands in for the submitit executor in tests (e.g. ``submitit.AutoExecutor(folder, cluster="debug")``)."""
    if kind not in ("local", "slurm"):
        raise EmbedlabError(f"--launcher: one of {', '.join(LAUNCHERS)}, got {kind!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise EmbedlabError(f"--jobs must be an integer >= 1, got {jobs!r}")
    submitit = _submitit()
    out = Path(out)
    folder = out / ".submitit" / "%j"
    opts = {k: v for k, v in options.items() if k in ("analyses", "analysis_settings", "device")}

    def launch(grid: Sequence[Any], on_done: Callable[[Any], None] | None = None) -> dict[str, str]:
        """Run ``grid``; ``on_done(job)`` after each run that is finished (reused or just done), so the grid's
        summary can be rewritten run by run."""
        done = on_done or (lambda job: None)
        todo = [j for j in grid if not finished(j, out)]
        skipped = len(grid) - len(todo)
        if skipped:
            log(f"[grid] {skipped} of {len(grid)} runs are finished and analysed: reused")
            for j in grid:
                if j not in todo:
                    done(j)
        if not todo:
            return {}
        if kind == "slurm":
            return _slurm(submitit, todo, out, opts, jobs, slurm or SlurmOptions(), folder, poll_seconds, log, executor,
                          done)
        return _local(submitit, todo, out, opts, jobs, folder, poll_seconds, log, executor, done)

    return launch


def _local(submitit: Any, todo: list[Any], out: Path, opts: dict[str, Any], n: int, folder: Path,
           poll_seconds: float, log: Callable[[str], None], executor: Any,
           on_done: Callable[[Any], None]) -> dict[str, str]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    ex = executor or submitit.LocalExecutor(folder=folder)
    queue = list(todo)
    running: dict[str, tuple[Any, Any, int | None]] = {}
    failures: dict[str, str] = {}
    done = 0
    slot = 0
    log(f"[grid] {len(todo)} runs, at most {n} at once on this machine "
        + (f"({gpus} GPU(s), one per job)" if gpus else f"(CPU, {threads} torch thread(s) per job)"))
    while queue or running:
        while queue and len(running) < n:
            job = queue.pop(0)
            gpu = None
            if gpus:
                used = {g for _, _, g in running.values()}
                gpu = next((g for g in range(gpus) if g not in used), slot % gpus)
                slot += 1
            if executor is None:
                ex.update_parameters(timeout_min=WEEK_MIN, **({"gpus_per_node": 1, "visible_gpus": (gpu,)}
                                                              if gpu is not None else {}))
            handle = ex.submit(run_job, job, str(out), opts, threads)
            running[job.name] = (job, handle, gpu)
            log(f"[grid] {job.name}: started (job {handle.job_id}" + (f", GPU {gpu})" if gpu is not None else ")"))
            _count(log, len(queue), len(running), done, len(failures))
        time.sleep(poll_seconds if running else 0)
        for name, (job, handle, _) in list(running.items()):
            if not handle.done():
                continue
            del running[name]
            try:
                handle.result()
            except Exception as e:  # submitit re-raises the job's error (FailedJobError with its traceback)
                message = _last_line(e)
                if BUSY in str(e):  # another invocation holds the run: wait for it, then try again
                    log(f"[grid] {name}: held by another process; trying again later")
                    queue.append(job)
                    time.sleep(poll_seconds)
                    continue
                failures[name] = f"{message} (log: {_log_path(handle)})"
                log(f"[grid] {name}: FAILED: {message} (log: {_log_path(handle)})")
            else:
                done += 1
                log(f"[grid] {name}: done")
                on_done(job)
            _count(log, len(queue), len(running), done, len(failures))
    return failures


def _slurm(submitit: Any, todo: list[Any], out: Path, opts: dict[str, Any], n: int, slurm: SlurmOptions,
           folder: Path, poll_seconds: float, log: Callable[[str], None], executor: Any,
           on_done: Callable[[Any], None]) -> dict[str, str]:
    ex = executor or submitit.AutoExecutor(folder=folder, cluster="slurm")
    if executor is None:
        ex.update_parameters(**slurm.parameters(n))
    job_cls = _checkpointable_job(submitit)
    threads = slurm.cpus_per_job if slurm.gpus_per_job == 0 else None
    handles = []
    with ex.batch():  # one job array
        for job in todo:
            handles.append((job, ex.submit(job_cls(), job, str(out), opts, threads)))
    log(f"[grid] submitted {len(handles)} runs as a SLURM job array (at most {n} at once): "
        + ", ".join(f"{j.name}={h.job_id}" for j, h in handles[:4]) + (" …" if len(handles) > 4 else ""))
    states: dict[str, str] = {}
    failures: dict[str, str] = {}
    pending = dict((j.name, (j, h)) for j, h in handles)
    while pending:
        for name, (job, handle) in list(pending.items()):
            state = str(getattr(handle, "state", "UNKNOWN"))
            if states.get(name) != state:
                states[name] = state
                log(f"[grid] {name}: {state} (job {handle.job_id})")
            if not handle.done():
                continue
            del pending[name]
            try:
                handle.result()
            except Exception as e:
                failures[name] = f"{_last_line(e)} (log: {_log_path(handle)})"
                log(f"[grid] {name}: FAILED: {failures[name]}")
            else:
                on_done(job)
        counts = {s: sum(1 for v in states.values() if v == s) for s in set(states.values())}
        log("[grid] " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())))
        if pending:
            time.sleep(poll_seconds)
    return failures


def _count(log: Callable[[str], None], pending: int, running: int, done: int, failed: int) -> None:
    log(f"[grid] pending {pending} / running {running} / done {done} / failed {failed}")


def _log_path(handle: Any) -> str:
    paths = getattr(handle, "paths", None)
    return str(getattr(paths, "stderr", "?")) if paths is not None else "?"


def status(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The state of every run of the grid in ``out``, from its folders (while it runs and after): ``done`` (trained
    and analysed), ``analysing``/``trained`` (all epochs, results missing), ``running`` (its folder lock is held by a
    live process), ``interrupted`` (some epochs, no process), ``pending`` (nothing yet)."""
    import json

    from embedlab.trainers.studies.benchmark import PLAN

    out = Path(out)
    try:
        plan = json.loads((out / PLAN).read_text())
    except (OSError, ValueError):
        raise EmbedlabError(f"{out} holds no grid ({PLAN} is written when `embedlab study benchmark` starts)") from None
    rows = []
    for job in plan.get("jobs") or []:
        run = Path(job["run"])
        epochs = job["config"].get("epochs")
        try:
            epoch = json.loads((run / "meta.json").read_text()).get("epoch", 0)
        except (OSError, ValueError):
            epoch = 0
        results = (out / "results" / job["name"] / "results.json").is_file()
        held = _held(run)
        if epoch == epochs and results:
            state = "done"
        elif held:
            state = "running"
        elif epoch == epochs:
            state = "trained"
        elif epoch:
            state = "interrupted"
        else:
            state = "pending"
        rows.append({"name": job["name"], "label": job["label"], "seed": job["seed"], "state": state,
                     "epoch": epoch, "epochs": epochs})
    return rows


def _held(path: Path) -> bool:
    """Whether a live process holds ``path``'s embedlab lock (``.<name>.lock`` beside it)."""
    lock = path.parent / f".{path.name}.lock"
    if not lock.exists():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return False
