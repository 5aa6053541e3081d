"""Devices and multi-process training under ``torchrun``.

``torchrun --nproc_per_node=N -m embedlab train …`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; each joins one process group (``nccl`` on CUDA, ``gloo`` on CPU), uses ``cuda:LOCAL_RANK``
and trains on its own shard of every epoch. Without those variables everything here is a no-op for one process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from embedlab.errors import EmbedlabError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and shows progress."""
        return self.rank == 0


def env_from_environ() -> DistEnv:
    """The job layout from torchrun's environment variables (one process when they are absent)."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise EmbedlabError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device; anything else is one clear line."""
    import re

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,4})?", name):
        raise EmbedlabError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedlabError(f"device {name!r} requested but CUDA is not available on this machine")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise EmbedlabError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s)")
    return device


def setup(device_name: str) -> tuple[DistEnv, torch.device, bool]:
    """Resolve the device and, under torchrun, join the process group.

    Returns ``(env, device, created)``; ``created`` says this call initialised the group (and its caller must
    destroy it). On CUDA each process uses ``cuda:LOCAL_RANK`` whatever index the config names.
    """
    env = env_from_environ()
    device = resolve_device(device_name)
    if not env.enabled:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # cuda:N alone: kernels and allocations default to that device, not cuda:0
        return env, device, False
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return env, device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return env, device, True


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[DistEnv]:
    """One process group for several runs in one process (``--seeds``); a no-op outside torchrun."""
    env, _, created = setup(device_name)
    try:
        yield env
    finally:
        if created:
            dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (returned for chaining)."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every process."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def average_buffers(model: nn.Module, env: DistEnv) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, so that every process holds
    the same model for validation and checkpointing (DDP keeps only the parameters in sync)."""
    if not env.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(env.world_size)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` of a run seeded ``seed``: ``seed`` itself on rank 0 (a single-process run is
    unchanged), else a 63-bit draw of ``numpy.random.SeedSequence([seed, rank])``. (``seed + rank`` made run seed 1's
    rank r replay run seed 0's rank r + 1.)

    >>> rank_seed(7, 0), rank_seed(1, 0) == rank_seed(0, 1)
    (7, False)
    """
    if rank == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> np.uint64(1))
