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
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from d3fmt.device import resolve_device
from d3fmt.distill.assemble import EVAL_RESERVE, make_header, measure_plan, placeholders
from d3fmt.distill.budget import BudgetPlan, BudgetRequest, fit_budget, fit_teacher, gaussian_ratios, teacher_bytes
from d3fmt.distill.experts import EVAL_BATCH, expert_batch_size
from d3fmt.distill.memory import MemoryPlan, Workload, default_limit, plan_memory
from d3fmt.distill.settings import PackConfig, run_key
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.evaluation.evaluate import EvalResult
from d3fmt.format.budget import Budget
from d3fmt.format.decoders import DecoderConfig, decoder_param_count
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
    memory: MemoryPlan | None = None  # the memory plan (d3fmt.distill.memory) the settings were chosen by

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
    cfg, memory, plan = plan_pack_memory(cfg, info, budget)
    partition = partition_classes(info.num_classes, cfg.subtasks)
    mean, std = sample_stats(source, STATS_PER_CLASS)
    run_dir = Path(cfg.work_dir) / "runs" / run_key(cfg, info.content_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    return PackContext(cfg, source, info, budget, partition, plan, mean, std, run_dir, memory)


def plan_pack_memory(cfg: PackConfig, info, budget: Budget) -> tuple[PackConfig, MemoryPlan, BudgetPlan]:
    """The memory plan before any training (:mod:`d3fmt.distill.memory`): the settings in
    ``cfg.planned`` chosen so that it fits ``cfg.max_memory`` (default: the device's memory
    minus a margin), the others checked (a MemoryPlanError when they do not fit). Returns the
    config with the chosen values (``planned`` emptied, ``max_memory`` resolved, so that
    worker processes recompute the same plan), the memory plan (printed unless quiet) and
    the budget plan of the chosen subtask count."""
    device = resolve_device(cfg.device if cfg.device != "auto" or not cfg.devices else cfg.devices[0])
    limit = cfg.max_memory or default_limit(device.type, _device_total(device))
    plans: dict[int, BudgetPlan] = {}

    def workload_of(subtasks: int) -> Workload | None:
        if subtasks not in plans:
            try:
                plans[subtasks] = fit(replace(cfg, subtasks=subtasks), info,
                                      partition_classes(info.num_classes, subtasks), budget)
            except BudgetError:
                if subtasks == cfg.subtasks:
                    raise
                return None  # more subtasks: more decoders than the budget holds
        return pack_workload(cfg, info, subtasks, plans[subtasks])

    d = cfg.distill
    memory = plan_memory(workload_of, device=device.type, limit=limit, subtasks=cfg.subtasks, batch_syn=d.batch_syn,
                         mmd_classes=d.mmd_classes, choose=tuple(cfg.planned), max_subtasks=info.num_classes)
    if not cfg.quiet:
        print(memory.line(), file=sys.stderr)
    cfg = replace(cfg, subtasks=memory.subtasks, planned=(), max_memory=limit,
                  distill=replace(d, batch_syn=memory.batch_syn, mmd_classes=memory.mmd_classes))
    return cfg, memory, plans[memory.subtasks]


def _device_total(device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def pack_workload(cfg: PackConfig, info, subtasks: int, plan: BudgetPlan) -> Workload:
    """The largest subtask's :class:`Workload` with ``subtasks`` subtasks under ``plan``."""
    c, h, w = info.image_shape
    classes = -(-info.num_classes // subtasks)  # the largest part of a balanced partition
    per_class = info.num_train / max(1, info.num_classes)
    train = int(round(per_class * classes))
    test = int(round((info.num_test or 0) / max(1, info.num_classes) * classes))
    net = cfg.experts.convnet_config(c, classes, h)
    decoder = DecoderConfig.from_json(plan.decoders[0])
    return Workload(
        train_images=train, test_images=test, image_values=c * h * w, classes=classes,
        latents_per_class=plan.latents_per_class, z_dim=decoder.z_dim,
        syn_steps=cfg.distill.syn_steps if cfg.distill.iterations > cfg.distill.warmup else 0,
        mmd_samples=cfg.distill.mmd_samples, mmd_real=cfg.distill.mmd_real, conv_values=convnet_values(net),
        conv_params=convnet_params(net), decoder_values=decoder_values(decoder),
        decoder_params=decoder_param_count(decoder), expert_batch=expert_batch_size(cfg.experts, train),
        autoencoder_batch=cfg.distill.autoencoder.batch, eval_batch=EVAL_BATCH)


def convnet_values(net) -> int:
    """Activation values of one image through a ConvNet: conv, norm and activation outputs
    of every block, its pooled output, the input."""
    total, side, values = net.channels * net.image_size ** 2, net.image_size, 0
    for out in net.pooled_sides():
        values += 3 * net.width * side * side + (net.width * out * out if out != side else 0)
        side = out
    return total + values + net.num_classes


def convnet_params(net) -> int:
    convs = net.channels * net.width * 9 + (net.depth - 1) * net.width * net.width * 9
    return convs + 3 * net.depth * net.width + net.feature_dim * net.num_classes + net.num_classes


def decoder_values(cfg: DecoderConfig) -> int:
    """Activation values of one decoded image: the linear start (output and norm), every
    stage's conv and norm outputs (its activation is in place), the head and tanh, and the
    normalised image."""
    side = cfg.start_size
    values = 0 if cfg.family == "large" else 2 * cfg.width * side * side
    for c_out in cfg.stage_channels():
        side *= 2
        values += 2 * c_out * side * side
    return values + 3 * cfg.channels * side * side


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
