"""ResNet-18 for small images: a cross-architecture evaluation model.

The CIFAR-style variant: a 3x3 stride-1 stem and no max-pool for images up to 64 px
(the ImageNet 7x7 stride-2 stem + max-pool would throw away most of an 8..64 px image),
the ImageNet stem above that. Four stages of two basic blocks (64, 128, 256, 512
channels, stride 2 from the second stage on), global average pooling, one linear layer.
BatchNorm is fine here: this model only ever trains on decoded or real batches, it is
never part of the stored representation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from d3fmt.errors import ConfigError

SMALL_STEM_MAX_SIDE = 64
STANDARD_WIDTH = 64  # ResNet-18's first-stage width; narrower ones (e.g. 16) suit a CPU


@dataclass
class ResNetConfig:
    channels: int  # input image channels C
    num_classes: int
    image_size: int  # input side H == W
    width: int = STANDARD_WIDTH  # channels of the first stage; stages use width * (1, 2, 4, 8)
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # ResNet-18

    def __post_init__(self):
        self.blocks = tuple(self.blocks)
        for name in ("channels", "num_classes", "image_size", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"resnet {name} must be a positive integer, got {value!r}; fix the model config")
        if not self.blocks or any(b < 1 for b in self.blocks):
            raise ConfigError(f"resnet blocks must be positive counts, got {self.blocks}; e.g. (2, 2, 2, 2)")

    def to_json(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):  # [N, c_in, h, w] -> [N, c_out, h/stride, w/stride]
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.image_size <= SMALL_STEM_MAX_SIDE:
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.channels, w, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages, c_in = [], w
        for i, n_blocks in enumerate(cfg.blocks):
            c_out = w * 2**i
            layers = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(c_out, c_out, stride=1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(c_in, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # [N, 8w, h', w']
        return x.mean(dim=(2, 3))  # [N, 8w] global average pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [N, num_classes]


def resnet18(channels: int, num_classes: int, image_size: int) -> ResNet:
    return ResNet(ResNetConfig(channels, num_classes, image_size))
