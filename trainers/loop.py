"""The training loop. It takes a mixing strategy object and never branches on a method's name.

One epoch: ``method.on_epoch_start``; for each mini-batch ``loss = method.loss(model, x, y, gen)``, optimizer and
per-step LR-schedule step; validation accuracy; then, on rank 0, the resumable training state (the commit point),
``best.safetensors`` when validation improved, ``model.safetensors``, ``meta.json``, ``metrics.jsonl`` and TensorBoard
events — each file written atomically, so a kill at any moment leaves the previous epoch's files intact.

Speed on CUDA: bf16 autocast, channels-last, pinned memory with non-blocking copies and workers, optional
``torch.compile`` of each model stage, no host synchronisation per step (losses stay on the device and are checked
every ``log_every`` steps). Under ``torchrun`` the loss is computed inside DistributedDataParallel's forward, each
process mixes its own batch (MultiMix's m and n are per process) with its own generator (seeded by
``rank_seed(seed, rank)``), and metrics
are summed over processes.

Test hook: ``EMBEDLAB_TEST_KILL_AT_STEP=k`` makes the process SIGKILL itself right after optimizer step k (the resume
test); ``EMBEDLAB_TEST_DUMP_DIR=D`` makes every process write ``D/rank<r>.json`` (weight digest, local metrics).
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from embedlab.checkpoint import WEIGHTS, hardware, save_checkpoint, utc_now, versions, write_meta_json
from embedlab.config import TrainConfig, check_option_types, config_diff
from embedlab.data import DataSource, collate_batched, create_dataset
from embedlab.errors import EmbedlabError
from embedlab.io import atomic_write_json, atomic_write_text, exclusive
from embedlab.methods import MixMethod, create_method
from embedlab.methods.base import track_agreement
from embedlab.models import MODELS, EmbedNet, create_model
from embedlab.trainers.distributed import (DistEnv, all_reduce_sum, average_buffers, gather_objects, rank_seed,
                                           resolve_device, setup)
from embedlab.trainers.state import STATE_FILE, capture_rng, load_state, restore_rng, save_state, state_digest
from embedlab.trainers.tb_writer import EventLog

__all__ = ["build", "build_optimizer", "evaluate", "make_loader", "resolve_device", "train"]

BEST = "best.safetensors"
METRICS = "metrics.jsonl"
VAL_BATCH = 512
RECOMPILE_LIMIT = 64  # torch.compile recompiles allowed per compiled stage (see _compile)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0, pin_memory: bool = False, sampler: Any = None) -> DataLoader:
    """A DataLoader whose randomness (shuffling, worker seeds) comes from its own seeded generator ``.generator``.

    Workers are not persistent: each epoch's worker seeds are drawn from that generator, so a resumed run that
    restores it replays the same augmentation.
    """
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=drop_last and len(ds) > batch_size, generator=gen, collate_fn=collate_batched,
                      num_workers=num_workers, pin_memory=pin_memory)


@torch.no_grad()
def _eval_sums(model: nn.Module, loader: DataLoader, device: torch.device, prep: Callable[[Tensor], Tensor],
               autocast: Callable[[], Any]) -> Tensor:
    """``[correct, count, summed cross-entropy]`` of ``model`` over ``loader`` (float64, on ``device``)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        sums[0] += (logits.argmax(1) == y).sum()
        sums[1] += len(y)
        sums[2] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
    return sums


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader``."""
    c, n, loss = _eval_sums(model, loader, device, lambda x: x, contextlib.nullcontext).tolist()
    return {"accuracy": c / max(n, 1), "loss": loss / max(n, 1)}


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR factor after ``s`` optimizer steps (a plain function of the step, so a resumed scheduler is exact)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    if cfg.schedule == "step":
        ms = [m * steps_per_epoch for m in cfg.milestones]
        return lambda s: cfg.lr_gamma ** bisect.bisect_right(ms, s)
    return lambda s: 1.0


def build_optimizer(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=False)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))


def _check_model_fits(name: str, info: Any, cfg: TrainConfig) -> None:
    """Build the model on the ``meta`` device first (nothing allocated) and refuse it when its weights, their
    gradients and two optimiser moments (16 bytes a parameter) would exceed this machine's memory: a width or
    depth option far too large is one line naming the options, not an allocator failure or the OOM killer."""
    from embedlab.io import _memory_bytes

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in create_model(name, info.num_classes, info.input_shape, info.mean, info.std,
                                                    **cfg.model_options).parameters())
    except (TypeError, EmbedlabError):
        return  # the real build below says what is wrong
    except (RuntimeError, NotImplementedError, ValueError):
        return  # a factory that cannot be built on meta: built as it is
    if 16 * n > _memory_bytes():
        raise EmbedlabError(f"model {name!r} with options {dict(cfg.model_options)} has {n:,} parameters: with "
                            f"their gradients and optimiser state ({16 * n / 2**30:,.0f} GiB) more than this "
                            f"machine's {_memory_bytes() / 2**30:,.0f} GiB; lower its width or depth options")


def build(cfg: TrainConfig) -> tuple[DataSource, EmbedNet, dict[str, Any]]:
    """Dataset and freshly initialised model (seeded), plus the model description saved in checkpoints."""
    data = create_dataset(cfg.dataset, cfg.data_root, cfg.download, **cfg.dataset_options)
    info = data.info
    name = cfg.model or info.default_model
    if ":" not in name:  # tv:NAME / timm:NAME options go to the external library as they are
        check_option_types(MODELS.get(name).obj, cfg.model_options, f"model {name!r}")
    _check_model_fits(name, info, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            model = create_model(name, info.num_classes, info.input_shape, info.mean, info.std, **cfg.model_options)
        except TypeError as e:
            raise EmbedlabError(f"bad option for model {name!r}: {e}") from None
    desc = {"name": name, "options": dict(cfg.model_options), "num_classes": info.num_classes,
            "input_shape": list(info.input_shape), "mean": list(info.mean) if info.mean else None,
            "std": list(info.std) if info.std else None, "embed_dim": model.embed_dim}
    return data, model, desc


class _MethodLoss(nn.Module):
    """``forward(x, y, gen) = method.loss(model, x, y, gen)``: the module DistributedDataParallel wraps, so that
    gradient synchronisation is armed whatever parts of the model the method calls."""

    def __init__(self, model: EmbedNet, method: MixMethod) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return self.method.loss(self.model, x, y, gen)


def _compile(model: EmbedNet) -> None:
    """``torch.compile`` in place (state-dict names unchanged): each stage of a staged model, else the model's
    forward. Methods call stages through ``features_at``/``forward_from``, so they run compiled code."""
    import torch._dynamo.config as dynamo

    # every stage shares Dynamo's recompile budget (8 by default): methods that call stages with new shapes or
    # layers (manifold mixup's layers, PuzzleMix's extra pass) filled it and ran eagerly ("hit recompile_limit")
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    parts = list(model.stages) or [model]
    for part in parts:
        part.compile()


@contextlib.contextmanager
def _backend_flags(cfg: TrainConfig, device: torch.device, fast_math: bool) -> Iterator[None]:
    """Deterministic algorithms or cuDNN autotuning/TF32 for this run; the process's previous flags come back."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast_math
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev[3], prev[4]


