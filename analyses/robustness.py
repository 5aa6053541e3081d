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
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.data import collate_batched
from embedlab.errors import EmbedlabError


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
    except ImportError:  # analyses/__init__ imports this module, so the dependency is only needed when attacking
        raise EmbedlabError("the robustness analysis needs torchattacks: pip install torchattacks") from None
    return torchattacks


def torchattacks_version() -> str:
    return str(getattr(_torchattacks(), "__version__", "?"))


def _check_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise EmbedlabError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def make_attack(model: nn.Module, attack: str, eps: float, *, steps: int = 10, num_classes: int | None = None,
                seed: int = 0) -> Any:
    """The torchattacks object for ``attack`` at radius ``eps`` (input units: 8/255, not 8) with this module's settings.

    Calling it changes global RNG state and, for AutoAttack (FAB calls ``.backward()``), the parameters' ``.grad``;
    use :func:`perturb`, which guards both.
    """
    _check_attack(attack)
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
    """Global torch RNG seeded with ``seed`` inside, restored to the caller's state outside (CPU and CUDA)."""
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
    """
    _check_attack(attack)
    if eps < 0:
        raise EmbedlabError(f"attack radius must be ≥ 0, got {eps}")
    if x.dim() != 4:
        raise EmbedlabError(f"attacks need image batches (B, C, H, W) in [0, 1], got shape {tuple(x.shape)}")
    if eps == 0:
        return x.detach().clone()
    with frozen_eval(model), seeded(seed, x.device):
        atk = make_attack(model, attack, eps, steps=steps, num_classes=num_classes, seed=seed)
        return atk(x, y).detach()


def _batch_seed(seed: int, batch: int) -> int:
    """Independent, reproducible seed per batch, the same for every attack and ε (common random numbers)."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def _eps_name(attack: str, eps: float) -> str:
    return f"eps={eps:g}/255" if ATTACKS[attack].norm == "Linf" else f"eps={eps:g}"


@register_analysis("robustness",
                   description="robust accuracy vs ε under FGSM, PGD-10 (L∞, L2; α=ε/4, random start) and optionally "
                               "AutoAttack (standard, L∞ 8/255), torchattacks, on a seeded test subset",
                   needs=("model", "test_data"))
