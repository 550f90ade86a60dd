"""Matching training trajectories (MTT): loss 1 of the D3 distiller (method.md).

A student ConvNet starts at an expert's parameters theta*_t and takes ``syn_steps`` plain
SGD steps on synthetic batches with the learnable learning rate alpha:

    theta_{k+1} = theta_k - alpha * grad_theta CE(student(theta_k, DSA(x_k)), y_k)

where every x_k is a *fresh* decoded batch (new eps per step). The loss is how far the
student ends from the expert's later checkpoint, relative to how far it started:

    L = ||theta_K - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

The inner gradients are taken with ``create_graph=True``, so L is differentiable through
all K unrolled steps w.r.t. alpha and w.r.t. every synthetic batch, i.e. the decoder
weights and the latent priors that produced it. Hard labels (cross-entropy with the
prior's class) as in the MTT reference. Never run under autocast: the unrolled
second-order graph is where bf16 rounding would hurt.

The student runs from one flat parameter vector through ``functional_forward``; the
module passed in is only a template for the architecture (its own weights are unused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from d3fmt.augment import DSAParams, dsa
from d3fmt.models.convnet import ParamLayout, functional_forward

# step index k -> (normalised images [B, C, H, W], hard labels [B] int64)
BatchFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class MTTOutput:
    loss: torch.Tensor  # scalar: normalised end distance (differentiable)
    end_distance: float  # ||theta_K - theta*_{t+M}||^2
    start_distance: float  # ||theta*_t - theta*_{t+M}||^2
    inner_loss: float  # cross-entropy of the last inner step


def trajectory_matching_loss(
    net: torch.nn.Module,
    start: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor,
    sample_batch: BatchFn,
    syn_steps: int,
    *,
    dsa_params: DSAParams | None = None,
    generator: torch.Generator | None = None,
    layout: ParamLayout | None = None,
) -> MTTOutput:
    """Unroll ``syn_steps`` student steps from ``start`` [P] and compare with ``target`` [P].

    ``alpha`` is a scalar tensor (the learnable student lr); ``dsa_params`` None disables
    augmentation; DSA draws come from ``generator`` (per sample, as the reference).
    """
    layout = layout or ParamLayout.of(net)
    start, target = start.detach(), target.detach()
    theta = start.clone().requires_grad_(True)  # [P]
    inner = torch.zeros(())
    for k in range(syn_steps):
        xb, yb = sample_batch(k)  # [B, C, H, W], [B]
        if dsa_params is not None:
            xb = dsa(xb, dsa_params, generator=generator)
        logits = functional_forward(net, theta, xb, layout)  # [B, K]
        inner = F.cross_entropy(logits, yb)
        (grad,) = torch.autograd.grad(inner, theta, create_graph=True)
        theta = theta - alpha * grad
    end = (theta - target).pow(2).sum()
    begin = (start - target).pow(2).sum().clamp_min(1e-12)
    return MTTOutput(end / begin, float(end.detach()), float(begin), float(inner.detach()))
