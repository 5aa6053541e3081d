"""The ``robustness`` analysis: robust accuracy vs ε under FGSM, PGD (L∞ and L2) and, optionally, AutoAttack, on a
seeded test subset. The attacks (torchattacks wrappers, settings, RNG and model guards) are in
:mod:`embedlab.metrics.robustness`; this module picks the subset, runs the grid of attacks and radii, and describes
the results.
"""
from __future__ import annotations

from typing import Annotated, Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from embedlab.analyses.registry import Inputs, Output, metric, register_analysis
from embedlab.config import AT_LEAST_1, POSITIVE
from embedlab.data import collate_batched
from embedlab.errors import EmbedlabError
from embedlab.metrics.robustness import (
    ATTACKS,
    DEFAULT_ATTACKS,
    PGD_STEP_FRACTION,
    batch_seed,
    check_attack,
    frozen_eval,
    perturb,
    torchattacks_version,
)

NOTE = ("Robust accuracy on a seeded test subset; L\u221e radii in multiples of 1/255, L2 radii in [0, 1] pixel units; "
        "clean examples that are misclassified count as non-robust.")
EPS_UNIT = {"Linf": "1/255", "L2": "L2 in [0, 1] pixels"}
CURVE_NOTE = {"Linf": "\u00d7 1/255, L\u221e", "L2": "L2, [0, 1] pixel units"}  # the unit of a curve's x (ε)
CAPTION = "Robust accuracy against the attack radius \u03b5 (\u03b5 = 0: clean accuracy on the same subset), one line per model."


def _eps_name(attack: str, eps: float) -> str:
    return f"eps={eps:g}/255" if ATTACKS[attack].norm == "Linf" else f"eps={eps:g}"


def _radii(value: Any) -> list[float]:
    """A radius setting as a list: ``--opt robustness.eps=8`` gives one number, ``eps=2,4`` a list."""
    return [float(value)] if isinstance(value, (int, float)) else [float(e) for e in value]


def _names(value: Any) -> list[str]:
    """An attacks setting as a list: ``--opt robustness.attacks=fgsm,pgd_l2`` arrives as one string."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def _passes(inp: Inputs, eps: Sequence[float] = (1, 2, 4, 8), l2_eps: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
            steps: int = 10, max_examples: int = 500, attacks: Sequence[str] = DEFAULT_ATTACKS,
            autoattack: bool = False, **_: Any) -> int:
    """Per-example gradient passes of :func:`robustness` (AutoAttack counted as 100 steps: a rough floor)."""
    n = min(int(max_examples), len(inp.test_data)) if inp.test_data is not None else 0
    per = 0
    for a in dict.fromkeys([*_names(attacks), *(["autoattack"] if autoattack else [])]):
        radii = [1.0] if a == "autoattack" else _radii(l2_eps if a == "pgd_l2" else eps)
        per += len(set(radii)) * (100 if a == "autoattack" else int(steps) if a.startswith("pgd") else 1)
    return n * per


@register_analysis("robustness",
                   description="robust accuracy vs ε under FGSM, PGD-10 (L∞, L2; α=ε/4, random start) and optionally "
                               "AutoAttack (standard, L∞ 8/255), torchattacks, on a seeded test subset",
                   needs=("model", "test_data", "logits"), title="Adversarial robustness", note=NOTE, gradient_passes=_passes,
                   min_classes=2)
def robustness(inp: Inputs, eps: Sequence[float] = (1, 2, 4, 8), l2_eps: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
               steps: Annotated[int, AT_LEAST_1] = 10, max_examples: Annotated[int, AT_LEAST_1] = 500,
               batch_size: Annotated[int, AT_LEAST_1] = 256, attacks: Sequence[str] = DEFAULT_ATTACKS,
               autoattack: bool = False, autoattack_eps: Annotated[float, POSITIVE] = 8) -> Output:
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

    Metrics: ``clean_acc_subset`` and ``robust_acc/<fgsm_linf|pgd_linf|pgd_l2|autoattack_linf>/eps=<ε>[/255]``
    (table "robust accuracy · <label>", column "ε = <ε>[/255]").
    Plots: kind ``curves``, one curve per attack label, ``x`` = ε (in the units of the setting), ``y`` = robust
    accuracy, starting with the ε = 0 (clean) point; each curve's ``note`` is the unit of its ε and it also carries
    ``norm`` and ``eps_unit``.
    Arrays: ``subset_indices`` (n,), ``correct_clean`` (n,), ``correct_<label>`` (len(ε), n) booleans.
    """
    if inp.model is None or inp.test_data is None:
        raise EmbedlabError("robustness needs the model and the raw test inputs")
    chosen = list(dict.fromkeys([*_names(attacks), *(["autoattack"] if autoattack else [])]))
    for a in chosen:
        check_attack(a)
    grids: dict[str, list[float]] = {}  # attack → radii in the units of its setting
    for a in chosen:
        radii = [float(autoattack_eps)] if a == "autoattack" else _radii(l2_eps if a == "pgd_l2" else eps)
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
        passes = sum(len(grids[a]) * (int(steps) if a.startswith("pgd") else 1) for a in chosen)
        bar = tqdm(loader, desc=f"robustness ({n} examples x ~{passes} gradient passes)", unit="batch",
                   disable=not inp.progress, leave=False)
        for b, (x, y) in enumerate(bar):
            x, y = x.to(device), y.to(device)
            if x.dim() != 4 or x.min() < 0 or x.max() > 1:
                raise EmbedlabError("robustness needs image inputs (B, C, H, W) in [0, 1]; "
                                    f"got shape {tuple(x.shape)}, range [{float(x.min()):g}, {float(x.max()):g}]")
            with torch.no_grad():
                clean.append((model(x).argmax(1) == y).cpu())
            s = batch_seed(inp.seed, b)
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
    curves: dict[str, Any] = {}
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
            eps_name = _eps_name(a, r)
            metrics[f"robust_acc/{spec.label}/{eps_name}"] = metric(
                acc, True, "robustness", table=f"robust accuracy \u00b7 {spec.label}",
                column=eps_name.replace("eps=", "\u03b5 = "),
                key={"metric": "robust_acc", "attack": spec.label, "eps": r, "eps_unit": EPS_UNIT[spec.norm]},
                **settings)
        with_zero = [(0.0, clean_acc)] + [(r, acc) for r, acc in zip(grids[a], accs) if r > 0]
        curves[spec.label] = {"x": [r for r, _ in with_zero], "y": [acc for _, acc in with_zero],
                              "note": CURVE_NOTE[spec.norm], "norm": spec.norm, "eps_unit": EPS_UNIT[spec.norm]}
        arrays[f"correct_{spec.label}"] = hits.numpy()
    plots = {"kind": "curves", "x_label": "\u03b5", "y_label": "robust accuracy", "caption": CAPTION, "curves": curves}
    return Output(metrics, plots, arrays)