def robustness(inp: Inputs, eps: Sequence[float] = (1, 2, 4, 8), l2_eps: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
               steps: int = 10, max_examples: int = 1000, batch_size: int = 256,
               attacks: Sequence[str] = DEFAULT_ATTACKS, autoattack: bool = False, autoattack_eps: float = 8) -> Output:
    """Robust accuracy of ``inp.model`` on a seeded subset of ``inp.test_data``.

    Args:
        eps: L∞ radii in multiples of 1/255 (FGSM, PGD-L∞).
        l2_eps: L2 radii in [0, 1] pixel units (PGD-L2).
        steps: PGD iterations.
        max_examples: size of the test subset (a seeded random choice; the whole set when smaller).
        batch_size: attack batch size.
        attacks: subset of ``fgsm``, ``pgd_linf``, ``pgd_l2``, ``autoattack``.
        autoattack: add AutoAttack (standard, L∞) at ``autoattack_eps``/255; slow, hence off by default. Listing
            ``autoattack`` in ``attacks`` runs it too.

    Metrics: ``clean_acc_subset`` and ``robust_acc/<fgsm_linf|pgd_linf|pgd_l2|autoattack_linf>/eps=<ε>[/255]``.
    Plots: per attack label ``{"eps", "accuracy", "norm", "eps_unit"}`` starting with the ε = 0 (clean) point.
    Arrays: ``subset_indices`` (n,), ``correct_clean`` (n,), ``correct_<label>`` (len(ε), n) booleans.
    """
    if inp.model is None or inp.test_data is None:
        raise EmbedlabError("robustness needs the model and the raw test inputs")
    chosen = list(dict.fromkeys([*attacks, *(["autoattack"] if autoattack else [])]))
    for a in chosen:
        _check_attack(a)
    grids: dict[str, list[float]] = {}  # attack → radii in the units of its setting
    for a in chosen:
        radii = [float(autoattack_eps)] if a == "autoattack" else [float(e) for e in (l2_eps if a == "pgd_l2" else eps)]
        if any(r < 0 for r in radii):
            raise EmbedlabError(f"{a}: radii must be ≥ 0, got {radii}")
        grids[a] = sorted(set(radii))
    scale = {a: (1 / 255 if ATTACKS[a].norm == "Linf" else 1.0) for a in chosen}  # setting units → input units

    n_total = len(inp.test_data)
    n = min(int(max_examples), n_total)
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(inp.seed))
    indices = sorted(order[:n].tolist())
    # a DataLoader draws its workers' base seed from the global RNG unless given a generator, even without shuffling
    loader = DataLoader(Subset(inp.test_data, indices), batch_size=batch_size, shuffle=False, collate_fn=collate_batched,
                        generator=torch.Generator().manual_seed(inp.seed))

    model, device, num_classes = inp.model, inp.device, inp.num_classes
    clean: list[Tensor] = []
    correct: dict[str, list[list[Tensor]]] = {a: [[] for _ in grids[a]] for a in chosen}
    with frozen_eval(model):
        # batches outside, attacks inside: the data is read once, and each (attack, ε) result depends on the seed and
        # the batch only, not on which other attacks or radii were requested
        for b, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            if x.dim() != 4 or x.min() < 0 or x.max() > 1:
                raise EmbedlabError("robustness needs image inputs (B, C, H, W) in [0, 1]; "
                                    f"got shape {tuple(x.shape)}, range [{float(x.min()):g}, {float(x.max()):g}]")
            with torch.no_grad():
                clean.append((model(x).argmax(1) == y).cpu())
            s = _batch_seed(inp.seed, b)
            for a in chosen:
                for i, r in enumerate(grids[a]):
                    x_adv = perturb(model, x, y, a, r * scale[a], steps=steps, num_classes=num_classes, seed=s)
                    with torch.no_grad():
                        correct[a][i].append((model(x_adv).argmax(1) == y).cpu())

    clean_correct = torch.cat(clean)  # (n,)
    clean_acc = float(clean_correct.float().mean())
    version = torchattacks_version()
    common = dict(n_examples=n, max_examples=int(max_examples), subset_seed=inp.seed, batch_size=int(batch_size))
    metrics = {"clean_acc_subset": metric(clean_acc, True, "robustness", **common)}
    plots: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {"subset_indices": np.asarray(indices, dtype=np.int64),
                                     "correct_clean": clean_correct.numpy()}
    for a in chosen:
        spec = ATTACKS[a]
        hits = torch.stack([torch.cat(c) for c in correct[a]])  # (len(ε), n)
        accs = hits.float().mean(1).tolist()
        for r, acc in zip(grids[a], accs):
            settings: dict[str, Any] = dict(attack=a, norm=spec.norm, eps=r * scale[a], **common,
                                            torchattacks=version)
            if spec.norm == "Linf":
                settings["eps_255"] = r
            if a in ("pgd_linf", "pgd_l2"):
                settings.update(steps=int(steps), alpha=PGD_STEP_FRACTION * r * scale[a], random_start=True)
            if a == "autoattack":
                settings.update(version="standard", n_classes=num_classes)
            metrics[f"robust_acc/{spec.label}/{_eps_name(a, r)}"] = metric(acc, True, "robustness", **settings)
        with_zero = [(0.0, clean_acc)] + [(r, acc) for r, acc in zip(grids[a], accs) if r > 0]
        plots[spec.label] = {"eps": [r for r, _ in with_zero], "accuracy": [acc for _, acc in with_zero],
                             "norm": spec.norm, "eps_unit": "1/255" if spec.norm == "Linf" else "L2 in [0, 1] pixels"}
        arrays[f"correct_{spec.label}"] = hits.numpy()
    return Output(metrics, plots, arrays)
