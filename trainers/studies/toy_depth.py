"""Seed 002 §3: how much does manifold mixup at depth k help, and on which toy problems? (METHODS.md §1.3, §2)

Protocol (METHODS.md §2): for each K ∈ {2, 3, 4, 5}, 100 random :class:`~embedlab.data.GMMSpec` datasets with
1,000 training points; an MLP (2, 512, 512, 512, K) trained for 20 epochs (batch 50, Adam lr 1e-3) without mixup
(``baseline``) and with mixup after k hidden layers (``mixup_k0`` … ``mixup_k3``, k = 0 is input mixup; α = 0.5,
one λ per pair, pairs from a random permutation of the batch, labels mixed with the same λ). The excess 0-1 risk
``R(h) − R(h*)`` is measured on a test sample of 20,000 points, on which the Bayes classifier h* is also scored.

How the 2,000 small MLPs are trained fast on a CPU: all models of a chunk of datasets (every method × every dataset
of the chunk) are one stack of weights ``W_l ∈ R^{M×in×out}``; forward and backward are hand-written with
``torch.baddbmm``/``torch.bmm`` (no autograd graph), the two 512×512 layers in bfloat16 (AMX) with float32 master
weights, and one Adam update steps the stacked tensors (Adam is elementwise, so stacking models is exact): a
``torch.compile``-fused pass that also refreshes the bfloat16 weight copy, or ``torch.optim.Adam(fused=True)``.
The step is memory-bound (Adam touches 28 bytes per parameter per step), hence the fusion and the preallocated
buffers. :func:`train_reference` is the one-model-at-a-time version (``nn.Sequential`` + autograd +
``torch.optim.Adam``); the tests check that both give the same parameters and losses in float32. The optimiser,
learning rate, training-set size and range of the means, which seed 002 does not state, are options
(``optimizer="sgd"``: SGD with momentum 0.9, likewise one elementwise update of the stack, checked against
``torch.optim.SGD``); docs/results/toy/SENSITIVITY.md reports how the conclusions depend on them.

Common random numbers **[choice]**: for a dataset, every method starts from the same initialisation ("a new random
(but fixed for each type of training) initialization per dataset", seed 002 §3.3) and sees the same batches, the
same λ and the same permutations (the baseline ignores the last two), so that method differences are paired.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedlab.checkpoint import versions
from embedlab.data import GMMSpec
from embedlab.io import atomic_write_json
from embedlab.trainers.studies import register_study
from embedlab.sampling import beta
from embedlab.stats import mean_ci
from embedlab.toy import bayes_predict, mmlb

# ------------------------------------------------------------------------------------------------ configuration
METHOD_DEPTHS: dict[str, int | None] = {"baseline": None, "mixup_k0": 0, "mixup_k1": 1, "mixup_k2": 2, "mixup_k3": 3}
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "sgd")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16), as PyTorch reports it.

    Elsewhere (e.g. AVX2-only CPUs) bfloat16 products are emulated: on a 2-core AVX2 AMD EPYC the study's hidden
    product, (50 × 50 × 512)·(50 × 512 × 512), ran at 1.2 GFLOP/s in bf16 against 41.6 in fp32, and a training step
    was 12× slower (``benchmarks/toy_depth_step.py``, docs/BENCHMARKS.md).
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, torch ≥ 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str) -> str:
    """``"auto"`` → ``"bf16"`` where :func:`cpu_has_native_bf16`, else ``"fp32"``; ``"fp32"``/``"bf16"`` as given."""
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class ToyTrainConfig:
    """How each toy MLP is trained (seed 002 §3.3). ``depths[j]`` is method j's mixing depth (None: no mixup).

    ``precision="bf16"`` runs the hidden-to-hidden layers in bfloat16 (products accumulated in float32; their
    activations and gradients stored in bfloat16), with float32 master weights and optimiser state; the first and
    last layers, λ, the loss and Adam stay in float32.
    Batches are ``floor(n / batch_size)`` per epoch (a remainder is dropped; none for n = 1000, b = 50).

    ``optimizer``: ``"adam"`` (default: β = 0.9, 0.999, ε = 1e-8, as ``torch.optim.Adam``) or ``"sgd"``: SGD with
    heavy-ball momentum ``momentum`` as ``torch.optim.SGD(lr, momentum)`` (dampening 0, no Nesterov, no weight
    decay); ``momentum`` is unused by Adam. Seed 002 states neither the optimiser nor the learning rate.
    """

    hidden: tuple[int, ...] = (512, 512, 512)
    epochs: int = 20
    batch_size: int = 50
    lr: float = 1e-3
    alpha: float = 0.5
    depths: tuple[int | None, ...] = tuple(METHOD_DEPTHS.values())
    precision: str = "bf16"
    optimizer: str = "adam"
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        for d in self.depths:
            if d is not None and not 0 <= d <= len(self.hidden):
                raise ValueError(f"mixing depth {d} outside 0..{len(self.hidden)} for hidden={self.hidden}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.alpha <= 0:
            raise ValueError(f"bad training config {self}")

    def sizes(self, num_classes: int) -> tuple[int, ...]:
        return (2, *self.hidden, num_classes)


@dataclass(frozen=True)
class Schedule:
    """All the randomness of one dataset's training, shared by its methods: shapes ``(epochs, batches, b)``."""

    order: Tensor  # int64: training-example index of each batch slot
    lam: Tensor  # float32: λ of the pair formed at each slot
    perm: Tensor  # int64: partner slot (a permutation of 0..b−1 per batch)


