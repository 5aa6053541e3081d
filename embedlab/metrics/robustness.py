"""Adversarial robustness: robust accuracy vs ε under FGSM, PGD (L∞ and L2) and, optionally, AutoAttack.

Attacks come from torchattacks (https://github.com/Harry24k/adversarial-attacks-pytorch); this module only wraps
them. Inputs are images in [0, 1] and normalisation is the model's first operation (:mod:`embedlab.models`), so every
ε is measured on the data as stored: L∞ ε in multiples of 1/255, L2 ε in absolute [0, 1] pixel units.

Attack settings (METHODS.md §3):

================  =====  ==================================================================================
attack            norm   torchattacks call
================  =====  ==================================================================================
``fgsm``          L∞     ``FGSM(eps)``: one step ``x + ε·sign(∇ₓ CE)``, clipped to [0, 1]
``pgd_linf``      L∞     ``PGD(eps, alpha=ε/4, steps=10, random_start=True)`` (Madry et al.: α = 2/255 at ε = 8/255)
``pgd_l2``        L2     ``PGDL2(eps, alpha=ε/4, steps=10, random_start=True)``
``autoattack``    L∞     ``AutoAttack(norm="Linf", eps, version="standard", n_classes=C, seed)``:
                         APGD-CE, APGD-T, FAB-T, Square (5000 queries); ε = 8/255 by default
================  =====  ==================================================================================

Robust accuracy counts an example as robust when the attacked input is still classified correctly; examples that are
misclassified clean count as non-robust (the usual convention, so robust accuracy ≤ clean accuracy).

Randomness: torchattacks draws random starts from the *global* torch RNG (and AutoAttack's sub-attacks reseed it), so
every attack call runs inside :func:`torch.random.fork_rng` after ``torch.manual_seed(seed)``: results are a function of
the seed alone and the caller's global RNG state is left exactly as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from embedlab.errors import EmbedlabError

__all__ = ["ATTACKS", "AttackSpec", "batch_seed", "check_attack", "frozen_eval", "make_attack", "perturb", "seeded",
           "torchattacks_version"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack: the label used in metric names and plots, and the norm its ε is measured in."""

    label: str
    norm: str  # "Linf" | "L2"


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("fgsm_linf", "Linf"),
    "pgd_linf": AttackSpec("pgd_linf", "Linf"),
    "pgd_l2": AttackSpec("pgd_l2", "L2"),
    "autoattack": AttackSpec("autoattack_linf", "Linf"),
}
DEFAULT_ATTACKS = ("fgsm", "pgd_linf", "pgd_l2")
# α = ε/4: Madry et al.'s α = 2/255 at ε = 8/255; 10 steps travel 2.5ε, room to reach the boundary from a random start
PGD_STEP_FRACTION = 0.25


def _torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError:  # imported when attacking only: the dependency is optional until then
        raise EmbedlabError("the robustness analysis needs torchattacks: pip install torchattacks") from None
    return torchattacks


def torchattacks_version() -> str:
    """The installed torchattacks version (``"?"`` if it does not say).

    >>> isinstance(torchattacks_version(), str)
    True
    """
    return str(getattr(_torchattacks(), "__version__", "?"))


