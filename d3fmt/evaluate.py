"""Honest accuracy: train a fresh model from scratch, test the *final* model on real data.

Two training sources share one protocol (method.md, "Evaluating a distilled
representation"): SGD with momentum 0.9 and weight decay 5e-4, the learning rate divided
by 10 at half the epochs, differentiable augmentation (DSA) on every batch, and the final
model's accuracy on the real held-out test set — never the best accuracy seen during
training, which would peek at the test set.

- :func:`evaluate_representation` trains on a decoded D3 stream: every epoch draws fresh
  samples, ``draws`` per latent prior (plus the prior means when soft labels are used),
  labelled with the stored soft labels when present; the learning rate defaults to the
  student learning rate the distiller learned.
- :func:`evaluate_real` trains on real images (the same-bytes random subset baseline and
  the full-data ceiling).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from d3fmt.augment import DSAParams, dsa
from d3fmt.errors import ConfigError
from d3fmt.models.convnet import ConvNet, ConvNetConfig
from d3fmt.models.resnet import resnet18
from d3fmt.noise import gaussian
from d3fmt.representation import Representation, normalize, tanh_to_normalized

MODELS = ("convnet", "resnet18")
DEFAULT_LR = 0.01


@dataclass
class EvalConfig:
    """How fresh models are trained and tested."""

    model: str = "convnet"  # "convnet" (what D3 distils for) | "resnet18" (transfer)
    epochs: int = 300
    runs: int = 1
    lr: float | None = None  # None: the learned student lr stored in the file, else 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    draws: int = 1  # fresh samples per latent prior per epoch
    labels: str = "auto"  # "auto" (soft when stored) | "hard" | "soft"
    dsa: str = "color_crop_cutout_flip_scale_rotate"  # "" disables augmentation
    width: int = 128  # ConvNet width
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; use one of {', '.join(MODELS)}")
        if self.labels not in ("auto", "hard", "soft"):
            raise ConfigError(f"labels must be auto, hard or soft, got {self.labels!r}")
        for name in ("epochs", "runs", "batch_size", "draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass
class EvalResult:
    """Final-model test accuracies of independent runs (fractions in [0, 1])."""

    model: str
    accuracies: list[float]
    epochs: int
    protocol: str
    lr: float
    details: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.accuracies))

    @property
    def std(self) -> float:
        return float(statistics.pstdev(self.accuracies)) if len(self.accuracies) > 1 else 0.0

    def record(self, test_set: str) -> dict:
        """The evaluation record stored in a .d3 header (``evals`` list)."""
        return {
            "model": self.model,
            "protocol": self.protocol,
            "test_set": test_set,
            "accuracy": round(self.mean, 6),
            "std": round(self.std, 6),
            "runs": len(self.accuracies),
            "epochs": self.epochs,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def build_model(cfg: EvalConfig, channels: int, num_classes: int, image_size: int) -> torch.nn.Module:
    if cfg.model == "resnet18":
        return resnet18(channels, num_classes, image_size)
    return ConvNet(ConvNetConfig(channels=channels, num_classes=num_classes, image_size=image_size, width=cfg.width))


# ---------------------------------------------------------------------------------------
# Batches of training data: a function epoch -> (x normalised [N,C,H,W], target [N] or [N,K])
# ---------------------------------------------------------------------------------------


class StreamEpochs:
    """Fresh decoded samples for each epoch of one run, from a Representation."""

    def __init__(self, rep: Representation, cfg: EvalConfig, seed: int):
        self.rep, self.seed = rep, seed
        self.soft = _use_soft(rep, cfg.labels)
        self.mean, self.std = rep.normalization
        cls, prior = [], []
        for c in rep.classes:
            lpc = rep.latents_per_class(c)
            cls += [c] * lpc
            prior += list(range(lpc))
        self.cls = torch.tensor(cls, dtype=torch.int64).repeat(cfg.draws)  # [P * draws]
        self.prior = torch.tensor(prior, dtype=torch.int64).repeat(cfg.draws)
        self.slot = torch.arange(self.cls.numel(), dtype=torch.int64)
        self.means = (torch.tensor(cls), torch.tensor(prior)) if self.soft else None

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.rep
        eps = gaussian(self.seed, epoch, self.cls * 2**24 + self.slot, rep.z_max, device=rep.device)
        t = rep.decode(self.cls, self.prior, eps)  # [P, C, H, W] tanh space
        cls, prior = self.cls, self.prior
        if self.means is not None:
            t = torch.cat([t, rep.decode(*self.means, None)])
            cls, prior = torch.cat([cls, self.means[0]]), torch.cat([prior, self.means[1]])
        x = tanh_to_normalized(t.clone(), self.mean, self.std)
        target = rep.soft_labels(cls, prior).clone() if self.soft else cls.to(rep.device)
        return x.float(), target


def _use_soft(rep: Representation, labels: str) -> bool:
    if labels == "soft" and not rep.has_soft:
        raise ConfigError("soft labels requested but the file stores none; use --labels hard")
    return rep.has_soft if labels == "auto" else labels == "soft"


def real_epochs(x_uint8: np.ndarray, y: np.ndarray, mean, std, device) -> Callable[[int], tuple]:
    """The same real images every epoch (augmentation makes them differ)."""
    x = normalize(torch.from_numpy(x_uint8).float().div_(255), mean, std).to(device)  # [N, C, H, W]
    target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    return lambda epoch: (x, target)


# ---------------------------------------------------------------------------------------
# Training and testing
# ---------------------------------------------------------------------------------------


def train_model(model, epochs_fn, cfg: EvalConfig, lr: float, seed: int, progress=None) -> torch.nn.Module:
    """SGD with momentum and weight decay, lr / 10 at half; DSA on every batch."""
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[cfg.epochs // 2], gamma=0.1)
    aug = DSAParams(strategy=cfg.dsa)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(cfg.epochs):
        x, target = epochs_fn(epoch)
        order = torch.randperm(x.shape[0], generator=g).to(x.device)
        for start in range(0, x.shape[0], cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb = dsa(x[idx], aug, generator=g).to(device)
            loss = _loss(model(xb), target[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress(epoch, float(loss))
    return model.eval()


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.int64:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()  # soft cross-entropy


@torch.no_grad()
def test_accuracy(model, x_uint8: np.ndarray, y: np.ndarray, mean, std, device, batch_size=1024) -> float:
    """Accuracy of ``model`` on real uint8 images [N, C, H, W] with labels [N]."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x_uint8[start : start + batch_size]).float().div_(255)
        xb = normalize(xb, mean, std).to(device)
        pred = model(xb).argmax(1).cpu().numpy()
        correct += int((pred == np.asarray(y[start : start + batch_size])).sum())
    return correct / max(1, len(y))


