"""Packing real anchors: the representation that wins accuracy per byte at small budgets.

A file of *anchors* (format 1.2) keeps, for every class, as many real training images as
its bytes allow, each reduced to ``2^bits`` grey levels per channel and stored with the
context-coded level stream of :mod:`d3fmt.format.levelcode`, plus (optionally) a small
labelling teacher. Each anchor is one component of its class's mixture; the loader yields
them like decoded samples (``d3fmt.dataset``), so D3Dataset, ``d3 eval`` and export work
unchanged. Against the codec family of ``d3 baseline codecs``, the same random images in
the same bytes, the context coder stores about 1.4x as many images as posterised pixels +
zstd-19 (benchmarks/fmnist-ablation.md, section 9).

The subset is the codec family's (``codecs.class_orders`` with the pack seed), so the
anchors of budget B extend the competitor's subset: what the file adds is images, never a
different pick. The largest per-class count whose whole file fits the cap is found by
the codec family's own search (``codecs.largest_fitting``) over real encodings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from d3fmt import __version__
from d3fmt.distill.assemble import EVAL_RESERVE
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.evaluation.codecs import class_orders, largest_fitting
from d3fmt.format import D3Container, encode_d3
from d3fmt.format.budget import Budget
from d3fmt.format.levelcode import MAX_LEVELS, encode_levels
from d3fmt.format.model import Header, Provenance, utc_now

ANCHOR_VALUES = "anchors.values"
ANCHOR_STREAM = "anchors.stream"
MAX_BITS = MAX_LEVELS.bit_length() - 1  # 4


@dataclass
class AnchorConfig:
    """How anchors are chosen and stored."""

    bits: int = 2  # grey levels per channel = 2 ** bits
    seed: int = 0  # the subset's pick (the codec family's class orders)

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise ConfigError(f"--anchor-bits must be 1..{MAX_BITS}, got {self.bits!r}")

    @property
    def levels(self) -> int:
        return 1 << self.bits


def level_values(levels: int) -> np.ndarray:
    """The pixel value of each level, uint8 [L]: round(q * 255 / (L - 1)) (black and white exact)."""
    return np.round(np.arange(levels) * 255.0 / (levels - 1)).astype(np.uint8)


def to_levels(x_uint8: np.ndarray, levels: int) -> np.ndarray:
    """uint8 pixels -> level indices round(v * (L - 1) / 255), as the codec family posterises."""
    return np.round(np.asarray(x_uint8, np.float64) * (levels - 1) / 255).astype(np.uint8)


@dataclass
class AnchorFit:
    """The anchors chosen for a cap."""

    per_class: int
    container: D3Container
    file_bytes: int
    stream_bytes: int


class AnchorPool:
    """Real training images in the codec family's pick order, read only as the fit needs
    them: ``images(n)`` is the first n of every class, class-major (memory: those images)."""

    def __init__(self, labels: np.ndarray, take, num_classes: int, seed: int):
        self.orders = class_orders(labels, num_classes, seed)
        self.take = take  # positions -> uint8 images [n, C, H, W]
        self.limit = min(len(o) for o in self.orders)  # the most anchors every class can have
        self._loaded: list[np.ndarray] = []  # per class: its first images, read so far

    @classmethod
    def of_arrays(cls, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> "AnchorPool":
        return cls(np.asarray(y, np.int64), lambda positions: x[positions], num_classes, seed)

    @classmethod
    def of_source(cls, source, seed: int) -> "AnchorPool":
        return cls(source.labels("train"), source.take, source.info.num_classes, seed)

    def images(self, n: int) -> np.ndarray:
        if n > self.limit:
            raise BudgetError(f"a class has only {self.limit} training images, fewer than the {n} anchors asked for")
        have = self._loaded[0].shape[0] if self._loaded else 0
        if n > have:
            picks = [o[have:n] for o in self.orders]
            new = self.take(np.concatenate(picks))
            parts = np.split(new, np.cumsum([len(p) for p in picks])[:-1])
            self._loaded = parts if not self._loaded else [np.concatenate([a, b]) for a, b in zip(self._loaded, parts)]
        return np.concatenate([a[:n] for a in self._loaded])


@dataclass
class AnchorSource:
    """What the anchors are drawn from: the pool and the source's description."""

    pool: AnchorPool
    image_shape: tuple[int, int, int]
    class_names: list[str]
    name: str
    content_hash: str
    mean: list[float]
    std: list[float]


def anchor_container(src: AnchorSource, per_class: int, cfg: AnchorConfig, budget: Budget, settings: dict,
                     finish=None) -> tuple[D3Container, int]:
    """The container holding ``per_class`` anchors of every class, passed through
    ``finish(container)`` (e.g. attaching the teacher); returns it and the stream size."""
    k = len(src.class_names)
    c, h, w = src.image_shape
    stream, shape = encode_levels(to_levels(src.pool.images(per_class), cfg.levels), cfg.levels)
    anchors = {"levels": cfg.levels, "lanes": shape.lanes, "counts": [per_class] * k,
               "values": ANCHOR_VALUES, "stream": ANCHOR_STREAM}
    header = Header.new(
        image_shape=(c, h, w), class_names=list(src.class_names), mean=src.mean, std=src.std,
        samples_per_class=per_class, subtasks=[], budget=budget, anchors=anchors,
        choices={"representation": "anchors", "anchor_bits": cfg.bits, "anchors_per_class": per_class,
                 "anchor_stream_bytes": len(stream)},
        provenance=Provenance(source=src.name, source_hash=src.content_hash, settings=settings,
                              d3fmt_version=__version__, created=utc_now()),
    ).to_json()
    values = np.tile(level_values(cfg.levels), (c, 1))  # [C, L]
    tensors = {ANCHOR_VALUES: values, ANCHOR_STREAM: np.frombuffer(stream, np.uint8).copy()}
    encodings = {ANCHOR_VALUES: "uint8", ANCHOR_STREAM: "uint8"}
    container = D3Container(header, tensors, encodings)
    if finish is not None:
        finish(container)
    return container, len(stream)


