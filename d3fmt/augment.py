"""Augmentations: Differentiable Siamese Augmentation (DSA) and a cheap crop + flip.

DSA (Zhao & Bilen 2021) is what lets dataset distillation learn images that survive
augmentation: every transform is a differentiable function of the *input* (colour
jitter is arithmetic, crop / scale / rotate are ``grid_sample`` warps, cutout and flip
are masks), so gradients flow from a model trained on augmented synthetic images back
into the synthetic images, and through them into the decoder and the latent priors.

"Siamese" means the same random transform can be replayed on a second batch: every
random draw comes from a ``torch.Generator`` seeded with ``seed``, so two calls with the
same seed (and the same batch size, or ``batch_shared=True`` for one transform shared by
the whole batch) apply the same transform. Draws are made on the CPU and moved to the
images' device, so a seed means the same transform on CPU and CUDA.

Strategy string and ratios follow the reference ``color_crop_cutout_flip_scale_rotate``:
scale 1.2, rotate 15 degrees, crop (translation) 0.125, cutout 0.5, brightness 1.0,
saturation 2.0, contrast 0.5, flip probability 0.5. Mode ``"single"`` (the reference
default) applies ONE operation family per call, chosen at random (the same for the whole
batch); mode ``"all"`` applies every family in strategy order. Images are expected in
the normalised pixel space (what the ConvNets see); crop / scale / rotate fill with 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from d3fmt.errors import ConfigError

REFERENCE_STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
MODES = ("single", "all")


@dataclass
class DSAParams:
    """Which DSA operations run and how strong they are (the reference ratios by default)."""

    strategy: str = REFERENCE_STRATEGY  # families joined by "_"; "" or "none" disables DSA
    mode: str = "single"  # "single": one random family per call (reference) | "all": every family
    scale: float = 1.2  # per-axis scale factor drawn from [1/scale, scale]
    rotate: float = 15.0  # rotation angle drawn from [-rotate, rotate] degrees
    crop: float = 0.125  # translation up to crop * side pixels (integer shifts)
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the image side
    brightness: float = 1.0  # add U(-0.5, 0.5) * brightness
    saturation: float = 2.0  # scale the deviation from the channel mean by U(0, saturation)
    contrast: float = 0.5  # scale the deviation from the image mean by U(contrast, 1 + contrast)
    flip: float = 0.5  # probability of a horizontal flip

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"DSA mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(
                f"DSA strategy {self.strategy!r} has unknown parts {unknown}; use parts of {REFERENCE_STRATEGY!r}"
            )

    @property
    def families(self) -> list[str]:
        if self.strategy in ("", "none", "None"):
            return []
        return self.strategy.split("_")

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Random draws: CPU generator, moved to the images' device; shape [n] or one shared value.
# ---------------------------------------------------------------------------------------


class _Draw:
    """Uniform draws of one call: per sample, or one value expanded to the batch."""

    def __init__(self, generator: torch.Generator, n: int, device, batch_shared: bool):
        self.g, self.n, self.device, self.shared = generator, n, device, batch_shared

    def uniform(self) -> torch.Tensor:  # [n] in [0, 1)
        u = torch.rand(1 if self.shared else self.n, generator=self.g)
        return u.expand(self.n).to(self.device)

    def integer(self, low: int, high: int) -> torch.Tensor:  # [n] in [low, high)
        k = torch.randint(low, high, (1 if self.shared else self.n,), generator=self.g)
        return k.expand(self.n).to(self.device)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Affine warp of x [N, C, H, W] by theta [N, 2, 3] (output->input coords), zero fill."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _color(x, p: DSAParams, d: _Draw):
    x = x + ((d.uniform() - 0.5) * p.brightness).view(-1, 1, 1, 1)
    mean_c = x.mean(dim=1, keepdim=True)  # [N, 1, H, W] per-pixel grey level
    x = (x - mean_c) * (d.uniform() * p.saturation).view(-1, 1, 1, 1) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    return (x - mean_all) * (d.uniform() + p.contrast).view(-1, 1, 1, 1) + mean_all


def _crop(x, p: DSAParams, d: _Draw):
    """Translate by whole pixels up to crop * side: the differentiable 'random crop'."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    dy, dx = d.integer(-sh, sh + 1).float(), d.integer(-sw, sw + 1).float()
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * dx / w  # exact pixel-centre shifts with align_corners=False
    theta[:, 1, 2] = 2.0 * dy / h
    return _warp(x, theta)


def _cutout(x, p: DSAParams, d: _Draw):
    """Zero a square of side cutout * side centred anywhere in the image (may stick out)."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    cy, cx = d.integer(0, h), d.integer(0, w)  # [N] centres
    rows = torch.arange(h, device=x.device).view(1, h) - (cy.view(-1, 1) - ch // 2)  # [N, H]
    cols = torch.arange(w, device=x.device).view(1, w) - (cx.view(-1, 1) - cw // 2)  # [N, W]
    inside = ((rows >= 0) & (rows < ch)).unsqueeze(2) & ((cols >= 0) & (cols < cw)).unsqueeze(1)
    return x * (~inside).unsqueeze(1).to(x.dtype)  # [N, C, H, W]


def _flip(x, p: DSAParams, d: _Draw):
    flip = (d.uniform() < p.flip).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def _scale(x, p: DSAParams, d: _Draw):
    n = x.shape[0]
    lo = 1.0 / p.scale
    sx, sy = d.uniform() * (p.scale - lo) + lo, d.uniform() * (p.scale - lo) + lo
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = sy
    return _warp(x, theta)


def _rotate(x, p: DSAParams, d: _Draw):
    n = x.shape[0]
    angle = (d.uniform() - 0.5) * 2.0 * math.radians(p.rotate)  # [N] radians
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin
    theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    return _warp(x, theta)


_OPS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def dsa(
    x: torch.Tensor,
    params: DSAParams | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_shared: bool = False,
) -> torch.Tensor:
    """Differentiable Siamese augmentation of x [N, C, H, W] (normalised pixels).

    ``seed`` fixes the transform (same seed -> same transform: the Siamese use);
    otherwise draws come from ``generator`` (a CPU ``torch.Generator``) or torch's
    global generator. ``batch_shared=True`` draws one transform for the whole batch, so
    batches of different sizes (real vs synthetic) can share it.
    """
    params = params or DSAParams()
    families = params.families
    if not families or x.shape[0] == 0:
        return x
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    elif generator is None:
        generator = torch.default_generator
    draw = _Draw(generator, x.shape[0], x.device, batch_shared)
    if params.mode == "single":
        pick = int(torch.randint(len(families), (1,), generator=generator))
        families = [families[pick]]
    for family in families:
        x = _OPS[family](x, params, draw)
    return x


def random_seed(generator: torch.Generator | None = None) -> int:
    """A fresh integer seed for a Siamese pair of :func:`dsa` calls."""
    return int(torch.randint(0, 2**62, (1,), generator=generator or torch.default_generator))


def crop_flip(x: torch.Tensor, *, generator: torch.Generator | None = None, pad: int | None = None) -> torch.Tensor:
    """Cheap, non-differentiable augmentation for training on real images.

    Random crop after zero padding by ``pad`` pixels (default side / 8) and a random
    horizontal flip, per sample, vectorised with one gather.
    """
    n, c, h, w = x.shape
    pad = max(1, round(h / 8)) if pad is None else pad
    g = generator or torch.default_generator
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)  # [N] crop offsets
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # [N, C, H+2p, W+2p]
    rows = oy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)  # [N, H]
    cols = torch.arange(w, device=x.device).view(1, w).expand(n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols) + ox.view(n, 1)  # [N, W]
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
