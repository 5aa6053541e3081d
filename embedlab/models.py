"""Model registry. Every model is an :class:`EmbedNet`: a classifier split into encoder f and linear classifier g.

``h(x) = g(pool(S_L(… S_1(normalise(x)))))`` where ``S_1 … S_L`` are the model's *stages*. Manifold mixup at
depth k mixes ``features_at(x, k)`` (k = 0 is the normalised input, i.e. input mixup) and continues with
``forward_from(h, k)``. Models whose last stage returns a spatial map that ``pool`` averages support Dense
MultiMix through :meth:`EmbedNet.feature_map`. Inputs are images in [0, 1] (or raw vectors); normalisation is the
model's first operation, so attacks and mixing act on the data as stored.
"""
from __future__ import annotations

import dataclasses

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
        """Names accepted by :meth:`forward_mixed`: stage depths ``"0" … "L"`` and submodule names."""
        return [str(k) for k in range(self.num_stages + 1)] + [n for n, _ in self.named_modules() if n]

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

    def embed_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings ``(B, d)`` and logits ``(B, C)`` in one pass (what extraction stores)."""
        z = self.forward_features(x)
        return z, self.forward_head(z)

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


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a model a user brings sees an image: resized to ``size``² (``mode``: bilinear or bicubic, antialiased),
    then centre-cropped to ``crop``² (e.g. 256 then 224, as torchvision's and DINOv2's evaluation transforms do)."""

    size: int | None = None
    crop: int | None = None
    mode: str = "bilinear"


def external_input(x: Tensor, mean: Tensor, std: Tensor, resize: "int | Geometry | None", gray_to_rgb: bool) -> Tensor:
    """The input side of a model a user brings: ``x`` (B, C, H, W) in [0, 1] resized to ``resize``² when it differs
    (an int: bilinear; a :class:`Geometry`: its mode, then its centre crop), normalised ``(x − mean) / std``, and a
    single channel repeated to three. Differentiable, so attacks and ODIN see the model's own preprocessing."""
    g = resize if isinstance(resize, Geometry) else Geometry(resize)
    if g.size and tuple(x.shape[-2:]) != (g.size, g.size):
        x = nn.functional.interpolate(x, size=(g.size, g.size), mode=g.mode, antialias=True, align_corners=False)
    if g.crop and g.crop < min(x.shape[-2:]):
        top, left = (x.shape[-2] - g.crop) // 2, (x.shape[-1] - g.crop) // 2
        x = x[..., top:top + g.crop, left:left + g.crop]
    x = (x - mean) / std
    return x.expand(-1, 3, *x.shape[2:]) if gray_to_rgb else x


def check_embedding_method(net: nn.Module, name: str) -> None:
    """``"embedding": "method:NAME"`` must name a method of ``net``: a submodule called on the input, or a
    missing name, would give a silently wrong "embedding" (e.g. ``method:avgpool`` pools the image itself)."""
    from embedlab.errors import EmbedlabError

    what = getattr(net, name, None)
    if isinstance(what, nn.Module):
        raise EmbedlabError(f"\"embedding\": \"method:{name}\" names a submodule of {type(net).__name__}, not a method; "
                            f"to read that module's output give \"embedding\": \"{name}\"")
    if not callable(what):
        methods = sorted(n for n in dir(net) if not n.startswith("_") and callable(getattr(net, n, None))
                         and not isinstance(getattr(net, n, None), nn.Module) and n.startswith(("forward", "embed",
                                                                                                 "encode", "features")))
        raise EmbedlabError(f"\"embedding\": \"method:{name}\": {type(net).__name__} has no method {name!r}"
                            + (f"; it has {', '.join(methods)}" if methods else ""))


