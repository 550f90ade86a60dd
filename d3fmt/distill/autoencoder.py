"""Autoencoder initialisation of the decoder and the latent priors (a d3fmt addition).

method.md starts the decoder from random weights and the priors from N(0, I): the first
thousands of iterations then only teach the decoder to draw anything image-like, and at
the short runs a CPU (or a budget of GPU minutes) allows, the file ends up holding grey
texture (measured: ``benchmarks/fmnist-ablation.md``). d3fmt therefore first trains the
decoder as the generator of a small variational autoencoder on the subtask's real images:

- an encoder (thrown away afterwards, never stored) maps an image to q(z|x) =
  N(m(x), diag(s(x)^2)); the decoder reconstructs the image from a draw of it;
- loss per image = squared error in tanh space (summed over pixels)
  + ``kl_weight`` * KL(q(z|x) || N(0, I)) + ``class_weight`` * cross-entropy of a linear
  classifier on m(x) (also thrown away), which keeps the classes apart in latent space;
- then every class's encoded means m(x) are split into L groups by k-means, and prior
  l of class c is the Gaussian of group l: mu = the group's mean, var = the group's
  per-dimension variance of m(x) plus its mean s(x)^2 (the aggregate posterior).

So the priors start where the class's real images are, and a fresh draw decodes to a
plausible image of that class. Trajectory matching and MMD then start from there.
All randomness comes from ``seed`` (a private generator and a forked global RNG for
the encoder's weights), so a run is reproducible; the result is cached by the packer.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from d3fmt.distill.experts import data_fingerprint, eval_batch
from d3fmt.distill.storage import save_tensors
from d3fmt.errors import ConfigError
from d3fmt.loader.representation import denormalize, unit_to_tanh
from d3fmt.models.decoder import LEAKY_SLOPE, Decoder, DecoderConfig, build_decoder
from d3fmt.pixels import Pixels

LOGVAR_RANGE = (-10.0, 2.0)  # bounds of the stored prior log-variances
PRIOR_MODES = ("kmeans", "images")


@dataclass
class AutoencoderConfig:
    steps: int = 1500  # optimiser steps; 0 = no pre-training (random decoder, N(0, I) priors)
    batch: int = 128
    lr: float = 2e-3  # Adam, cosine-decayed to 0
    kl_weight: float = 0.05  # weight of KL(q(z|x) || N(0, I)) against the summed squared error
    class_weight: float = 1.0  # weight of the latent linear classifier's cross-entropy
    encoder_width: int = 32  # channels of the encoder's first stage (doubling per stage)
    kmeans_iterations: int = 25
    priors: str = "kmeans"  # "kmeans": L groups of each class's codes | "images": L real images' own codes


    def __post_init__(self):
        if self.steps < 0 or self.batch < 1 or self.encoder_width < 1 or self.kmeans_iterations < 0:
            raise ConfigError("autoencoder steps, batch, encoder_width and kmeans_iterations must be >= 0 (batch >= 1)")
        if self.lr <= 0 or self.kl_weight < 0 or self.class_weight < 0:
            raise ConfigError("autoencoder lr must be > 0 and kl_weight, class_weight >= 0")
        if self.priors not in PRIOR_MODES:
            raise ConfigError(f"prior placement {self.priors!r} is unknown; use one of {', '.join(PRIOR_MODES)}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Pretrained:
    """What the autoencoder stage hands to the distiller."""

    mu: torch.Tensor  # [K*L, z] class-major, like the distiller's priors
    logvar: torch.Tensor  # [K*L, z]
    decoder_state: dict[str, torch.Tensor]  # Decoder.state_dict() names
    reconstruction: float  # mean squared error per pixel (tanh space) over the last 10% of steps


class Encoder(nn.Module):
    """x [N, C, H, W] -> (m [N, z], logvar [N, z]); mirrors the decoder's resolution stages."""

    def __init__(self, dcfg: DecoderConfig, width: int):
        super().__init__()
        layers, c_in = [nn.Conv2d(dcfg.channels, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)], width
        for i in range(dcfg.num_stages):  # each halves the side: image_size -> start_size
            c_out = width * 2 ** (i + 1)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out),
                       nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * dcfg.start_size**2, 2 * dcfg.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).flatten(1)  # [N, c * s * s]
        m, logvar = self.head(h).chunk(2, dim=1)  # [N, z] each
        return m, logvar.clamp(*LOGVAR_RANGE)