def fit_anchors(src: AnchorSource, cfg: AnchorConfig, budget: Budget, settings: dict, finish=None,
                reserve: int = 0) -> AnchorFit:
    """The most anchors per class whose whole file is at most ``budget.max_bytes - reserve``."""
    cap = budget.max_bytes - reserve
    sizes: dict[int, int] = {}
    best: dict[int, tuple] = {}  # the largest n known to fit -> (container, stream bytes): one container held

    def size(n: int) -> int:
        if n not in sizes:
            container, stream = anchor_container(src, n, cfg, budget, settings, finish)
            sizes[n] = len(encode_d3(container))
            if sizes[n] <= cap and n > max(best, default=0):
                best.clear()
                best[n] = (container, stream)
        return sizes[n]

    lo, _ = largest_fitting(size, cap, src.pool.limit)
    if lo == 0:
        raise BudgetError(f"not even one anchor per class fits in {cap:,} bytes; raise --budget or lower "
                          "--anchor-bits")
    container, stream_bytes = best[lo]
    file_bytes = sizes[lo]
    return AnchorFit(lo, container, file_bytes, stream_bytes)


# ---------------------------------------------------------------------------------------
# `d3 pack --representation anchors`
# ---------------------------------------------------------------------------------------


@dataclass
class AnchorPackResult:
    """What ``d3 pack --representation anchors`` wrote."""

    path: Path
    file_bytes: int
    max_bytes: int
    per_class: int
    bits: int
    teacher_width: int
    evaluation: object | None  # d3fmt.evaluation.evaluate.EvalResult
    choices: dict = field(default_factory=dict)  # the file's budget.choices
    partial: bool = False  # (anchors are packed whole: never a part of a federated job)
    subtasks: list = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.file_bytes

    @property
    def accuracy(self) -> float | None:
        """The final evaluation's mean accuracy (None without an evaluation)."""
        return None if self.evaluation is None else self.evaluation.mean


def pack_anchors(cfg, anchor: AnchorConfig) -> AnchorPackResult:
    """Pack ``cfg.source`` as anchors (+ the teacher ``cfg.teacher_width`` asks for): the
    teacher's bytes and the evaluation reserve first, then as many anchors as fit; the
    file is evaluated (``cfg.evaluation``) and written once, atomically."""
    from d3fmt.device import resolve_device
    from d3fmt.distill.budget import fit_teacher
    from d3fmt.distill.job import STATS_PER_CLASS, open_pack_source, sample_stats
    from d3fmt.distill.labels import label_sample, teacher_passes, train_teacher
    from d3fmt.distill.settings import settings_json
    from d3fmt.evaluation.evaluate import evaluate_representation
    from d3fmt.format.container import atomic_write
    from d3fmt.loader.representation import Representation
    from d3fmt.models.teacher import AUTO_TEACHER, attach_teacher
    from d3fmt.progress import bar
    from d3fmt.seeds import derive_seed

    source = open_pack_source(cfg)
    info = source.info
    device = resolve_device(cfg.device)
    budget = Budget.of(info.num_classes, info.image_shape, budget=cfg.budget, max_bytes=cfg.max_bytes)
    mean, std = sample_stats(source, STATS_PER_CLASS)
    width = fit_teacher(info.num_classes, tuple(info.image_shape), budget.max_bytes,
                        None if cfg.teacher_width == AUTO_TEACHER else cfg.teacher_width)
    finish = None
    if width:
        x, y = label_sample(source, cfg.teacher.per_class)
        tcfg = replace(cfg.teacher, width=width)
        with bar(cfg.quiet, total=teacher_passes(len(y), tcfg), desc=f"teacher (ConvNet-{width})",
                 unit="pass") as pbar:
            model = train_teacher(x, y, info.num_classes, mean, std, tcfg, device=device,
                                  seed=derive_seed(cfg.seed, "teacher"), progress=lambda e, loss: pbar.update(1))
        del x, y

        def finish(container):
            attach_teacher(container, model, tcfg.temperature)
            container.header["budget"]["choices"]["teacher_width"] = width

    src = AnchorSource(AnchorPool.of_source(source, anchor.seed), tuple(info.image_shape), list(info.class_names),
                       info.name, info.content_hash, mean, std)
    fit = fit_anchors(src, anchor, budget, settings_json(cfg), finish, reserve=EVAL_RESERVE)
    container = fit.container
    evaluation = None
    if cfg.evaluation is not None:
        test_x, test_y = source.view("test")
        rep = Representation.from_container(container, device=device)
        evaluation = evaluate_representation(rep, test_x, test_y, cfg.evaluation)
        container.header["evals"].append(evaluation.record(f"{info.name} [test split, {info.num_test} images]"))
    data = encode_d3(container)
    if len(data) > budget.max_bytes:
        raise BudgetError(f"the anchors file needs {len(data):,} bytes, over the cap of {budget.max_bytes:,}; "
                          "pack again with a larger --budget")
    atomic_write(cfg.output, data)
    return AnchorPackResult(Path(cfg.output), len(data), budget.max_bytes, fit.per_class, anchor.bits, width,
                            evaluation, container.header["budget"]["choices"])