def _use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.amp == "off":
        return False
    if cfg.amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise EmbedlabError(f"amp=bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                                f"use amp=off")
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


class _Outputs:
    """Rank 0's run directory: the files of one run, each written atomically. ``written`` lists what it wrote."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: set[str] = set()

    def _mark(self, name: str) -> None:
        self.written.add(name)

    def fresh(self) -> None:
        """A new run: files of an overwritten run must not mix with ours."""
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (METRICS, STATE_FILE):
            (self.out / name).unlink(missing_ok=True)

    def state(self, **kw: Any) -> None:
        save_state(self.out / STATE_FILE, **kw)
        self._mark(STATE_FILE)

    def checkpoints(self, model: nn.Module, meta: dict[str, Any], best: bool) -> None:
        if best:
            save_checkpoint(self.out / BEST, model, meta)
            self._mark(BEST)
        save_checkpoint(self.out / WEIGHTS, model, meta)
        write_meta_json(self.out, meta)
        self._mark(WEIGHTS)
        self._mark("meta.json")

    def append_metrics(self, rec: dict[str, Any]) -> None:
        with open(self.out / METRICS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        self._mark(METRICS)

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        self._mark(METRICS)


def train(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True, log: Callable[[str], None] = print,
          resume: bool = False) -> Path:
    """Train one run; returns the path of the last-epoch checkpoint ``out_dir/model.safetensors``.

    ``resume``: continue from ``out_dir/train_state.pt`` (after its last completed epoch) when it exists — the
    config must equal the saved one — else start a new run. Under torchrun, call it in every process.
    """
    cfg.validate()
    env, device, created = setup(cfg.device)
    try:
        # one writer per run folder (rank 0 holds it for all ranks): a second train or --resume of the same --out
        # fails at once instead of interleaving metrics.jsonl and mixing two runs' weights
        lock = (exclusive(out_dir, "training", "wait for it to finish, or choose another --out")
                if env.is_main else contextlib.nullcontext())
        with lock:
            return _train(cfg, Path(out_dir), env, device, progress=progress, log=log, resume=resume)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, env: DistEnv, device: torch.device, *, progress: bool,
           log: Callable[[str], None], resume: bool) -> Path:
    data, model, model_desc = build(cfg)
    method = create_method(cfg.method, cfg.method_options)
    method.check_model(model)
    cfg = dataclasses.replace(cfg, model=model_desc["name"])
    state = load_state(out / STATE_FILE) if resume and (out / STATE_FILE).exists() else None
    if state is not None:
        _check_same_run(state, cfg.to_dict(), env, out)

    bf16 = _use_bf16(cfg, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    with _backend_flags(cfg, device, fast_math=bf16):
        # augmentation in this process draws from the global RNG; each process its own stream
        torch.manual_seed(rank_seed(cfg.seed, env.rank))
        if state is not None:
            model.load_state_dict(state["model"])
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

        pin = device.type == "cuda"
        train_ds, val_ds = data.split("train", augment=True), data.split("val")
        sampler = None
        if env.enabled:
            sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=True)
            val_ds = Subset(val_ds, list(range(env.rank, len(val_ds), env.world_size)))  # exact shards, no padding
        train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=rank_seed(cfg.seed, env.rank), drop_last=True,
                                   num_workers=cfg.num_workers, pin_memory=pin, sampler=sampler)
        val_loader = make_loader(val_ds, VAL_BATCH, shuffle=False, num_workers=cfg.num_workers, pin_memory=pin)
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise EmbedlabError(f"the training split has {len(train_ds)} examples per process, fewer than one batch "
                                f"of {cfg.batch_size}; lower batch_size")
        gen = torch.Generator(device=device).manual_seed(rank_seed(cfg.seed, env.rank))
        opt, sched = build_optimizer(cfg, model, steps_per_epoch)

        meta: dict[str, Any]
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            restore_rng(state["rng"][env.rank], device, gen, train_loader.generator)
            meta = state["meta"]
            start_epoch, step = state["epoch"], state["step"]
        else:
            meta = {
                "config": cfg.to_dict(),
                "model": model_desc,
                "method": {"name": cfg.method, "options": method.options_dict(),
                           **({"variant": method.variant()} if method.variant() else {})},
                "dataset": {**data.describe(), "classes": list(data.info.classes),
                            "input_shape": list(data.info.input_shape)},
                "versions": versions(), "hardware": hardware(device), "created_utc": utc_now(),
                "training": {"world_size": env.world_size, "batch_size_per_process": cfg.batch_size,
                             "global_batch_size": cfg.batch_size * env.world_size,
                             "steps_per_epoch": steps_per_epoch, "amp": "bf16" if bf16 else "off",
                             "channels_last": channels_last, "compile": cfg.compile,
                             "deterministic": cfg.deterministic,
                             "backend": torch.distributed.get_backend() if env.enabled else None},
                "history": [],
            }
            start_epoch, step = 0, 0

        outputs = _Outputs(out) if env.is_main else None
        if outputs is not None:
            if state is None:
                outputs.fresh()
            else:  # a kill between the state (the commit point) and the other files: bring them up to date
                outputs.checkpoints(model, meta, best=meta.get("best", {}).get("epoch") == start_epoch)
                outputs.rewrite_metrics(meta["history"])
        if start_epoch >= cfg.epochs:
            if env.is_main:
                log(f"{out} is complete ({cfg.epochs} epochs); nothing to resume")
            return out / WEIGHTS
        if state is not None:
            meta.setdefault("resumed", []).append({"after_epoch": start_epoch, "utc": utc_now(),
                                                   "hardware": hardware(device)})

        if cfg.compile:
            _compile(model)
        loss_module: nn.Module = _MethodLoss(model, method)
        if env.enabled:
            loss_module = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[device.index] if device.type == "cuda" else None)
        autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
        prep: Callable[[Tensor], Tensor] = ((lambda x: x.contiguous(memory_format=torch.channels_last)
                                             if x.dim() == 4 else x) if channels_last else (lambda x: x))
        kill_at = int(os.environ.get("EMBEDLAB_TEST_KILL_AT_STEP") or 0)
        log_every = cfg.log_every
        local_log: list[dict[str, float]] = []
        events = EventLog(out, resume_epoch=start_epoch) if env.is_main else None
        show = progress and env.is_main
        best = meta.get("best", {}).get("val_accuracy")
        # progress bars only on a terminal (tqdm's disable=None), never with TQDM_DISABLE set; otherwise (a pipe, a
        # log file, --no-progress) one plain line per epoch
        bars: bool | None = None if show and not _env_true("TQDM_DISABLE") else True
        bar = tqdm(range(start_epoch + 1, cfg.epochs + 1), initial=start_epoch, total=cfg.epochs,
                   desc=f"train {cfg.method}", unit="epoch", disable=bars, dynamic_ncols=True)
        lines = env.is_main and bar.disable
        epoch_seconds: list[float] = []
        try:
            for epoch in bar:
                t0 = time.perf_counter()
                model.train()
                method.on_epoch_start(epoch, cfg.epochs)
                if sampler is not None:
                    sampler.set_epoch(epoch)
                losses = torch.zeros(steps_per_epoch, device=device)  # this process's per-step losses
                loss_total = torch.zeros((), dtype=torch.float64, device=device)  # summed over steps and processes
                agreement = torch.zeros(2, dtype=torch.float64, device=device)  # see methods.base.track_agreement
                lr_used = opt.param_groups[0]["lr"]  # the learning rate of the epoch's first step
                checked = 0
                steps_bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", unit="step", leave=False,
                                 disable=bars, dynamic_ncols=True)
                for i, (x, y) in enumerate(train_loader):
                    x, y = prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
                    with autocast(), track_agreement(agreement):
                        loss = loss_module(x, y, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses[i] = loss.detach()
                    step += 1
                    if step == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if i + 1 - checked == log_every:
                        chunk = _check_losses(losses[checked:i + 1], env, epoch, step - i - 1 + checked, meta, out)
                        loss_total += chunk.sum()
                        checked = i + 1
                        steps_bar.set_postfix(loss=f"{float(chunk.mean()) / env.world_size:.3f}", refresh=False)
                    steps_bar.update()
                steps_bar.close()
                n = i + 1
                if checked < n:
                    loss_total += _check_losses(losses[checked:n], env, epoch, step - n + checked, meta, out).sum()
                train_loss = float(loss_total) / (n * env.world_size)
                train_seconds = time.perf_counter() - t0
                hits, terms = all_reduce_sum(agreement, env).tolist()
                local_log.append({"epoch": epoch, "local_train_loss_sum": float(losses[:n].sum()), "steps": n})

                average_buffers(model, env)
                local_val = _eval_sums(model, val_loader, device, prep, autocast)
                correct, count, val_loss_sum = all_reduce_sum(local_val.clone(), env).tolist()
                local_log[-1]["local_val_correct"], local_log[-1]["local_val_count"] = local_val[:2].tolist()
                local_log[-1]["local_method_stats"] = local_stats = method.epoch_stats()
                val_acc = correct / count if count else None
                rec = {"epoch": epoch, "train_loss": train_loss,
                       "train_accuracy": hits / terms if terms else None, "val_accuracy": val_acc,
                       "val_loss": val_loss_sum / count if count else None, "lr": lr_used,
                       "images_per_second": n * cfg.batch_size * env.world_size / max(train_seconds, 1e-9),
                       **_mean_over_processes(local_stats, env, device), "seconds": time.perf_counter() - t0}
                meta["history"].append(rec)
                meta["epoch"] = epoch
                improved = val_acc is None or best is None or val_acc > best
                if improved:
                    best = val_acc
                    meta["best"] = {"epoch": epoch, "val_accuracy": val_acc}
                meta["last"] = {"epoch": epoch, "val_accuracy": val_acc}
                rng = gather_objects(capture_rng(device, gen, train_loader.generator), env)
                if outputs is not None and events is not None:
                    outputs.state(model=model, optimizer=opt, scheduler=sched, epoch=epoch, step=step,
                                  config=cfg.to_dict(), meta=meta, rng=rng, world_size=env.world_size)
                    outputs.checkpoints(model, meta, best=improved)
                    outputs.append_metrics(rec)
                    events.epoch(rec)
                bar.set_postfix(loss=f"{train_loss:.3f}", val_acc="-" if val_acc is None else f"{val_acc:.3f}")
                epoch_seconds.append(rec["seconds"])
                if lines:
                    log(_epoch_line(rec, cfg.epochs, epoch_seconds))
        finally:
            bar.close()
            if events is not None:
                events.close()
        _test_dump(model, env, local_log, outputs)
        if env.is_main:
            b = meta["best"]
            acc = "n/a (no validation split)" if b["val_accuracy"] is None else f"{b['val_accuracy']:.4f}"
            last = meta["last"]["val_accuracy"]
            log(f"{cfg.method}: best val accuracy {acc} (epoch {b['epoch']}), "
                f"last {'n/a' if last is None else f'{last:.4f}'} → {out / WEIGHTS}")
    return out / WEIGHTS


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _epoch_line(rec: dict[str, Any], epochs: int, seconds: list[float]) -> str:
    """One plain line per epoch for logs and pipes: ``epoch 3/30 loss 1.2345 train_acc 0.456 val_acc 0.5000
    lr 0.04986 1234 img/s 41 s ETA 0:18:57`` (ETA: the remaining epochs at the mean epoch time so far)."""
    eta = round((epochs - rec["epoch"]) * sum(seconds) / len(seconds))
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    return (f"epoch {rec['epoch']}/{epochs} loss {rec['train_loss']:.4f} "
            f"train_acc {fmt(rec.get('train_accuracy'), '.3f')} val_acc {fmt(rec.get('val_accuracy'), '.4f')} "
            f"lr {rec['lr']:.4g} {rec['images_per_second']:.0f} img/s {rec['seconds']:.0f} s "
            f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def _mean_over_processes(stats: dict[str, float], env: DistEnv, device: torch.device) -> dict[str, float]:
    """Each value averaged over processes (a collective: every rank calls it with the same keys)."""
    if not env.enabled or not stats:
        return stats
    keys = sorted(stats)
    t = all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device), env)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def _check_losses(chunk: Tensor, env: DistEnv, epoch: int, first_step: int, meta: dict[str, Any],
                  out: Path) -> Tensor:
    """Per-step losses summed over processes; stops the run at the first non-finite one.

    Collective under torchrun: every process sees the same sums and stops together. ``first_step`` is the global
    step count before ``chunk``'s first step. This is the only host synchronisation of the training steps.
    """
    chunk = all_reduce_sum(chunk.double(), env)
    bad = ~torch.isfinite(chunk)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        kept = (f"the last good checkpoint (epoch {meta['epoch']}) is kept in {out}" if meta.get("epoch")
                else f"no checkpoint was written to {out}")
        raise EmbedlabError(f"non-finite loss ({float(chunk[j])}) at epoch {epoch}, step {first_step + j + 1}: "
                            f"training stopped; {kept}")
    return chunk


def _check_same_run(state: dict[str, Any], cfg: dict[str, Any], env: DistEnv, out: Path) -> None:
    saved = state["config"]
    diff = config_diff(saved, cfg)
    if diff:
        what = ", ".join(f"{k} (saved {json.dumps(saved.get(k))}, now {json.dumps(cfg.get(k))})" for k in diff)
        raise EmbedlabError(f"--resume: the config differs from the run saved in {out} in {what}; resume with the "
                            f"same options, or start a new run (another --out, or --force)")
    if state["world_size"] != env.world_size:
        raise EmbedlabError(f"--resume: {out} was trained by {state['world_size']} process(es); resume it with "
                            f"torchrun --nproc_per_node={state['world_size']} (now {env.world_size})")


def _test_dump(model: nn.Module, env: DistEnv, local_log: list[dict[str, float]], outputs: _Outputs | None) -> None:
    """``EMBEDLAB_TEST_DUMP_DIR``: what this process holds at the end, for the multi-process test."""
    d = os.environ.get("EMBEDLAB_TEST_DUMP_DIR")
    if not d:
        return
    atomic_write_json(Path(d) / f"rank{env.rank}.json", {
        "rank": env.rank, "world_size": env.world_size, "digest": state_digest(model.state_dict()),
        "epochs": local_log, "wrote": sorted(outputs.written) if outputs is not None else []})
