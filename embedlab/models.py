"""Model registry. Every model is an :class:`EmbedNet`: a classifier split into encoder f and linear classifier g.

``h(x) = g(pool(S_L(… S_1(normalise(x)))))`` where ``S_1 … S_L`` are the model's *stages*. Manifold mixup at
depth k mixes ``features_at(x, k)`` (k = 0 is the normalised input, i.e. input mixup) and continues with
``forward_from(h, k)``. Models whose last stage returns a spatial map that ``pool`` averages support Dense
MultiMix through :meth:`EmbedNet.feature_map`. Inputs are images in [0, 1] (or raw vectors); normalisation is the
model's first operation, so attacks and mixing act on the data as stored.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from embedlab.registry import Registry

MODELS: Registry[Callable[..., "EmbedNet"]] = Registry("model")
register_model = MODELS.register


class EmbedNet(nn.Module):
    """Classifier ``g ∘ pool ∘ stages ∘ normalise`` exposing the encoder ``f`` and classifier ``g`` separately.

    Args:
        stages: blocks run in order; manifold mixup may mix after any of them.
        head: the linear classifier g, ``(B, d) -> (B, C)``.
        pool: ``"avg"`` (global average over spatial positions of a ``(B, d, H, W)`` map) or ``"none"``.
        mean, std: per-channel normalisation applied to the input (shape broadcastable to one example).
    """

    def __init__(self, stages: Sequence[nn.Module], head: nn.Linear, pool: str,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_ndim: int = 3) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = head
        if pool not in ("avg", "none"):
            raise ValueError(f"pool must be 'avg' or 'none', got {pool!r}")
        self.pool_kind = pool
        shape = (-1,) + (1,) * (input_ndim - 1)
        m = torch.tensor(mean if mean is not None else [0.0], dtype=torch.float32).reshape(shape)
        s = torch.tensor(std if std is not None else [1.0], dtype=torch.float32).reshape(shape)
        self.register_buffer("input_mean", m)
        self.register_buffer("input_std", s)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def embed_dim(self) -> int:
        return self.head.in_features

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def supports_dense(self) -> bool:
        """True when the classifier follows global average pooling of a spatial map (Dense MultiMix applies)."""
        return self.pool_kind == "avg"

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.input_mean) / self.input_std

    def features_at(self, x: Tensor, k: int) -> Tensor:
        """Activations after ``k`` stages (``k = 0``: the normalised input)."""
        h = self.normalise(x)
        for stage in self.stages[:k]:
            h = stage(h)
        return h

    def forward_from(self, h: Tensor, k: int) -> Tensor:
        """Logits from activations ``h`` taken after ``k`` stages."""
        for stage in self.stages[k:]:
            h = stage(h)
        return self.head(self.pool(h))

    def mix_points(self) -> list[str]:
        """Names accepted by :meth:`forward_mixed`: stage depths ``"0" … "L"`` (plus any submodule name)."""
        return [str(k) for k in range(self.num_stages + 1)]

    def forward_mixed(self, x: Tensor, point: int | str, mix: Callable[[Tensor], Tensor]) -> Tensor:
        """Logits with ``mix`` applied to the activations at ``point``: a stage depth k (0 = normalised input,
        k = after k stages) or the name of a submodule (its output is replaced by ``mix(output)``)."""
        if isinstance(point, int) or str(point).isdigit():
            k = int(point)
            return self.forward_from(mix(self.features_at(x, k)), k)
        return forward_with_hook(self, x, str(point), mix)

    def pool(self, h: Tensor) -> Tensor:
        return h.mean(dim=(2, 3)) if self.pool_kind == "avg" else h

    def feature_map(self, x: Tensor) -> Tensor:
        """Unpooled last-stage features ``(B, d, r)`` with ``r = H·W`` positions (models with ``pool='avg'``)."""
        h = self.features_at(x, self.num_stages)
        return h.flatten(2)

    def forward_features(self, x: Tensor) -> Tensor:
        """The encoder f: embedding ``z = f(x)`` of shape ``(B, d)``."""
        return self.pool(self.features_at(x, self.num_stages))

    def forward_head(self, z: Tensor) -> Tensor:
        """The classifier g: logits ``(B, C)`` from embeddings ``(B, d)``."""
        return self.head(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def forward_with_hook(model: nn.Module, x: Tensor, name: str, mix: Callable[[Tensor], Tensor]) -> Tensor:
    """``model(x)`` with the output of submodule ``name`` replaced by ``mix(output)``."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        from embedlab.errors import EmbedlabError

        known = [n for n in modules if n and n.count(".") <= 1][:40]
        raise EmbedlabError(f"no module named {name!r} to mix at; top-level modules: {', '.join(known)}")
    handle = modules[name].register_forward_hook(lambda _m, _i, out: mix(out))
    try:
        return model(x)
    finally:
        handle.remove()