def _run_all(make_epochs, cfg, lr, channels, num_classes, image_size, test, progress) -> list[float]:
    cfg.validate()
    accs = []
    for run in range(cfg.runs):
        seed = cfg.seed * 1000 + run
        torch.manual_seed(seed)
        model = build_model(cfg, channels, num_classes, image_size)
        tick = None if progress is None else (lambda e, l, r=run: progress(r, e, l))
        model = train_model(model, make_epochs(seed), cfg, lr, seed, tick)
        accs.append(test_accuracy(model, *test, device=torch.device(cfg.device)))
    return accs


def evaluate_representation(rep: Representation, test_x, test_y, cfg: EvalConfig, progress=None) -> EvalResult:
    """Train ``cfg.runs`` fresh models on the decoded stream only; test each final model."""
    lr = cfg.lr if cfg.lr is not None else float(rep.header.get("train", {}).get("lr", DEFAULT_LR))
    if not math.isfinite(lr) or lr <= 0:
        lr = DEFAULT_LR
    c, h, _ = rep.image_shape
    mean, std = rep.normalization
    accs = _run_all(lambda seed: StreamEpochs(rep, cfg, seed), cfg, lr, c, rep.num_classes, h,
                    (test_x, test_y, mean, std), progress)
    labels = "soft" if _use_soft(rep, cfg.labels) else "hard"
    protocol = (f"d3-stream draws={cfg.draws} labels={labels} dsa={cfg.dsa or 'none'} sgd lr={lr:.4g} "
                f"mom={cfg.momentum} wd={cfg.weight_decay} lr/10@half final-model")
    return EvalResult(cfg.model, accs, cfg.epochs, protocol, lr)


def evaluate_real(train_x, train_y, test_x, test_y, num_classes, mean, std, cfg: EvalConfig,
                  progress=None) -> EvalResult:
    """Train ``cfg.runs`` fresh models on real uint8 images; test each final model."""
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR
    c, h = train_x.shape[1], train_x.shape[2]
    epochs_fn = real_epochs(train_x, train_y, mean, std, torch.device(cfg.device))
    accs = _run_all(lambda seed: epochs_fn, cfg, lr, c, num_classes, h, (test_x, test_y, mean, std), progress)
    protocol = (f"real images n={len(train_y)} dsa={cfg.dsa or 'none'} sgd lr={lr:.4g} mom={cfg.momentum} "
                f"wd={cfg.weight_decay} lr/10@half final-model")
    return EvalResult(cfg.model, accs, cfg.epochs, protocol, lr)