class ExternalNet(EmbedNet):
    """Any classifier a user brings (``tv:NAME`` for torchvision, ``timm:NAME`` for timm), seen as f and g.

    g is the model's last linear layer (timm: ``get_classifier()``); the embedding z is its input, captured by a
    forward pre-hook, and ``g(z)`` equals the model's logits. If the input of the last ``AdaptiveAvgPool2d`` averages
    to z (checked once on a dummy batch), that map is the unpooled feature map for Dense MultiMix. Manifold mixup
    mixes at depth 0 (the input) or at any named submodule (``--mix-layer layer2``).

    An analysed model may read z elsewhere (``embedding``: a module's output or ``method:NAME``); ``head`` stays the
    network's g (training, :meth:`forward_head`), and :attr:`embedding_head` is g only where it maps *this* z to the
    logits (checked once on the same dummy batch), else None with :attr:`no_head_reason`: what ViM and ReAct read.
    """

    def __init__(self, net: nn.Module, head: nn.Linear, input_shape: Sequence[int], mean=None, std=None,
                 gray_to_rgb: bool = False, resize: "int | Geometry | None" = None, embedding: str | None = None) -> None:
        super().__init__([], head, "none", mean, std, input_ndim=len(input_shape))
        self.net = net
        self.gray_to_rgb = gray_to_rgb  # 1-channel data into a 3-channel network: repeat the channel
        self.resize = resize  # the model's own input size (part of its preprocessing)
        # where the embedding is read: None → the input of g; "method:NAME" → net.NAME(x); else a module's output
        self.embedding = embedding
        if embedding and not embedding.startswith("method:") and embedding not in dict(net.named_modules()):
            from embedlab.errors import EmbedlabError

            raise EmbedlabError(f"embedding module {embedding!r} not found in {type(net).__name__}")
        if embedding and embedding.startswith("method:"):
            check_embedding_method(net, embedding[7:])
        # g lives inside net; keep a plain reference so its weights are stored once (under net.*)
        del self._modules["head"]
        object.__setattr__(self, "head", head)
        self._pool = next((m for m in reversed(list(net.modules()))
                           if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))), None)
        self._dense, self._head_mismatch = False, "not checked (built without data)"
        if any(t.is_meta for t in net.parameters()):  # a shell to check a checkpoint's shapes against: no data flows
            return
        with torch.no_grad():  # one dummy batch: the Dense MultiMix map and whether g maps z to the logits
            was = net.training
            net.eval()
            try:
                fmap, z, logits = self._capture(torch.rand(2, *input_shape), want_map=True)
            except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as e:  # timm asserts sizes
                from embedlab.errors import EmbedlabError

                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise EmbedlabError(f"{type(net).__name__} cannot run on inputs of shape {tuple(input_shape)}: "
                                    f"{msg}") from None
            finally:
                net.train(was)
        self._dense = (fmap is not None and fmap.dim() == 4 and fmap.shape[1] == z.shape[1]
                       and torch.allclose(fmap.mean((2, 3)), z, atol=1e-4))
        self._head_mismatch = head_mismatch(head, z, logits)

    @property
    def embedding_head(self) -> nn.Linear | None:
        """g where it maps this model's embedding to its logits (``g(z)`` = logits on a dummy batch), else None:
        the head ViM and ReAct use. ``head`` itself is the network's g whatever the embedding (training)."""
        return self.head if self._head_mismatch is None else None

    @property
    def no_head_reason(self) -> str | None:
        """Why :attr:`embedding_head` is None (None when it is not)."""
        if self._head_mismatch is None:
            return None
        where = ("the input of that layer" if self.embedding is None else
                 f"read by \"{self.embedding}\"" if self.embedding.startswith("method:") else
                 f"read at \"{self.embedding}\"")
        return (f"the model's last linear layer does not map the embedding ({where}) to its logits: "
                f"{self._head_mismatch}" + ("" if self.embedding is None else
                                            "; \"embedding\": null reads that layer's input"))

    @property
    def supports_dense(self) -> bool:
        return self._dense

    def _capture(self, x: Tensor, want_map: bool = False) -> tuple[Tensor | None, Tensor, Tensor]:
        """One forward pass; returns (input of the global pool or None, embedding, logits)."""
        seen: dict[str, Tensor] = {}
        xn = self.normalise(x)
        if self.embedding and self.embedding.startswith("method:"):
            return None, getattr(self.net, self.embedding[7:])(xn).flatten(1), self.net(xn)
        if self.embedding:
            module = dict(self.net.named_modules())[self.embedding]
            hooks = [module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("z", out))]
        else:
            hooks = [self.head.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("z", inp[0]))]
        if want_map and self._pool is not None:
            hooks.append(self._pool.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("map", inp[0])))
        try:
            logits = self.net(xn)
        finally:
            for h in hooks:
                h.remove()
        return seen.get("map"), seen["z"].flatten(1), logits

    def normalise(self, x: Tensor) -> Tensor:
        return external_input(x, self.input_mean, self.input_std, self.resize, self.gray_to_rgb)

    def features_at(self, x: Tensor, k: int) -> Tensor:
        if k != 0:
            raise ValueError("external models mix at depth 0 or at a named module")
        return self.normalise(x)

    def forward_from(self, h: Tensor, k: int) -> Tensor:
        if k != 0:
            raise ValueError("external models mix at depth 0 or at a named module")
        return self.net(h)

    def forward_mixed(self, x: Tensor, point: int | str, mix: Callable[[Tensor], Tensor]) -> Tensor:
        if str(point) == "0":
            return self.net(mix(self.normalise(x)))
        return forward_with_hook(self.net, self.normalise(x), str(point), mix)

    def mix_points(self) -> list[str]:
        return ["0"] + [n for n, _ in self.net.named_modules() if n]

    def feature_map(self, x: Tensor) -> Tensor:
        fmap, _, _ = self._capture(x, want_map=True)
        if fmap is None or not self._dense:
            raise ValueError("this model has no global-average-pooled feature map")
        return fmap.flatten(2)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._capture(x)[1]

    def embed_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, z, logits = self._capture(x)
        return z, logits

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalise(x))