def draw_schedule(n: int, cfg: ToyTrainConfig, gen: torch.Generator) -> Schedule:
    """Shuffles (one permutation of the training set per epoch), per-pair λ ~ Beta(α, α) and batch permutations."""
    e, b = cfg.epochs, cfg.batch_size
    nb = n // b
    if nb < 1:
        raise ValueError(f"{n} training points cannot fill one batch of {b}")
    order = torch.stack([torch.randperm(n, generator=gen)[: nb * b] for _ in range(e)]).view(e, nb, b)
    lam = beta(cfg.alpha, (e, nb, b), gen)
    perm = torch.rand((e, nb, b), generator=gen).argsort(dim=-1)
    return Schedule(order, lam, perm)


def init_params(sizes: Sequence[int], gen: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """``nn.Linear``'s default initialisation, drawn from ``gen``: W, β ~ U(±1/√fan_in); W stored as (in, out)."""
    out = []
    for fin, fout in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fin)
        w = (torch.rand((fin, fout), generator=gen) * 2 - 1) * bound  # (in, out)
        b = (torch.rand((fout,), generator=gen) * 2 - 1) * bound  # (out,)
        out.append((w, b))
    return out


# ------------------------------------------------------------------------------------------ reference trainer
def reference_model(params: list[tuple[Tensor, Tensor]]) -> nn.Sequential:
    """``nn.Sequential`` MLP (Linear, ReLU, …, Linear) holding copies of ``params`` (W given as (in, out))."""
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(params):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_reference(x: Tensor, y: Tensor, init: list[tuple[Tensor, Tensor]], schedule: Schedule,
                    depth: int | None, cfg: ToyTrainConfig, num_classes: int) -> tuple[nn.Sequential, Tensor]:
    """One model, the obvious way (float32, autograd, ``torch.optim.Adam`` or ``torch.optim.SGD`` as
    ``cfg.optimizer`` says): the check on :class:`BatchedMLP`.

    ``x`` (n, 2), ``y`` (n,). Mixing after k hidden layers: ``model[:2k]`` then ``λ h + (1 − λ) h[perm]``, then
    ``model[2k:]``; soft-target cross-entropy against ``λ y + (1 − λ) y[perm]``. Returns the model and the mean
    training loss of each epoch, shape (epochs,).
    """
    model = reference_model(init)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    e, nb, _ = schedule.order.shape
    losses = torch.zeros(e)
    for ep in range(e):
        for s in range(nb):
            idx = schedule.order[ep, s]
            xb, yb = x[idx], F.one_hot(y[idx], num_classes).float()  # (b, 2), (b, K)
            if depth is None:
                logits, target = model(xb), yb
            else:
                lam, perm = schedule.lam[ep, s][:, None], schedule.perm[ep, s]  # (b, 1), (b,)
                h = model[: 2 * depth](xb)
                logits = model[2 * depth:](lam * h + (1 - lam) * h[perm])
                target = lam * yb + (1 - lam) * yb[perm]
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[ep] += loss.detach() / nb
    return model, losses


# ------------------------------------------------------------------------------------------ batched trainer
def _stack_params(inits: Sequence[list[tuple[Tensor, Tensor]]], n_methods: int) -> list[Tensor]:
    """Model axis M = method-major × dataset: model ``j·D + d`` is method j on dataset d. Returns
    ``[W_0 (M, in, out), β_0 (M, 1, out), W_1, β_1, …]`` as fresh leaf tensors."""
    out = []
    for layer in range(len(inits[0])):
        w = torch.stack([p[layer][0] for p in inits])  # (D, in, out)
        b = torch.stack([p[layer][1] for p in inits])[:, None, :]  # (D, 1, out)
        out += [w.repeat(n_methods, 1, 1).contiguous(), b.repeat(n_methods, 1, 1).contiguous()]
    return out


def _use_low(w: Tensor) -> bool:
    # Only hidden-to-hidden products are worth bfloat16: the 2→512 and 512→K layers are tiny, and keeping them in
    # float32 keeps the input coordinates and the logits exact.
    return w.shape[-2] >= 64 and w.shape[-1] >= 64


