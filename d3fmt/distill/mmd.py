"""Squared maximum mean discrepancy under a mixture of RBF kernels (method.md, loss 2).

    k(a, b) = 1/|S| * sum_{s in S} exp(-||a - b||^2 / (2 * s^2 * D)),   S = {1, 2, 4, 8, 16}

D is the feature dimension: the bandwidths apply to the *mean squared per-coordinate
distance* ||a - b||^2 / D, which keeps their meaning the same whatever the ConvNet's
width and the image size (the penultimate embedding has width * side^2 coordinates:
512 for 8 px digits at width 128, 1152 for 28 px). Measured on a trained width-128
expert on digits, ||a - b||^2 / D is about 0.15 within a class and 0.5 across classes,
so the narrow kernels (s = 1, 2) separate classes and the wide ones act as a smooth
mean-matching term.

Estimator: the *biased* (V-statistic) one, mean over all pairs including i == j:
MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y). It is always >= 0 and exactly 0
when the two sample sets are equal, and stays well-behaved with the 12-30 decoded
samples per class the method uses (the unbiased one can go negative at such sizes).
Computed in float32 even when the features come out of a bf16 autocast region.
"""

from __future__ import annotations

import torch

BANDWIDTHS = (1.0, 2.0, 4.0, 8.0, 16.0)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ||a_i - b_j||^2: a [..., n, D], b [..., m, D] -> [..., n, m] (clamped >= 0)."""
    a2 = (a * a).sum(-1, keepdim=True)  # [..., n, 1]
    b2 = (b * b).sum(-1, keepdim=True).transpose(-1, -2)  # [..., 1, m]
    return (a2 + b2 - 2.0 * a @ b.transpose(-1, -2)).clamp_min(0.0)


def rbf_mixture(d2: torch.Tensor, dim: int, bandwidths=BANDWIDTHS) -> torch.Tensor:
    """Mean over bandwidths of exp(-d2 / (2 s^2 dim)), elementwise."""
    scales = torch.tensor([1.0 / (2.0 * s * s * dim) for s in bandwidths], device=d2.device, dtype=d2.dtype)
    return torch.exp(-d2.unsqueeze(-1) * scales).mean(-1)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=BANDWIDTHS) -> torch.Tensor:
    """Biased squared MMD between x [..., n, D] and y [..., m, D]; one value per leading index.

    Batched: pass per-class features as [K, n, D] and [K, m, D] to get [K] in one go.
    """
    x, y = x.float(), y.float()
    dim = x.shape[-1]
    kxx = rbf_mixture(squared_distances(x, x), dim, bandwidths).mean((-2, -1))
    kyy = rbf_mixture(squared_distances(y, y), dim, bandwidths).mean((-2, -1))
    kxy = rbf_mixture(squared_distances(x, y), dim, bandwidths).mean((-2, -1))
    return kxx + kyy - 2.0 * kxy