def head_mismatch(head: nn.Module | None, z: Tensor, logits: Tensor | None) -> str | None:
    """Why the linear layer ``head`` does not map embeddings ``z`` (N, d) to ``logits`` (N, C), or None when it does:
    its weight is (C, d) and ``head(z)`` equals the logits (atol = rtol = 1e-4). Only such a head may stand for the
    classifier g of z (ViM and ReAct use its weight and bias on z)."""
    w = getattr(head, "weight", None)
    if not isinstance(head, nn.Linear) or not isinstance(w, Tensor):
        return "it is not a linear layer"
    if not isinstance(logits, Tensor) or not isinstance(z, Tensor) or logits.dim() != 2 or z.dim() != 2:
        return "there are no (N, C) logits to compare with"
    if tuple(w.shape) != (logits.shape[1], z.shape[1]):
        return (f"it maps {w.shape[1]} to {w.shape[0]} dimensions, the embedding has {z.shape[1]} and the logits "
                f"{logits.shape[1]}")
    with torch.no_grad():
        out = head(z.to(w.dtype))
    if not torch.allclose(out, logits.to(out.dtype), atol=1e-4, rtol=1e-4):
        return "g(z) differs from the logits on a random batch"
    return None


def head_maps(head: nn.Module | None, z: Tensor, logits: Tensor | None) -> bool:
    """Whether ``head`` maps ``z`` to ``logits`` (see :func:`head_mismatch`)."""
    return head_mismatch(head, z, logits) is None


def first_conv_channels(net: nn.Module) -> int | None:
    """The input channels of the first ``Conv2d`` of ``net`` (in module order), None without one."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def _last_linear(net: nn.Module, num_classes: int) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linears:
        from embedlab.errors import EmbedlabError

        raise EmbedlabError(f"{type(net).__name__} has no final nn.Linear with {num_classes} outputs to use as g")
    return linears[-1]


def _external(name: str, num_classes: int, input_shape: Sequence[int], mean, std, **options: Any) -> EmbedNet:
    from embedlab.errors import EmbedlabError

    lib, _, arch = name.partition(":")
    if lib == "tv":
        import torchvision

        try:
            net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
        except ValueError as e:
            raise EmbedlabError(f"unknown torchvision model {arch!r} ({e})") from None
        head = _last_linear(net, num_classes)
    elif lib == "timm":
        try:
            import timm
        except ImportError:
            raise EmbedlabError(f"model {name!r} needs timm: pip install timm") from None
        try:
            net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **options)
        except RuntimeError as e:
            raise EmbedlabError(f"unknown timm model {arch!r} ({e})") from None
        head = net.get_classifier()
        if not isinstance(head, nn.Linear):
            head = _last_linear(net, num_classes)
    else:
        raise EmbedlabError(f"unknown model prefix {lib!r} in {name!r}; use tv:NAME or timm:NAME")
    return ExternalNet(net, head, input_shape, mean, std, gray_to_rgb=lib == "tv" and input_shape[0] == 1)


def create_model(name: str, num_classes: int, input_shape: Sequence[int], mean=None, std=None,
                 **options: Any) -> EmbedNet:
    """Build a registered model, or ``tv:NAME`` / ``timm:NAME``; ``options`` are the factory's keyword arguments."""
    if ":" in name:
        return _external(name, num_classes, tuple(input_shape), mean, std, **options)
    return MODELS.create(name, num_classes=num_classes, input_shape=tuple(input_shape), mean=mean, std=std, **options)


@register_model("wrn16-8", description="Wide ResNet-16-8 with the CIFAR stem (pre-activation; d = 512, r = 64 at 32 px)")
@register_model("wrn", description="Wide ResNet-depth-widen (Zagoruyko & Komodakis 2016), CIFAR stem; default 16-8")
def wide_resnet(num_classes: int, input_shape: Sequence[int], mean=None, std=None, depth: int = 16,
                widen: int = 8) -> EmbedNet:
    """WRN-depth-widen as in the manifold-mixup / MultiMix CIFAR code: 3×3 stem conv (16 channels), three groups of
    (depth − 4) / 6 pre-activation wide blocks with 16k, 32k, 64k channels (strides 1, 2, 2; no dropout), final BN+ReLU.

    Stages: stem+group1, group2, group3+BN+ReLU; manifold mixup's default {0, 1, 2} is input, after group1, after group2.
    """
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        from embedlab.errors import EmbedlabError

        raise EmbedlabError(f"Wide ResNet needs depth = 6n + 4 (n >= 1) and widen >= 1, got depth={depth}, widen={widen}")
    n = (depth - 4) // 6
    c = input_shape[0]
    w = [16, 16 * widen, 32 * widen, 64 * widen]

    def group(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(PreActBlock(cin, cout, stride), *[PreActBlock(cout, cout, 1) for _ in range(n - 1)])

    stages = [
        nn.Sequential(nn.Conv2d(c, w[0], 3, 1, 1, bias=False), group(w[0], w[1], 1)),
        group(w[1], w[2], 2),
        nn.Sequential(group(w[2], w[3], 2), nn.BatchNorm2d(w[3]), nn.ReLU(inplace=True)),
    ]
    return EmbedNet(stages, nn.Linear(w[3], num_classes), "avg", mean, std)