def check_attack(name: str) -> AttackSpec:
    """The :class:`AttackSpec` of a known attack name; :class:`EmbedlabError` naming the known ones otherwise.

    >>> check_attack("pgd_l2")
    AttackSpec(label='pgd_l2', norm='L2')
    """
    if name not in ATTACKS:
        raise EmbedlabError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def make_attack(model: nn.Module, attack: str, eps: float, *, steps: int = 10, num_classes: int | None = None,
                seed: int = 0) -> Any:
    """The torchattacks object for ``attack`` at radius ``eps`` (input units: 8/255, not 8) with this module's settings.

    Calling it changes global RNG state and, for AutoAttack (FAB calls ``.backward()``), the parameters' ``.grad``;
    use :func:`perturb`, which guards both.

    ``fgsm``: ``x + ε·sign(∇ₓ CE)``; ``pgd_*``: ``steps`` projected steps of size ``α = ε/4`` from a random start.

    >>> type(make_attack(nn.Linear(2, 2), "pgd_linf", 8 / 255)).__name__
    'PGD'
    """
    check_attack(attack)
    ta = _torchattacks()
    if attack == "fgsm":
        return ta.FGSM(model, eps=eps)
    if attack == "pgd_linf":
        return ta.PGD(model, eps=eps, alpha=PGD_STEP_FRACTION * eps, steps=steps, random_start=True)
    if attack == "pgd_l2":
        return ta.PGDL2(model, eps=eps, alpha=PGD_STEP_FRACTION * eps, steps=steps, random_start=True)
    if num_classes is None:
        raise EmbedlabError("AutoAttack needs num_classes (its targeted attacks run over the top classes)")
    return ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with parameters not requiring grad; every module's mode and every flag restored after.

    Freezing the parameters keeps attacks from writing ``.grad`` (FAB inside AutoAttack back-propagates with
    ``.backward()``) and saves computing weight gradients nobody reads. Modes are restored per module, so a model that
    was partly in eval mode (e.g. frozen BatchNorm) comes back exactly as it was.

    >>> m = nn.Linear(2, 2)
    >>> with frozen_eval(m):
    ...     m.training, m.weight.requires_grad
    (False, False)
    >>> m.training, m.weight.requires_grad
    (True, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Global torch RNG seeded with ``seed`` inside, restored to the caller's state outside (CPU and CUDA).

    >>> with seeded(0, torch.device("cpu")):
    ...     a = torch.rand(1)
    >>> with seeded(0, torch.device("cpu")):
    ...     b = torch.rand(1)
    >>> bool(a == b)
    True
    """
    devices: list[int] = []
    if torch.cuda.is_available():  # AutoAttack's sub-attacks reseed the current CUDA device even for CPU inputs
        devices = sorted({torch.cuda.current_device(), *([device.index or 0] if device.type == "cuda" else [])})
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def perturb(model: nn.Module, x: Tensor, y: Tensor, attack: str, eps: float, *, steps: int = 10,
            num_classes: int | None = None, seed: int = 0) -> Tensor:
    """Adversarial examples for ``(x, y)``: ``(B, C, H, W)`` in [0, 1], labels ``(B,)`` → ``(B, C, H, W)`` in [0, 1].

    ``eps`` is in input units (L∞: 8/255; L2: absolute). The model is attacked in eval mode; its parameters, their
    ``.grad``, its modes and the global RNG are as before on return. ε = 0 returns ``x`` itself (the only feasible
    point; torchattacks' PGD-L2 would divide 0 by 0 there).

    ``fgsm``: ``x̃ = clip_[0,1](x + ε·sign(∇ₓ CE(f(x), y)))``; PGD repeats such steps (size ``α``) and projects onto the
    ε-ball of ``x``: ``x̃ ← Π_{‖x̃ − x‖ ≤ ε}(x̃ + α·step)``.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x = torch.full((3, 1, 2, 2), 0.5)
    >>> x_adv = perturb(model, x, torch.tensor([0, 1, 0]), "fgsm", 8 / 255)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    True
    """
    check_attack(attack)
    if eps < 0:
        raise EmbedlabError(f"attack radius must be ≥ 0, got {eps}")
    if x.dim() != 4:
        raise EmbedlabError(f"attacks need image batches (B, C, H, W) in [0, 1], got shape {tuple(x.shape)}")
    if eps == 0:
        return x.detach().clone()
    with frozen_eval(model), seeded(seed, x.device):
        atk = make_attack(model, attack, eps, steps=steps, num_classes=num_classes, seed=seed)
        return atk(x, y).detach()


def batch_seed(seed: int, batch: int) -> int:
    """Independent, reproducible seed per batch, the same for every attack and ε (common random numbers):
    ``SeedSequence([seed, batch])``'s first 32-bit state word.

    >>> batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])
