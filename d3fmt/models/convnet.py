"""The ConvNet of the dataset-distillation literature: experts, MTT students, evaluation.

``depth`` blocks of conv3x3 (width channels) -> norm -> activation -> 2x2 pooling, then
one linear classifier on the flattened map. The reference settings are width 128,
instance normalisation (here: an affine ``GroupNorm(width, width)``, which is instance
norm with a per-channel scale and shift and no running statistics), ReLU and average
pooling, depth 3 for 32 px and 4 for 64 px.

Trajectory matching trains a *student* ConvNet whose weights are one flat vector that
autograd can differentiate through (theta_{k+1} = theta_k - alpha * grad). So besides the
module there is a :class:`ParamLayout` (names, shapes and offsets of the parameters in
the flat vector), :func:`flatten_params`, :func:`unflatten` and :func:`functional_forward`
which runs the module with parameters taken from a flat tensor
(``torch.func.functional_call``). The flat order is ``named_parameters()`` order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from d3fmt.errors import ConfigError

NORMS = ("instance", "batch", "none")
POOLS = ("avg", "max", "none")
ACTS = ("relu", "leakyrelu", "gelu")
MIN_POOLED_SIDE = 2  # never pool a feature map below 2x2 (small images: 8 px, 28 px)


def default_depth(image_size: int) -> int:
    """Depth by resolution: 3 up to 32 px, 4 for 64, 5 for 128, 6 for 256 (reference)."""
    return max(3, math.ceil(math.log2(max(image_size, 1))) - 2)


@dataclass
class ConvNetConfig:
    """Architecture of a ConvNet; JSON-able (stored in expert caches and eval records)."""

    channels: int  # input image channels C
    num_classes: int
    image_size: int  # input side H == W
    width: int = 128
    depth: int = 0  # 0 = default_depth(image_size)
    norm: str = "instance"  # "instance" | "batch" | "none"
    pool: str = "avg"  # "avg" | "max" | "none"
    act: str = "relu"  # "relu" | "leakyrelu" | "gelu"

    def __post_init__(self):
        if self.depth == 0 and self.image_size > 0:
            self.depth = default_depth(self.image_size)
        self.validate()

    def validate(self) -> None:
        for name in ("channels", "num_classes", "image_size", "width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"convnet {name} must be a positive integer, got {value!r}; fix the model config")
        for name, allowed in (("norm", NORMS), ("pool", POOLS), ("act", ACTS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"convnet {name} {getattr(self, name)!r} is unknown; use one of {', '.join(allowed)}"
                )

    def pooled_sides(self) -> list[int]:
        """Feature-map side after each block. A block pools only while the map stays >= 2 px."""
        sides, side = [], self.image_size
        for _ in range(self.depth):
            if self.pool != "none" and side // 2 >= MIN_POOLED_SIDE:
                side //= 2
            sides.append(side)
        return sides

    @property
    def feature_dim(self) -> int:
        """Size of the penultimate embedding (flattened last feature map)."""
        return self.width * self.pooled_sides()[-1] ** 2

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ConvNetConfig":
        return cls(**d)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "gelu": nn.GELU}[kind]()


class Block(nn.Module):
    """conv3x3 -> norm -> act -> (pool)."""

    def __init__(self, cfg: ConvNetConfig, c_in: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, cfg.width, 3, padding=1)
        self.norm = _norm(cfg.norm, cfg.width)
        self.act = _act(cfg.act)
        if pool:
            self.pool = nn.AvgPool2d(2) if cfg.pool == "avg" else nn.MaxPool2d(2)
        else:
            self.pool = nn.Identity()

    def forward(self, x):  # [N, c_in, h, w] -> [N, width, h', w']
        return self.pool(self.act(self.norm(self.conv(x))))


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c_in, side = [], cfg.channels, cfg.image_size
        for out_side in cfg.pooled_sides():
            blocks.append(Block(cfg, c_in, pool=out_side != side))
            c_in, side = cfg.width, out_side
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding [N, feature_dim] (used by MMD)."""
        return self.blocks(x).flatten(1)  # [N, width * s * s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [N, num_classes]


# ---------------------------------------------------------------------------------------
# Flat-parameter view (for trajectories and the unrolled MTT student).
# ---------------------------------------------------------------------------------------


@dataclass
class ParamLayout:
    """Where each named parameter lives in a flat vector: ``flat[offsets[i]:offsets[i]+numels[i]]``."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    numels: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.numels:
            self.numels = [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.numels)

    @classmethod
    def of(cls, module: nn.Module) -> "ParamLayout":
        named = list(module.named_parameters())
        return cls([n for n, _ in named], [tuple(p.shape) for _, p in named])


def flatten_params(module: nn.Module) -> torch.Tensor:
    """All parameters concatenated in ``named_parameters()`` order, detached: [P]."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def unflatten(flat: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Views of ``flat`` [P] shaped as the module's parameters (keeps the autograd graph)."""
    if flat.dim() != 1 or flat.numel() != layout.size:
        raise ConfigError(
            f"flat parameter vector has {flat.numel()} values, the model needs {layout.size}; "
            "the trajectory was made for a different ConvNet config"
        )
    chunks = torch.split(flat, layout.numels)
    return {n: c.view(s) for n, c, s in zip(layout.names, chunks, layout.shapes)}


def load_flat_(module: nn.Module, flat: torch.Tensor) -> nn.Module:
    """Copy a flat vector into a module's parameters in place (no graph)."""
    params = unflatten(flat.detach(), ParamLayout.of(module))
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(params[name])
    return module


def functional_forward(
    module: nn.Module, flat: torch.Tensor, x: torch.Tensor, layout: ParamLayout | None = None
) -> torch.Tensor:
    """``module(x)`` with the parameters taken from ``flat`` [P]; differentiable w.r.t. flat.

    Buffers (only BatchNorm has any) come from the module itself; trajectory matching uses
    instance norm, which has none.
    """
    layout = layout or ParamLayout.of(module)
    return functional_call(module, unflatten(flat, layout), (x,))


def functional_features(
    module: ConvNet, flat: torch.Tensor, x: torch.Tensor, layout: ParamLayout | None = None
) -> torch.Tensor:
    """``module.features(x)`` with parameters from ``flat``: the embedding used by MMD."""
    layout = layout or ParamLayout.of(module)
    params = unflatten(flat, layout)
    blocks = {n[len("blocks.") :]: t for n, t in params.items() if n.startswith("blocks.")}
    return functional_call(module.blocks, blocks, (x,)).flatten(1)
