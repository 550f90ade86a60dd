"""Soft labels over all classes, assigned after the merge by one all-class teacher.

The teacher is one ConvNet trained (or reused from ``work_dir``) on a bounded sample:
the first ``label_sample`` images of every class, ``5 * label_sample * K * C * H * W``
bytes as uint8 + float32 whatever the size of the source.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from d3fmt.distill.experts import train_experts
from d3fmt.distill.job import class_heads
from d3fmt.distill.settings import PackConfig
from d3fmt.errors import ConfigError
from d3fmt.evaluation.evaluate import EvalConfig, batch_bounds, real_epochs, train_model
from d3fmt.format import D3Container
from d3fmt.loader.representation import tanh_to_normalized
from d3fmt.models.convnet import ConvNet, load_flat_
from d3fmt.models.decoder import build_decoder
from d3fmt.models.teacher import MIN_TEACHER_STEPS, TeacherConfig, attach_teacher, teacher_config
from d3fmt.pixels import Pixels
from d3fmt.progress import bar
from d3fmt.seeds import derive_seed

LABEL_BATCH = 1024  # priors decoded at once when assigning soft labels

def label_sample(source, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` train images of every class: uint8 [n, C, H, W], int64 [n]."""
    xs, ys = zip(*class_heads(source, per_class))
    return np.concatenate(xs), np.concatenate(ys)


def label_teacher(source, cfg: PackConfig, mean, std, device) -> ConvNet:
    """One ConvNet on all classes, trained (or reused from ``work_dir``) on a bounded
    sample: the first ``cfg.label_sample`` images of every class, so its memory is
    ``label_sample * K`` images whatever the size of the source. Seeded by (seed, "labels")."""
    info = source.info
    n = cfg.label_sample
    x, y = label_sample(source, n)
    xt = Pixels.from_numpy(x, mean, std)  # uint8 [n*K, C, H, W], normalised per batch
    # A teacher, not a trajectory: momentum makes it accurate in the same epochs, and its
    # accuracy is what soft labels are worth (trajectory experts keep plain SGD).
    one = replace(cfg.experts, num_experts=1, seed=derive_seed(cfg.experts.seed, "labels"), momentum=0.9)
    with bar(cfg.quiet, total=one.epochs, desc="soft-label expert", unit="epoch") as pbar:
        traj = train_experts(xt, torch.from_numpy(y), info.num_classes, one, Path(cfg.work_dir) / "experts",
                             device=device, progress=pbar,
                             data_id=f"{info.content_hash}:{info.image_shape}:first{n}",
                             classes=list(range(info.num_classes)))
    net = ConvNet(traj.convnet)
    return load_flat_(net, traj.final(0)).to(device).eval()


@torch.no_grad()
def soft_labels(teacher, container: D3Container, device) -> dict[int, np.ndarray]:
    """softmax(teacher(decode(prior mean))) for every prior of every subtask, computed
    from the tensors as stored (quantised), so every launch mode gets the same labels."""
    header = container.header
    mean, std = header["normalization"]["mean"], header["normalization"]["std"]
    out = {}
    for entry in header["subtasks"]:
        names = entry["tensors"]
        state = {p: container.tensors[s] for p, s in names["decoder"].items()}
        dec = build_decoder(entry["decoder"], state).to(device)
        mu = torch.from_numpy(container.tensors[names["mu"]]).float()  # [rows, z]
        probs = []
        for start in range(0, mu.shape[0], LABEL_BATCH):
            t = dec(mu[start:start + LABEL_BATCH].to(device))  # [b, C, H, W] tanh space
            probs.append(torch.softmax(teacher(tanh_to_normalized(t, mean, std)).float(), dim=1).cpu())
        out[entry["id"]] = torch.cat(probs).numpy().astype(np.float32)  # [rows, K]
    return out


def add_teacher(container: D3Container, cfg: PackConfig, source, device) -> None:
    """Train the labelling teacher the plan sized (``budget.choices.teacher_width``) on the
    source's training images and store it in ``container`` (:mod:`d3fmt.models.teacher`).

    It trains on the first ``teacher.per_class`` training images of every class (default
    6,000: all of Fashion-MNIST, 47 MB as uint8; on ImageNet about 1,300 per class, so pick
    a smaller number there), seeded by (seed, "teacher")."""
    header = container.header
    width = int(header["budget"].get("choices", {}).get("teacher_width") or 0)
    if width <= 0:
        return
    tcfg = replace(cfg.teacher, width=width)
    x, y = label_sample(source, tcfg.per_class)  # one class at a time; at most per_class * K images
    norm = header["normalization"]
    with bar(cfg.quiet, total=teacher_passes(len(y), tcfg), desc=f"teacher (ConvNet-{width})", unit="pass") as pbar:
        def tick(epoch, loss):
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss:.3f}")
        model = train_teacher(x, y, header["num_classes"], norm["mean"], norm["std"], tcfg, device=device,
                              seed=derive_seed(cfg.seed, "teacher"), progress=tick)
    choices = header["budget"]["choices"]
    attach_teacher(container, model, tcfg.temperature, weight_encoding="int8",
                   vector_encoding=choices.get("vector_encoding", "float16"))


def teacher_steps(n: int, cfg: TeacherConfig) -> int:
    """SGD steps of a teacher trained on ``n`` images: ``cfg.epochs`` passes, at least MIN_TEACHER_STEPS."""
    return max(MIN_TEACHER_STEPS, cfg.epochs * math.ceil(n / cfg.batch))


def teacher_passes(n: int, cfg: TeacherConfig) -> int:
    """How many times :func:`train_teacher` calls ``progress``: once per pass over the images."""
    return math.ceil(teacher_steps(n, cfg) / len(batch_bounds(n, cfg.batch)))


def train_teacher(x_uint8: np.ndarray, y: np.ndarray, num_classes: int, mean, std, cfg: TeacherConfig,
                  device="cpu", seed: int = 0, progress=None) -> ConvNet:
    """Train the teacher on real uint8 images [N, C, H, W] with the evaluation protocol
    (:func:`d3fmt.evaluation.evaluate.train_model`: SGD momentum 0.9, wd 5e-4, DSA, lr / 10 at half)."""
    if not cfg.enabled:
        raise ConfigError("the teacher is disabled (width 0); give --teacher-width N")
    c, h, _ = (int(v) for v in np.shape(x_uint8)[1:])
    ecfg = EvalConfig(model="convnet", steps=teacher_steps(len(y), cfg), width=cfg.width, batch_size=cfg.batch, device=str(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvNet(teacher_config(c, num_classes, h, cfg.width))
    epochs_fn = real_epochs(x_uint8, y, mean, std, torch.device(device))
    model = train_model(model, epochs_fn, ecfg, cfg.lr, seed, progress)
    return model.cpu().eval().requires_grad_(False)