def pretrain(
    x_tanh: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    decoder: Decoder,
    latents_per_class: int,
    cfg: AutoencoderConfig,
    seed: int,
    progress=None,
) -> Pretrained:
    """Train ``decoder`` in place as a VAE generator on x_tanh [N, C, H, W] in [-1, 1].

    y [N] holds local labels 0..K-1 (every class present). ``progress``: a tqdm-like
    object (``update``) or None.
    """
    if cfg.steps < 1:
        raise ConfigError("autoencoder pre-training needs steps >= 1")
    dcfg, device = decoder.cfg, x_tanh.device
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(dcfg, cfg.encoder_width).to(device)
        classifier = nn.Linear(dcfg.z_dim, num_classes).to(device)
    params = [*encoder.parameters(), *decoder.parameters(), *classifier.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    decoder.train()
    recon_tail: list[float] = []
    for step in range(cfg.steps):
        idx = torch.randint(x_tanh.shape[0], (min(cfg.batch, x_tanh.shape[0]),), generator=g).to(device)
        xb, yb = x_tanh[idx], y[idx]  # [B, C, H, W], [B]
        m, logvar = encoder(xb)  # [B, z]
        eps = torch.randn(m.shape, generator=g).to(device)
        xr = decoder(m + torch.exp(0.5 * logvar) * eps)  # [B, C, H, W]
        sq = (xr - xb).pow(2).flatten(1).sum(1).mean()
        kl = 0.5 * (m.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        ce = F.cross_entropy(classifier(m), yb)
        loss = sq + cfg.kl_weight * kl + cfg.class_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= cfg.steps - max(1, cfg.steps // 10):
            recon_tail.append(float(sq.detach()) / xb[0].numel())
        if progress is not None:
            progress.update(1)
    mu, var = _fit_priors(encoder, x_tanh, y, num_classes, latents_per_class, cfg, g)
    return Pretrained(
        mu=mu.cpu(),
        logvar=var.log().clamp(*LOGVAR_RANGE).cpu(),
        decoder_state={n: t.detach().cpu().clone() for n, t in decoder.state_dict().items()},
        reconstruction=sum(recon_tail) / len(recon_tail),
    )


@torch.no_grad()
def _encode(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = eval_batch(x.shape)
    parts = [encoder(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).exp()  # [N, z] means, variances


@torch.no_grad()
def _fit_priors(encoder, x, y, num_classes, lpc, cfg, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's encoded images -> its ``lpc`` priors (mu, var) [K*L, z].

    ``kmeans``: k-means of the class's encoded means into L groups, each group a prior.
    ``images``: L of the class's images, drawn at random (more than it has: repeated),
    each its own prior: mu = its encoded mean, var = the class's mean posterior variance,
    the same row for every prior of the class (zstd stores the repeats almost for free).
    """
    m, s2 = _encode(encoder.eval(), x)
    mus, vars_ = [], []
    for c in range(num_classes):
        mc, sc = m[y == c].cpu(), s2[y == c].cpu()  # [n_c, z]
        if cfg.priors == "images":
            pick = torch.randperm(mc.shape[0], generator=g).repeat(-(-lpc // mc.shape[0]))[:lpc]  # [L]
            mus.append(mc[pick])
            vars_.append(sc.mean(0).expand(lpc, -1))
            continue
        assign = kmeans(mc, lpc, cfg.kmeans_iterations, g)  # [n_c]
        spread = mc.var(0, unbiased=False) + sc.mean(0)  # the class's own spread, for empty groups
        for group in range(lpc):
            members = assign == group
            if int(members.sum()) == 0:
                mus.append(mc[int(torch.randint(mc.shape[0], (1,), generator=g))])
                vars_.append(spread)
                continue
            mus.append(mc[members].mean(0))
            vars_.append(mc[members].var(0, unbiased=False) + sc[members].mean(0))
    return torch.cat([t.reshape(-1, m.shape[1]) for t in mus]), torch.cat(
        [t.reshape(-1, m.shape[1]) for t in vars_]).clamp_min(math.exp(LOGVAR_RANGE[0]))


def kmeans(points: torch.Tensor, k: int, iterations: int, g: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of points [n, d] from k distinct random starts -> group index [n]."""
    n = points.shape[0]
    centres = points[torch.randperm(n, generator=g)[: min(k, n)]].clone()  # [k', d]
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations + 1):
        assign = torch.cdist(points, centres).argmin(1)  # [n]
        sums = torch.zeros_like(centres).index_add_(0, assign, points)  # [k', d]
        counts = torch.bincount(assign, minlength=centres.shape[0])[:, None]  # [k', 1]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty groups keep their centre
    return assign


CACHE_NAME = "autoencoder.safetensors"


def pretrain_cached(
    directory: Path,
    x_normalized: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    decoder_cfg: DecoderConfig,
    latents_per_class: int,
    cfg: AutoencoderConfig,
    mean,
    std,
    seed: int,
    progress=None,
) -> Pretrained:
    """:func:`pretrain` on normalised images, reusing ``directory/autoencoder.safetensors``.

    The cache is keyed by everything that determines the result (settings, decoder, L,
    seed, data shape and a fingerprint of the data), so a resumed run reuses it and any
    other run recomputes it.
    """
    key = _cache_key(x_normalized, y, decoder_cfg, latents_per_class, cfg, mean, std, seed)
    path = Path(directory) / CACHE_NAME
    cached = _load_cache(path, key)
    if cached is not None:
        if progress is not None:
            progress.update(cfg.steps)
        return cached
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = build_decoder(decoder_cfg).to(x_normalized.device)
    if isinstance(x_normalized, Pixels):  # uint8 stays uint8: batches become [-1, 1] on use
        x_tanh = x_normalized.tanh()
    else:
        x_tanh = unit_to_tanh(denormalize(x_normalized, mean, std))  # [N, C, H, W] in [-1, 1]
    result = pretrain(x_tanh, y.to(x_normalized.device), num_classes, decoder, latents_per_class, cfg, seed, progress)
    tensors = {"mu": result.mu, "logvar": result.logvar, "reconstruction": torch.tensor([result.reconstruction])}
    tensors.update({f"decoder.{n}": t for n, t in result.decoder_state.items()})
    save_tensors(path, tensors, metadata={"d3fmt_autoencoder": key})
    return result


def _cache_key(x, y, decoder_cfg, lpc, cfg, mean, std, seed) -> str:
    blob = {"cfg": cfg.to_json(), "decoder": decoder_cfg.to_json(), "lpc": lpc, "seed": seed,
            "mean": list(mean), "std": list(std), "data": data_fingerprint(x.cpu(), y.cpu())}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _load_cache(path: Path, key: str) -> Pretrained | None:
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("d3fmt_autoencoder") != key:
                return None
            t = {name: f.get_tensor(name) for name in f.keys()}
    except Exception:  # a foreign or damaged cache is recomputed, never trusted
        return None
    decoder_state = {n[len("decoder."):]: v for n, v in t.items() if n.startswith("decoder.")}
    return Pretrained(mu=t["mu"], logvar=t["logvar"], decoder_state=decoder_state,
                      reconstruction=float(t["reconstruction"][0]))