def _adam_update_fused(p: Tensor, g: Tensor, m: Tensor, v: Tensor, low: Tensor | None, step_size: Tensor,
                       bc2_sqrt: Tensor, beta1: float, beta2: float, eps: float) -> None:
    """One Adam step in place, the arithmetic of ``torch.optim.Adam`` (no weight decay), written for
    ``torch.compile``: ``m ← m + (1−β₁)(g − m)``, ``v ← β₂v + (1−β₂)g²``,
    ``p ← p − step_size · m / (√v / bc2_sqrt + ε)``
    with ``step_size = lr / (1−β₁ᵗ)`` and ``bc2_sqrt = √(1−β₂ᵗ)`` (0-d tensors, so that the compiled kernel is not
    specialised on them). ``g`` may be bfloat16 (widened first); ``low``, if given, receives the new ``p`` rounded to
    its dtype (the copy the next forward pass uses). Compiled, this is one pass over memory per tensor instead of
    a cast, the optimiser's pass and a second cast."""
    g = g.float()
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.sub_(step_size * m / (v.sqrt() / bc2_sqrt + eps))
    if low is not None:
        low.copy_(p)


def _sgd_update_fused(p: Tensor, g: Tensor, buf: Tensor, low: Tensor | None, lr: Tensor, momentum: float) -> None:
    """One SGD-with-momentum step in place, the arithmetic of ``torch.optim.SGD(lr, momentum)`` (dampening 0, no
    Nesterov, no weight decay): ``buf ← momentum · buf + g``, ``p ← p − lr · buf``. ``buf`` starts at zero, so the
    first step sets ``buf = g`` exactly, as torch does. Elementwise, so one call on stacked models is one step per
    model. ``g`` may be bfloat16 (widened first); ``low``, if given, receives the new ``p`` rounded to its dtype."""
    buf.mul_(momentum).add_(g.float())
    p.sub_(lr * buf)
    if low is not None:
        low.copy_(p)


_COMPILED: dict[str, Any] = {}


def _compiled_update(optimizer: str = "adam") -> Any:
    """``_adam_update_fused`` (or, for ``"sgd"``, ``_sgd_update_fused``) through ``torch.compile`` (needs a C++
    compiler), or None where that fails."""
    key = "fn" if optimizer == "adam" else f"fn_{optimizer}"  # "fn": the Adam update, as before
    if key not in _COMPILED:
        try:
            t = [torch.zeros(3) for _ in range(4)]
            low = torch.zeros(3, dtype=torch.bfloat16)
            if optimizer == "adam":
                fn = torch.compile(_adam_update_fused, dynamic=True, fullgraph=True)
                fn(t[0], t[1], t[2], t[3], low, torch.tensor(1e-3), torch.tensor(1.0),
                   0.9, 0.999, 1e-8)  # compile now, so that a failure falls back here rather than mid-training
            else:
                fn = torch.compile(_sgd_update_fused, dynamic=True, fullgraph=True)
                fn(t[0], t[1], t[2], low, torch.tensor(1e-3), 0.9)
            _COMPILED[key] = fn
        except Exception as e:  # pragma: no cover - depends on the machine's toolchain
            import warnings

            warnings.warn(f"torch.compile of the {optimizer} update failed ({type(e).__name__}: {e}); using eager")
            _COMPILED[key] = None
    return _COMPILED[key]


class _Mixer:
    """λ-mixing of slices of the model axis. ``lam`` (D, b, 1) float32, ``perm`` (D, b); slices are method blocks.

    λ stays float32 whatever the activations' dtype (the arithmetic promotes; the result is rounded once when it is
    written back), so the features are mixed with the same λ as the labels.
    """

    def __init__(self, lam: Tensor, perm: Tensor) -> None:
        self.lam, self.perm = lam, perm
        self.rows = torch.arange(perm.shape[0])[:, None]  # (D, 1)
        self.inv = perm.argsort(dim=1)  # (D, b): the slot whose partner is i

    def forward(self, h: Tensor) -> Tensor:  # (D, b, d)
        return self.lam * h + (1 - self.lam) * h[self.rows, self.perm]

    def backward(self, g: Tensor) -> Tensor:  # (D, b, d): adjoint of forward
        return self.lam * g + ((1 - self.lam) * g)[self.rows, self.inv]


def _mix_blocks(h: Tensor, blocks: list[int], d: int, mixer: _Mixer, adjoint: bool) -> Tensor:
    if not blocks:
        return h
    h = h.clone()
    f = mixer.backward if adjoint else mixer.forward
    for j in blocks:
        h[j * d:(j + 1) * d] = f(h[j * d:(j + 1) * d])
    return h


