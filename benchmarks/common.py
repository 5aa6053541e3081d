"""Shared by the step-time benchmarks: round-robin timing of training steps and the JSON dump."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import torch


def round_robin(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each step, one step of every entry per round (noise hits all of them alike); the first
    ``warmup`` rounds are not kept. CUDA is synchronised before and after each step."""
    times: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(warmup + rounds):
        for n, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{warmup + rounds}", file=sys.stderr, flush=True)
    return times


def sgd_step(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step: ``loss_fn()``, backward, optimizer step."""

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def dump(path: str | None, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=2)