def _conv_bn(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_model("cnn-gap", description="3-conv BN-ReLU CNN with global average pooling (CPU-sized; Dense MultiMix capable)")
def cnn_gap(num_classes: int, input_shape: Sequence[int], mean=None, std=None, width: int = 32) -> EmbedNet:
    """conv(w)→conv(2w)+pool→conv(4w), pooling after the 1st and 3rd conv too when the input is larger than 16 px.

    For 8×8 digits the last map is 4×4 (r = 16), for 32×32 CIFAR 4×4 as well, matching the r = 16 of CIFAR ResNets.
    """
    c, h = input_shape[0], input_shape[1]
    big = h > 16
    stages = [_conv_bn(c, width, big), _conv_bn(width, 2 * width, True), _conv_bn(2 * width, 4 * width, big)]
    return EmbedNet(stages, nn.Linear(4 * width, num_classes), "avg", mean, std)


@register_model("small-cnn", description="seed 002's CNN: Conv(32)→Conv(64)→FC(64)→FC(C) (no spatial pooling)")
def small_cnn(num_classes: int, input_shape: Sequence[int], mean=None, std=None, hidden: int = 64) -> EmbedNet:
    """Two 3×3 conv layers (32, 64 channels, ReLU, 2×2 max-pool each **[choice]**), FC ReLU(64), linear classifier.

    Stages: conv1, conv2+flatten, fc; manifold mixup at k = 2 mixes "immediately before the first FC layer" (seed 002 §4.2).
    The embedding is the 64-d FC output.
    """
    c, h, w = input_shape
    flat = 64 * (h // 4) * (w // 4)
    stages = [
        nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten()),
        nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True)),
    ]
    return EmbedNet(stages, nn.Linear(hidden, num_classes), "none", mean, std)


@register_model("mlp", description="ReLU MLP, seed 002's (2,512,512,512,K) by default; stage k = after k hidden layers")
def mlp(num_classes: int, input_shape: Sequence[int], mean=None, std=None,
        hidden: Sequence[int] = (512, 512, 512)) -> EmbedNet:
    dim = 1
    for s in input_shape:
        dim *= int(s)
    widths = [dim, *[int(h) for h in hidden]]
    stages: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        stages.append(nn.Sequential(*layers, nn.Linear(a, b), nn.ReLU(inplace=True)))
    return EmbedNet(stages, nn.Linear(widths[-1], num_classes), "none", mean, std, input_ndim=len(input_shape))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings"), as in the manifold-mixup / MultiMix code."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + sc


@register_model("preact-resnet18", description="PreAct ResNet-18 with the CIFAR stem (3×3 conv, no max-pool); r = 16 at 32 px")
def preact_resnet18(num_classes: int, input_shape: Sequence[int], mean=None, std=None, width: int = 64) -> EmbedNet:
    """Stages: stem+layer1, layer2, layer3, layer4+BN+ReLU; manifold mixup's default set {0, 1, 2} is input, after layer1, after layer2."""
    c = input_shape[0]
    w = [width, 2 * width, 4 * width, 8 * width]

    def layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1))

    stages = [
        nn.Sequential(nn.Conv2d(c, w[0], 3, 1, 1, bias=False), layer(w[0], w[0], 1)),
        layer(w[0], w[1], 2),
        layer(w[1], w[2], 2),
        nn.Sequential(layer(w[2], w[3], 2), nn.BatchNorm2d(w[3]), nn.ReLU(inplace=True)),
    ]
    return EmbedNet(stages, nn.Linear(w[3], num_classes), "avg", mean, std)


def _torchvision_resnet(arch: str) -> Callable[..., EmbedNet]:
    def build(num_classes: int, input_shape: Sequence[int], mean=None, std=None) -> EmbedNet:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        return EmbedNet([stem, net.layer2, net.layer3, net.layer4], net.fc, "avg", mean, std)

    build.__doc__ = f"torchvision {arch} (ImageNet stem), stages: stem+layer1, layer2, layer3, layer4."
    return build


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_model(_arch, description=f"torchvision {_arch} (ImageNet stem, random init)")(_torchvision_resnet(_arch))


def create_model(name: str, num_classes: int, input_shape: Sequence[int], mean=None, std=None,
                 **options: Any) -> EmbedNet:
    """Build a registered model; ``options`` are the factory's keyword arguments (e.g. ``width``)."""
    return MODELS.create(name, num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std, **options)