class BatchedMLP:
    """M MLPs with identical shapes, trained together: model ``j·D + d`` is method ``cfg.depths[j]`` on dataset d.

    ``self.params`` = ``[W_0 (M, in, out), β_0 (M, 1, out), …]`` are the float32 master weights, stepped by Adam
    over the stacked tensors (Adam is elementwise, so one update of the stack is exactly one update per model). With
    ``precision="bf16"`` the hidden-to-hidden layers keep a bfloat16 copy of W (refreshed after each update), their
    activations and gradients are bfloat16, and their weight gradients are computed in bfloat16.
    The update is ``torch.optim.Adam(fused=True)`` on float32 gradients, or with ``compile=True``
    :func:`_adam_update_fused` through ``torch.compile``, which reads the bfloat16 gradients and writes the bfloat16
    copy in the same pass (falls back to the former if compilation fails).
    Large buffers are allocated once: re-allocating 100 MB tensors every step costs page faults.
    """

    def __init__(self, inits: Sequence[list[tuple[Tensor, Tensor]]], cfg: ToyTrainConfig, *,
                 compile: bool = False) -> None:
        self.cfg = cfg
        self.D, self.J = len(inits), len(cfg.depths)
        self.params = _stack_params(inits, self.J)
        low = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        ws = self.params[0::2]
        # per layer: a low-precision copy of W (or None: a float32 layer) and the buffer of W's gradient
        self.wlow = [w.to(low) if low != torch.float32 and _use_low(w) else None for w in ws]
        self.grads = [torch.zeros_like(p if i % 2 or self.wlow[i // 2] is None else self.wlow[i // 2])
                      for i, p in enumerate(self.params)]
        self.fused = _compiled_update(cfg.optimizer) if compile else None
        if cfg.optimizer == "sgd":  # elementwise, like Adam: one update of the stack is one update per model
            self.momentum_buf = [torch.zeros_like(p) for p in self.params]
            self.lr = torch.tensor(cfg.lr)
        elif self.fused is None:
            for p, g in zip(self.params, self.grads):
                p.grad = g if g.dtype == p.dtype else torch.zeros_like(p)
            self.opt = torch.optim.Adam(self.params, lr=cfg.lr, fused=True)
        else:
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
            self.t = 0
        # blocks[l]: methods that mix the input of linear layer l (after l hidden layers)
        self.blocks = [[j for j, k in enumerate(cfg.depths) if k == layer] for layer in range(len(ws))]
        self.mixes = [j for j, k in enumerate(cfg.depths) if k is not None]

    @property
    def M(self) -> int:
        return self.D * self.J

    def _weights(self) -> list[tuple[Tensor, Tensor]]:
        """Weights as the matrix products use them: the low-precision copy, or the float32 master."""
        return [(w, b) if wl is None else (wl, b.to(wl.dtype))
                for w, b, wl in zip(self.params[0::2], self.params[1::2], self.wlow)]

    def _update(self) -> None:
        if self.cfg.optimizer == "sgd":
            fn = self.fused or _sgd_update_fused
            for i, p in enumerate(self.params):
                low = self.wlow[i // 2] if i % 2 == 0 else None
                fn(p, self.grads[i], self.momentum_buf[i], low, self.lr, self.cfg.momentum)
            return
        self._adam()

    def _adam(self) -> None:
        if self.fused is None:
            for p, g in zip(self.params, self.grads):
                if p.grad is not g:
                    p.grad.copy_(g)
            self.opt.step()
            for w, wl in zip(self.params[0::2], self.wlow):
                if wl is not None:
                    wl.copy_(w)
            return
        self.t += 1
        b1, b2 = 0.9, 0.999
        step_size = torch.tensor(self.cfg.lr / (1 - b1 ** self.t))
        bc2_sqrt = torch.tensor(math.sqrt(1 - b2 ** self.t))
        for i, p in enumerate(self.params):
            low = self.wlow[i // 2] if i % 2 == 0 else None
            self.fused(p, self.grads[i], self.exp_avg[i], self.exp_avg_sq[i], low, step_size, bc2_sqrt, b1, b2, 1e-8)

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
        """One optimiser step (Adam or SGD, ``cfg.optimizer``) of every model. ``x`` (D, b, 2), ``y`` (D, b)
        int64, ``lam`` (D, b), ``perm`` (D, b).

        Returns each model's mini-batch loss, shape (M,).
        """
        D, J = self.D, self.J
        ws = self._weights()
        last = len(ws) - 1
        mixer = _Mixer(lam[..., None], perm)
        h = x.repeat(J, 1, 1)  # (M, b, 2)
        acts, masks = [], []
        for layer, (w, b) in enumerate(ws):
            h = _mix_blocks(h.to(w.dtype), self.blocks[layer], D, mixer, adjoint=False)
            acts.append(h)  # (M, b, in): the (mixed) input of this layer
            z = torch.baddbmm(b, h, w)  # (M, b, out)
            if layer < last:
                masks.append(z > 0)
                h = z.clamp_min_(0)
        logp = z.float().log_softmax(-1)  # (M, b, K)
        yo = F.one_hot(y, logp.shape[-1]).float()  # (D, b, K)
        target = yo.repeat(J, 1, 1)  # (M, b, K): one-hot for the baseline block, λ-mixed one-hot for mixing blocks
        for j in self.mixes:
            target[j * D:(j + 1) * D] = mixer.forward(yo)
        loss = -(target * logp).sum(-1).mean(-1)  # (M,)
        g = (logp.exp() - target) / x.shape[1]  # (M, b, K): d loss_m / d logits
        for layer in range(last, -1, -1):
            w, _ = ws[layer]
            g = g.to(w.dtype)
            torch.bmm(acts[layer].transpose(1, 2), g, out=self.grads[2 * layer])  # (M, in, out)
            self.grads[2 * layer + 1].copy_(g.sum(1, keepdim=True, dtype=torch.float32))  # (M, 1, out)
            if layer == 0:
                break
            g = torch.bmm(g, w.transpose(1, 2))  # (M, b, in)
            g = _mix_blocks(g, self.blocks[layer], D, mixer, adjoint=True)
            g.mul_(masks[layer - 1])
        self._update()
        return loss

    def fit(self, x: Tensor, y: Tensor, schedules: Sequence[Schedule], progress: Any = None) -> Tensor:
        """Train on datasets ``x`` (D, n, 2), ``y`` (D, n) following ``schedules[d]``; returns mean epoch losses
        (M, epochs). ``progress``: an optional tqdm bar advanced by D per epoch."""
        order = torch.stack([s.order for s in schedules])  # (D, E, nb, b)
        lam = torch.stack([s.lam for s in schedules])
        perm = torch.stack([s.perm for s in schedules])
        _, E, nb, _ = order.shape
        rows = torch.arange(self.D)[:, None]  # (D, 1)
        losses = torch.zeros(self.M, E)
        for ep in range(E):
            for s in range(nb):
                idx = order[:, ep, s]  # (D, b)
                losses[:, ep] += self.step(x[rows, idx], y[rows, idx], lam[:, ep, s], perm[:, ep, s]) / nb
            if progress is not None:
                progress.update(self.D)
        return losses

    @torch.no_grad()
    def logits(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """Logits of every model on its dataset's points ``x`` (D, n, 2): shape (M, n, K), float32."""
        ws = self._weights()
        outs = []
        for a in range(0, x.shape[1], chunk):
            h = x[:, a:a + chunk].repeat(self.J, 1, 1)  # (M, c, 2)
            for layer, (w, b) in enumerate(ws):
                h = torch.baddbmm(b, h.to(w.dtype), w)
                if layer < len(ws) - 1:
                    h = h.clamp_min_(0)
            outs.append(h.float())
        return torch.cat(outs, dim=1)

    def model_params(self, m: int) -> list[tuple[Tensor, Tensor]]:
        """Model m's float32 parameters as ``[(W (in, out), β (out,)), …]`` (copies)."""
        return [(w[m].clone(), b[m, 0].clone()) for w, b in zip(self.params[0::2], self.params[1::2])]


# ---------------------------------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class ToyDataset:
    """One realisation: the spec, its training and test samples, and its seeds' streams already consumed."""

    K: int
    realisation: int
    spec: GMMSpec
    x_train: np.ndarray  # (n_train, 2)
    y_train: np.ndarray  # (n_train,)
    x_test: np.ndarray  # (n_test, 2)
    y_test: np.ndarray  # (n_test,)


def _stream(seed: int, K: int, r: int, purpose: int) -> np.random.SeedSequence:
    # independent, reproducible streams per (seed, K, realisation, purpose): 0 data, 1 training, 2 MMLB
    return np.random.SeedSequence([seed, K, r, purpose])


def make_dataset(seed: int, K: int, r: int, n_train: int, n_test: int, mean_range: float = 1.0) -> ToyDataset:
    """Realisation r of K classes: ``GMMSpec.random`` then ``n_train`` training and ``n_test`` test points.

    ``mean_range`` = a draws the component means from U([−a, a]²) instead of U([−1, 1]²) (METHODS.md §2), with σ
    still ~ U(0.05, 0.5): the means of ``GMMSpec.random`` are multiplied by a, so the realisation keeps its N per
    class, its σ and its random stream (a = 1 gives exactly the default datasets), and only the spread of the
    clusters relative to their width changes.
    """
    rng = np.random.default_rng(_stream(seed, K, r, 0))
    spec = GMMSpec.random(K, rng)
    if mean_range != 1.0:
        spec = GMMSpec(tuple(np.asarray(mu) * mean_range for mu in spec.means), spec.sigma, spec.priors)
    xtr, ytr = spec.sample(n_train, rng)
    xte, yte = spec.sample(n_test, rng)
    return ToyDataset(K, r, spec, xtr, ytr, xte, yte)


def training_generator(seed: int, K: int, r: int) -> torch.Generator:
    """The generator of a dataset's initialisation and schedule (shared by all its methods)."""
    return torch.Generator().manual_seed(int(_stream(seed, K, r, 1).generate_state(1, np.uint64)[0] >> 1))


def _quartiles(values: np.ndarray) -> np.ndarray:
    """Equal-count quartile index 0..3 of each value by rank (ties broken by position)."""
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return rank * 4 // len(values)


def summarise(records: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Mean % excess risk per method with 95 % t-intervals; paired differences to the baseline; the same per
    quartile of the normalised MMLB and per K; correlation of the normalised MMLB with the Bayes risk."""
    from scipy import stats

    def pct(m: str, sel: np.ndarray) -> np.ndarray:
        return 100.0 * np.array([records[i]["excess_risk"][m] for i in np.flatnonzero(sel)])

    def block(sel: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"n": int(sel.sum()),
                               "bayes_risk_pct": mean_ci(100.0 * bayes[sel]),
                               "mmlb": mean_ci(mm[sel]),
                               "excess_risk_pct": {m: mean_ci(pct(m, sel)) for m in methods}}
        if "baseline" in methods:
            base = pct("baseline", sel)
            out["diff_to_baseline_pct"] = {m: {**mean_ci(pct(m, sel) - base),
                                               "frac_better": float(np.mean(pct(m, sel) < base)) if len(base) else None}
                                           for m in methods if m != "baseline"}
        return out

    n = len(records)
    bayes = np.array([r["bayes_risk"] for r in records])
    mm = np.array([r["mmlb"] for r in records])
    ks = np.array([r["K"] for r in records])
    summary: dict[str, Any] = {
        "n_datasets": n,
        "ci_method": "95 % Student-t interval of the mean over datasets (n − 1 degrees of freedom); "
                     "diff_to_baseline_pct is the paired difference method − baseline per dataset",
        "units": "percentage points of 0-1 risk on the test sample",
        "all": block(np.ones(n, dtype=bool)),
    }
    if n >= 4:
        q = _quartiles(mm)
        summary["by_mmlb_quartile"] = [
            {"quartile": i + 1, "mmlb_range": [float(mm[q == i].min()), float(mm[q == i].max())], **block(q == i)}
            for i in range(4)]
    summary["by_K"] = {str(k): block(ks == k) for k in sorted(set(ks.tolist()))}
    if n >= 3 and np.ptp(mm) > 0 and np.ptp(bayes) > 0:
        pr, sr = stats.pearsonr(mm, bayes), stats.spearmanr(mm, bayes)
        summary["corr_mmlb_bayes_risk"] = {"pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
                                           "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue), "n": n}
    return summary


def _grid(lim: float = 2.0, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.linspace(-lim, lim, n)
    gx, gy = np.meshgrid(g, g)
    return gx, gy, np.stack([gx.ravel(), gy.ravel()], 1)  # (n·n, 2)


@register_study("toy-depth", description="seed 002 §3: mixup at depths 0-3 vs baseline on Gaussian-mixture datasets, "
                "excess risk over the exact Bayes classifier by quartile of the normalised MMLB",
                filename="toy_depth.json")
def run_toy_depth(*, realisations_per_k: int = 100, ks: Sequence[int] = (2, 3, 4, 5), epochs: int = 20,
                  seed: int = 0, n_train: int = 1000, n_test: int = 20000, mmlb_pairs: int = 20_000,
                  optimizer: str = "adam", lr: float = 1e-3, mean_range: float = 1.0,
                  out_dir: str | os.PathLike, progress: bool = True, precision: str = "auto",
                  chunk_datasets: int = 4, threads: int | None = None, resume: bool = True,
                  boundary_dataset: tuple[int, int] | None = None,
                  hidden: tuple[int, ...] = (512, 512, 512), compile: bool = True) -> dict[str, Any]:
    """Run seed 002's depth study (METHODS.md §2) and write ``out_dir/toy_depth.json`` (figures: drawn by the report).

    For each K in ``ks`` and r < ``realisations_per_k``: a random GMM dataset; its Bayes risk on the test sample and
    its normalised MMLB (``mmlb_pairs`` pairs per class, α = 1); one MLP (2, 512, 512, 512, K) per method
    (:data:`METHOD_DEPTHS`), all from the dataset's initialisation, trained as in :class:`ToyTrainConfig`; the
    excess risk ``R(h) − R(h*)`` of each on the same test sample.

    ``chunk_datasets`` datasets (× 5 methods) are trained together; after each chunk the records so far are written
    to ``toy_depth.partial.json``, from which a rerun with the same arguments resumes (``resume=True``). ``threads``
    sets ``torch.set_num_threads`` for the run (restored afterwards). ``boundary_dataset`` = (K, r) whose decision
    boundaries are drawn (default: the first realisation of the second K, or of the only K). ``hidden``: the hidden
    widths (seed 002: three layers of 512; narrower only for quick tests, and at least 3 layers for ``mixup_k3``).
    ``precision``: ``"bf16"`` (hidden-to-hidden layers in bfloat16, see :class:`ToyTrainConfig`), ``"fp32"``, or
    ``"auto"``: bf16 on CPUs with native bfloat16 matrix units, fp32 elsewhere (:func:`resolve_precision`); the
    resolved value is recorded in ``config.train.precision``.
    ``compile``: fuse the Adam update with ``torch.compile`` (about 2× faster updates; needs a C++ compiler, falls
    back to eager with a warning; the first call compiles for up to a minute, later runs reuse inductor's cache).
    ``optimizer`` (``"adam"`` or ``"sgd"``, SGD with momentum 0.9) and ``lr``: see :class:`ToyTrainConfig`;
    ``n_train``: training points per dataset (at least one batch of 50); ``mean_range`` = a: component means
    ~ U([−a, a]²) (:func:`make_dataset`). Seed 002 leaves the optimiser, learning rate and the range of the means
    unstated; the defaults (Adam, 1e-3, 1,000 points, a = 1) are METHODS.md §2's choices. All are recorded in
    ``config`` (``config.train.optimizer``/``lr``/``momentum``, ``config.n_train``, ``config.mean_range``).

    Files: ``toy_depth.json`` (config, per-dataset records, summary, timing) and ``decision_boundaries.npz`` (the
    grid predictions the report draws). Returns the JSON dict; ``embedlab report`` draws its figures.
    """
    t_start = time.perf_counter()
    ks = tuple(int(k) for k in ks)
    if realisations_per_k < 1 or not ks or min(ks) < 2:
        raise ValueError(f"need realisations_per_k >= 1 and every K >= 2, got {realisations_per_k}, {ks}")
    precision = resolve_precision(precision)
    cfg = ToyTrainConfig(hidden=tuple(int(h) for h in hidden), epochs=epochs, precision=precision,
                         optimizer=optimizer, lr=float(lr))
    if n_train < cfg.batch_size or n_test < 1 or mmlb_pairs < 1 or chunk_datasets < 1:
        raise ValueError("need n_train >= batch size, n_test >= 1, mmlb_pairs >= 1, chunk_datasets >= 1")
    if not (math.isfinite(mean_range) and mean_range > 0):
        raise ValueError(f"mean_range must be a positive number, got {mean_range}")
    methods = list(METHOD_DEPTHS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if boundary_dataset is None:
        boundary_dataset = (ks[1] if len(ks) > 1 else ks[0], 0)
    opt_text = ("Adam(lr, betas=(0.9, 0.999), eps=1e-8), fused, stacked over models" if cfg.optimizer == "adam" else
                f"SGD(lr, momentum={cfg.momentum}, dampening=0, nesterov=False), fused, stacked over models")
    config = {"realisations_per_k": realisations_per_k, "ks": list(ks), "epochs": epochs, "seed": seed,
              "n_train": n_train, "n_test": n_test, "mmlb_pairs": mmlb_pairs, "mmlb_alpha": 1.0,
              "mean_range": float(mean_range), "means": f"U([-{mean_range:g}, {mean_range:g}]^2)",
              "train": {**dataclasses.asdict(cfg), "depths": list(cfg.depths)}, "methods": METHOD_DEPTHS,
              "optimizer": opt_text,
              "init": "nn.Linear default U(±1/sqrt(fan_in)), one per dataset, shared by its methods",
              "boundary_dataset": list(boundary_dataset)}
    partial = out / "toy_depth.partial.json"
    records: list[dict[str, Any]] = []
    if resume and partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("config") == json.loads(json.dumps(config)):
            records = saved["records"]
    done = {(r["K"], r["realisation"]) for r in records}
    todo = [(k, r) for k in ks for r in range(realisations_per_k) if (k, r) not in done]

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo) * epochs, desc="toy-depth", unit="dataset-epoch", disable=not progress,
               dynamic_ncols=True)
    t_train = t_mmlb = 0.0
    try:
        chunks = []
        for k in ks:
            mine = [r for kk, r in todo if kk == k]
            chunks += [(k, mine[i:i + chunk_datasets]) for i in range(0, len(mine), chunk_datasets)]
        for K, rs in chunks:
            bar.set_description(f"toy-depth K={K}")
            datas = [make_dataset(seed, K, r, n_train, n_test, mean_range) for r in rs]
            t0 = time.perf_counter()
            stats_ = [mmlb(d.spec, alpha=1.0, n_pairs=mmlb_pairs,
                           rng=np.random.default_rng(_stream(seed, K, d.realisation, 2))) for d in datas]
            t_mmlb += time.perf_counter() - t0
            t0 = time.perf_counter()
            inits, scheds = [], []
            for d in datas:
                gen = training_generator(seed, K, d.realisation)
                inits.append(init_params(cfg.sizes(K), gen))
                scheds.append(draw_schedule(n_train, cfg, gen))
            model = BatchedMLP(inits, cfg, compile=compile)
            xs = torch.tensor(np.stack([d.x_train for d in datas]), dtype=torch.float32)  # (D, n, 2)
            ys = torch.tensor(np.stack([d.y_train for d in datas]), dtype=torch.int64)  # (D, n)
            losses = model.fit(xs, ys, scheds, progress=bar)  # (M, E)
            xt = torch.tensor(np.stack([d.x_test for d in datas]), dtype=torch.float32)  # (D, n_test, 2)
            pred = model.logits(xt, chunk=2048).argmax(-1).numpy()  # (M, n_test)
            t_train += time.perf_counter() - t0
            D = len(datas)
            for i, (d, (r_low, norm)) in enumerate(zip(datas, stats_)):
                bayes = float(np.mean(bayes_predict(d.spec, d.x_test) != d.y_test))
                risk = {m: float(np.mean(pred[j * D + i] != d.y_test)) for j, m in enumerate(methods)}
                records.append({
                    "K": K, "realisation": d.realisation,
                    "N_per_class": [int(len(mu)) for mu in d.spec.means], "sigma": d.spec.sigma,
                    "bayes_risk": bayes, "mmlb": norm, "mmlb_r_low": r_low,
                    "test_risk": risk, "excess_risk": {m: risk[m] - bayes for m in methods},
                    "final_train_loss": {m: float(losses[j * D + i, -1]) for j, m in enumerate(methods)},
                })
                if (K, d.realisation) == tuple(boundary_dataset):
                    _save_boundaries(model, i, D, d, methods, seed, out / "decision_boundaries.npz",
                                     lim=2.0 * mean_range)
            records.sort(key=lambda r: (r["K"], r["realisation"]))
            atomic_write_json(partial, {"config": config, "records": records})
    finally:
        bar.close()
        torch.set_num_threads(old_threads)

    summary = summarise(records, methods)
    result = {"study": "toy-depth (seed 002 §3, METHODS.md §2)", "config": config, "summary": summary,
              "timing": {"wall_s": time.perf_counter() - t_start, "train_and_eval_s": t_train, "mmlb_s": t_mmlb,
                         "threads": int(threads) if threads else old_threads, "precision": precision,
                         "compiled_adam": bool(compile and cfg.optimizer == "adam"
                                               and _COMPILED.get("fn") is not None),
                         "compiled_update": bool(compile and _COMPILED.get(
                             "fn" if cfg.optimizer == "adam" else f"fn_{cfg.optimizer}") is not None),
                         "resumed_datasets": len(done), "chunk_datasets": chunk_datasets},
              "versions": versions(), "records": records}
    # the figures are drawn by the report layer from this data (embedlab.reports.study_figures); a boundaries file
    # left by another dataset choice or seed is removed rather than drawn
    bpath = out / "decision_boundaries.npz"
    if bpath.exists():
        with np.load(bpath) as z:
            stale = [int(z["K"]), int(z["realisation"])] != list(boundary_dataset) or int(z["seed"]) != seed
        if stale:
            bpath.unlink()
    result["timing"]["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "toy_depth.json", result)
    partial.unlink(missing_ok=True)
    return result


def _save_boundaries(model: BatchedMLP, i: int, D: int, d: ToyDataset, methods: Sequence[str], seed: int,
                     path: Path, lim: float = 2.0, n: int = 200) -> None:
    """Predictions of h* and of every method's model of dataset i on an n×n grid of [−lim, lim]², as .npz."""
    _, _, pts = _grid(lim, n)
    arrays: dict[str, Any] = {"bayes": bayes_predict(d.spec, pts).astype(np.int8)}
    xg = torch.tensor(pts, dtype=torch.float32)
    with torch.no_grad():
        for j, m in enumerate(methods):
            net = reference_model(model.model_params(j * D + i))
            arrays[m] = net(xg).argmax(-1).numpy().astype(np.int8)
    arrays.update(K=np.array(d.K), realisation=np.array(d.realisation), sigma=np.array(d.spec.sigma),
                  lim=np.array(lim), n=np.array(n), seed=np.array(seed),
                  x_train=d.x_train.astype(np.float32), y_train=d.y_train.astype(np.int8))
    from io import BytesIO

    from embedlab.io import atomic_write_bytes

    buf = BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
