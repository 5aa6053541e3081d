"""Base class, registry and shared helpers of the mixing methods.

Notation (METHODS.md): mini-batch of ``b`` examples, ``c`` classes, embedding ``Z = f(X) ∈ R^{b×d}``, linear
classifier ``g(z) = W z + β``. All losses are soft-target cross-entropy ``−Σ ỹ log softmax(logits)``, averaged.
Every method draws all randomness from the ``torch.Generator`` passed to :meth:`MixMethod.loss`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from embedlab.config import parse_options
from embedlab.errors import EmbedlabError
from embedlab.models import EmbedNet
from embedlab.registry import Registry
from embedlab.sampling import beta

METHODS: Registry[type["MixMethod"]] = Registry("method")
ALPHA_SCHEDULES = ("constant", "0->1", "1->0")


def register_method(name: str, *, description: str = "") -> Any:
    """Class decorator: register a :class:`MixMethod` subclass under ``name``."""

    def deco(cls: type[MixMethod]) -> type[MixMethod]:
        cls.name = name
        return METHODS.register(name, description=description)(cls)

    return deco


_AGREEMENT: ContextVar[Tensor | None] = ContextVar("embedlab_train_agreement", default=None)


@contextlib.contextmanager
def track_agreement(into: Tensor) -> Iterator[None]:
    """While active, every training loss term adds ``[#(argmax logits == argmax target), #terms]`` to ``into``
    (a float64 tensor of shape ``(2,)`` on the training device; no host synchronisation): the trainer's per-epoch
    ``train_accuracy``. For ERM it is the accuracy on the training labels; for a mixing method, the agreement of
    each generated example's prediction with the largest class of its mixed target."""
    token = _AGREEMENT.set(into)
    try:
        yield
    finally:
        _AGREEMENT.reset(token)


def _record(logits: Tensor, target_class: Tensor) -> None:
    into = _AGREEMENT.get()
    if into is not None:
        with torch.no_grad():
            hit = (logits.detach().argmax(-1) == target_class).sum()
            into += torch.stack([hit.to(into.dtype), into.new_tensor(float(target_class.numel()))])


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``mean_k −Σ_c target[k, c] log softmax(logits[k])_c`` for logits/targets of shape ``(..., c)``."""
    _record(logits, target.argmax(-1))
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(target * logp).sum(-1).mean()


def hard_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``mean_k −log softmax(logits[k])_{y_k}``: cross-entropy with integer labels ``y`` of shape ``(...,)``."""
    _record(logits, y)
    return F.cross_entropy(logits.float(), y)


def scheduled_alpha(alpha_max: float, schedule: str, t: float, half_life: float) -> float:
    """Seed 002 §4.2, exponential schedules with half-life H: "0->1": ``α_max (1 − 2^(−t/H))``;
    "1->0": ``α_max 2^(−t/H)``; "constant": ``α_max``. ``t`` is the number of completed epochs."""
    if schedule == "constant":
        return alpha_max
    decay = 2.0 ** (-t / half_life)
    return alpha_max * (1.0 - decay) if schedule == "0->1" else alpha_max * decay


@dataclass
class NoOptions:
    pass


@dataclass
class AlphaOptions:
    """Options of every method with an interpolation parameter α; any such method accepts an α schedule."""

    alpha: float = 1.0
    alpha_schedule: str = "constant"
    half_life: float = 25.0

    def validate(self, where: str) -> None:
        check_positive(where, alpha=self.alpha, half_life=self.half_life)
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise EmbedlabError(f"{where} option alpha_schedule: one of {', '.join(ALPHA_SCHEDULES)}, "
                                f"got {self.alpha_schedule!r}")


class MixMethod:
    """Base class. Subclasses set the class metadata (the MultiMix paper's Table 1) and implement :meth:`loss`.

    ``self.alpha`` is the current α for methods with :class:`AlphaOptions`; :meth:`on_epoch_start` moves it along
    the configured schedule.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    space: ClassVar[str] = "–"
    loss_terms: ClassVar[str] = "b"
    examples_per_mix: ClassVar[str] = "1"
    generated_per_batch: ClassVar[str] = "b"
    factor_distribution: ClassVar[str] = "–"
    reference: ClassVar[str] = ""

    def __init__(self, options: Any) -> None:
        self.opts = options
        self.alpha: float | None = getattr(options, "alpha", None)

    def check_model(self, model: EmbedNet) -> None:
        """Raise :class:`EmbedlabError` if the model cannot be trained with this method."""

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer before epoch ``epoch`` (1-based). Moves α along its schedule."""
        if isinstance(self.opts, AlphaOptions):
            self.alpha = scheduled_alpha(self.opts.alpha, self.opts.alpha_schedule, epoch - 1, self.opts.half_life)

    def loss(self, model: EmbedNet, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float]:
        """Per-epoch statistics of the mixing, logged with the epoch's metrics (called after the epoch's last
        step). Base: the current α when it follows a schedule (key ``alpha``); otherwise nothing."""
        if isinstance(self.opts, AlphaOptions) and self.opts.alpha_schedule != "constant" and self.alpha is not None:
            return {"alpha": float(self.alpha)}
        return {}

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def variant(self) -> str | None:
        """The label of an **embedlab variant** these options select (a departure from the paper's method that
        every table row using it must carry), or None for the paper's method. Recorded in checkpoint metadata as
        ``method.variant``."""
        return None


def create_method(name: str, options: dict[str, Any] | None = None) -> MixMethod:
    """The one way to build a method: ``create_method("multimix", {"n": 500})``."""
    cls = METHODS.get(name).obj
    return cls(parse_options(cls.Options, dict(options or {}), f"method {name!r}"))


def method_metadata(name: str) -> dict[str, Any]:
    """Table-1 metadata and option defaults of a registered method (for ``embedlab list methods``)."""
    entry = METHODS.get(name)
    cls = entry.obj
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(cls.Options)}
    return {"name": name, "description": entry.description, "space": cls.space, "loss_terms": cls.loss_terms,
            "examples_per_mix": cls.examples_per_mix, "generated_per_batch": cls.generated_per_batch,
            "factor_distribution": cls.factor_distribution, "reference": cls.reference, "options": defaults}


def check_positive(where: str, **vals: float) -> None:
    for k, v in vals.items():
        if not v > 0:
            raise EmbedlabError(f"{where} option {k}: must be > 0, got {v}")


def check_probability(where: str, **vals: float) -> None:
    for k, v in vals.items():
        if not 0.0 <= v <= 1.0:
            raise EmbedlabError(f"{where} option {k}: must be in [0, 1], got {v}")


def one_hot(y: Tensor, c: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return F.one_hot(y, c).to(dtype)


def pair_mix(a: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """``λ a + (1 − λ) a[perm]`` with λ of shape ``(b,)`` broadcast over the trailing dims of ``a``."""
    lam = lam.to(a.dtype).reshape(-1, *([1] * (a.dim() - 1)))
    return lam * a + (1 - lam) * a[perm]


def draw_lambda(alpha: float | Tensor, b: int, per_sample: bool, gen: torch.Generator) -> Tensor:
    """λ ~ Beta(α, α) of shape ``(b,)``: one value for the batch (expanded) or one per example.

    α may be a tensor of per-example concentrations (then ``per_sample`` is implied).
    """
    if isinstance(alpha, Tensor):
        return beta(alpha, (b,), gen)
    return beta(alpha, (b,) if per_sample else (1,), gen).expand(b)


def permutation(b: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """A random permutation of ``range(b)`` drawn from ``gen``, moved to ``device``."""
    return torch.randperm(b, generator=gen, device=gen.device).to(device)
