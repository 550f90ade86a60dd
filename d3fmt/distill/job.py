"""What every subtask of one job shares, computed identically by every process.

:func:`prepare` opens the source, partitions the classes into subtasks, fits ONE budget
for the whole file before any training (:mod:`d3fmt.distill.budget`, measuring a
same-shaped dummy container, so an impossible budget fails in seconds) and computes the
normalisation, into a :class:`PackContext`. Also here: loading one class subset as
normalised floats, and :class:`PackResult`, what a job returns.

Memory: pixels are held for one class subset at a time and for ``STATS_PER_CLASS``
images of one class at a time (normalisation statistics); never for the whole source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from d3fmt.distill.assemble import EVAL_RESERVE, make_header, measure_plan, placeholders
from d3fmt.distill.budget import BudgetPlan, BudgetRequest, fit_budget, fit_teacher, gaussian_ratios, teacher_bytes
from d3fmt.distill.settings import PackConfig, run_key
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.evaluation.evaluate import EvalResult
from d3fmt.format.budget import Budget
from d3fmt.models.teacher import AUTO_TEACHER
from d3fmt.pixels import Pixels
from d3fmt.sources import open_source
from d3fmt.sources.cache import CacheConfig
from d3fmt.sources.stats import MIN_STD, PixelMoments

STATS_PER_CLASS = 64  # images per class behind the stored normalisation (mean, std)

@dataclass
class PackResult:
    path: Path | None  # None on a torchrun rank other than 0 (rank 0 writes the file)
    file_bytes: int
    max_bytes: int
    plan: BudgetPlan
    evaluation: EvalResult | None
    expert_accuracy: list[float]
    subtasks: list[int] = field(default_factory=list)  # the subtasks this process distilled
    partial: bool = False  # a partial container (--subtask) was written

    @property
    def bytes(self) -> int:
        """The file's size."""
        return self.file_bytes

    @property
    def choices(self) -> dict:
        """What the budget fitter chose (the file's ``budget.choices``)."""
        return self.plan.choices()

    @property
    def accuracy(self) -> float | None:
        """The final evaluation's mean accuracy (None without an evaluation)."""
        return None if self.evaluation is None else self.evaluation.mean


@dataclass
class PackContext:
    """What every subtask of one job shares, computed identically by every process."""

    cfg: PackConfig
    source: object  # d3fmt.sources.Source
    info: object  # d3fmt.sources.SourceInfo
    budget: Budget
    partition: list[list[int]]
    plan: BudgetPlan
    mean: list[float]
    std: list[float]
    run_dir: Path

    @property
    def max_bytes(self) -> int:
        return self.budget.max_bytes


def partition_classes(num_classes: int, subtasks: int) -> list[list[int]]:
    """Balanced, contiguous, deterministic class subsets (sizes differ by at most one)."""
    if not 1 <= subtasks <= num_classes:
        raise ConfigError(f"--subtasks must be between 1 and the class count {num_classes}, got {subtasks}")
    return [part.tolist() for part in np.array_split(np.arange(num_classes), subtasks)]


def partition_hash(partition: list[list[int]]) -> str:
    """A short digest naming a class partition (parts of one job must agree on it)."""
    blob = json.dumps(partition, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def pack_cache(cfg: PackConfig) -> CacheConfig | None:
    """The decoded-image cache of a job: --cache-dir, else <work_dir>/sources; None with --no-cache."""
    if cfg.cache_dir == "":
        return None
    return CacheConfig(cfg.cache_dir or Path(cfg.work_dir) / "sources", workers=cfg.workers, progress=not cfg.quiet)


def open_pack_source(cfg: PackConfig, spec: str | None = None, test: str | None = None):
    return open_source(spec or cfg.source, image_size=cfg.image_size, skip_bad=cfg.skip_bad,
                       test=test or cfg.test, holdout=cfg.holdout, seed=cfg.seed, cache=pack_cache(cfg))


def prepare(cfg: PackConfig) -> PackContext:
    """Open the source, fit the budget, compute the normalisation: the same in every process."""
    source = open_pack_source(cfg)
    info = source.info
    budget = Budget.of(info.num_classes, info.image_shape, budget=cfg.budget, max_bytes=cfg.max_bytes)
    partition = partition_classes(info.num_classes, cfg.subtasks)
    plan = fit(cfg, info, partition, budget)
    mean, std = sample_stats(source, STATS_PER_CLASS)
    run_dir = Path(cfg.work_dir) / "runs" / run_key(cfg, info.content_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    return PackContext(cfg, source, info, budget, partition, plan, mean, std, run_dir)


def fit(cfg: PackConfig, info, parts, budget: Budget) -> BudgetPlan:
    """The budget plan: the teacher's bytes are set aside first (``fit_teacher``), the
    priors and decoders fill the rest; a fitter-chosen teacher is dropped when nothing
    else would fit beside it."""
    shape = tuple(info.image_shape)
    auto = cfg.teacher_width == AUTO_TEACHER
    teacher = fit_teacher(info.num_classes, shape, budget.max_bytes, None if auto else cfg.teacher_width)
    try:
        return _fit(cfg, info, parts, budget, teacher)
    except BudgetError:
        if teacher == 0 or not auto:
            raise
        return _fit(cfg, info, parts, budget, 0)


def _fit(cfg: PackConfig, info, parts, budget: Budget, teacher: int) -> BudgetPlan:
    shape = tuple(info.image_shape)
    reserve = EVAL_RESERVE + (teacher_bytes(info.num_classes, shape, teacher) if teacher else 0)
    req = BudgetRequest(
        budget=budget, subtask_classes=[len(p) for p in parts], soft_labels=cfg.soft_labels, reserve=reserve,
        family=cfg.family, z_dim=cfg.z_dim, latents_per_class=cfg.latents_per_class, width=cfg.decoder_width,
        weight_encoding=cfg.encoding, ratios=gaussian_ratios(), max_decode_mflop=cfg.max_decode_mflop,
    )
    ones = [0.5] * info.image_shape[0]
    plan = fit_budget(req, measure=lambda plan: measure_plan(
        lambda p: placeholders(make_header(info, parts, p, budget, ones, ones, cfg, 0.01)), plan))
    plan.teacher_width = teacher
    return plan


def class_heads(source, per_class: int, split: str = "train"):
    """The first ``per_class`` images of each class, one class at a time: yields
    (uint8 [n, C, H, W], int64 [n]). Only those files are decoded (ImageFolder, shards)."""
    for c in range(source.info.num_classes):
        batch = next(iter(source.iter_batches(split, classes=[c], batch_size=per_class)), None)
        if batch is not None:
            yield batch


def sample_stats(source, per_class: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (pixels in [0, 1]) over the first ``per_class`` train
    images of every class: deterministic, the same in every part of a federated job, and
    bounded work on an ImageNet-sized source (a full pass would decode every image)."""
    moments = PixelMoments(source.info.image_shape[0])
    for images, _ in class_heads(source, per_class):
        moments.add(images)
    if moments.count == 0:
        raise ConfigError(f"source {source.info.name} has no training images")
    return moments.mean_std(MIN_STD)


def load_subset(source, classes: list[int], split: str, mean, std) -> tuple[Pixels, torch.Tensor]:
    """The subset's images, uint8 [N, C, H, W] normalised per batch (:class:`Pixels`),
    and *local* labels 0..len(classes)-1."""
    x, y = source.load(split, classes=classes)
    local = np.full(source.info.num_classes, -1, dtype=np.int64)
    local[classes] = np.arange(len(classes))
    return Pixels.from_numpy(x, mean, std), torch.from_numpy(local[y])
