"""Baselines a .d3 file must beat, trained and tested with the same protocol as ``d3 eval``.

- **random** (``d3 baseline random SRC --budget B``): the honest competitor. Spend the
  same byte budget a .d3 file gets, ``B * K * C * H * W * 4`` bytes, on real training
  images kept as PNG files: as many per class as fit, the same number for every class,
  picked at random (deterministic by seed). Bytes are the PNG files exactly as Pillow
  encodes them (default settings, mode L or RGB); labels cost nothing (an ImageFolder's
  directory names). The subset is chosen so that its PNGs fit and one more image per
  class would not.
- **full** (``d3 baseline full SRC``): every training image, the ceiling.

Both train fresh models with :func:`d3fmt.evaluate.evaluate_real` (DSA, SGD, lr / 10 at
half, the final model tested once) and normalise with the pixel mean / std of the images
they train on -- all that a holder of those images would know.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from d3fmt.errors import ConfigError
from d3fmt.evaluate import (
    EvalConfig,
    EvalResult,
    TestSet,
    evaluate_real,
    load_test_set,
    pixel_mean_std,
)
from d3fmt.format.header import budget_bytes
from d3fmt.png import png_bytes as encode_png


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image [C, H, W] (C = 1 or 3) as a PNG file (:func:`d3fmt.png.png_bytes`)."""
    if image.shape[0] not in (1, 3):
        raise ConfigError(f"PNG baselines need 1 or 3 channels, the source has {image.shape[0]}")
    return encode_png(image.transpose(1, 2, 0))


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """PNG bytes -> uint8 [C, H, W] (what a user of the saved files would train on)."""
    with Image.open(io.BytesIO(data)) as pil:
        arr = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


@dataclass
class RandomSubset:
    """A balanced random subset of real training images stored as PNG files."""

    per_class: int  # images per class
    indices: np.ndarray  # [per_class * K] positions in the train split, class-major
    labels: np.ndarray  # [per_class * K] int64
    png: list[bytes]  # the encoded files, aligned with indices
    max_bytes: int  # the budget's byte cap
    used_bytes: int  # sum of the PNG sizes (<= max_bytes)
    next_bytes: int | None  # the bytes with one more image per class (> max_bytes); None if a class ran out

    def images(self, channels: int) -> np.ndarray:
        """The subset decoded from its PNG bytes, uint8 [N, C, H, W]."""
        if not self.png:
            raise ConfigError("the random subset is empty; a larger --budget is needed")
        return np.stack([decode_png(p, channels) for p in self.png])


def choose_random_subset(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, max_bytes: int,
                         seed: int = 0) -> RandomSubset:
    """The largest n such that n random images of every class fit in ``max_bytes`` as PNGs.

    Each class c is shuffled by a generator seeded with (seed, c), so a class's pick does
    not depend on the other classes; the subset with n + 1 per class extends the one with
    n. Images are encoded one round (one per class) at a time until the next round would
    exceed the cap, or a class has no image left.
    """
    train_y = np.asarray(train_y, dtype=np.int64)
    orders = []
    for c in range(num_classes):
        members = np.flatnonzero(train_y == c)
        orders.append(np.random.default_rng([int(seed), c]).permutation(members))
    limit = min(len(o) for o in orders)
    chosen: list[list[tuple[int, bytes]]] = [[] for _ in range(num_classes)]
    used, n, next_bytes = 0, 0, None
    while n < limit:
        round_files = [(int(orders[c][n]), png_bytes(train_x[orders[c][n]])) for c in range(num_classes)]
        round_bytes = sum(len(f) for _, f in round_files)
        if used + round_bytes > max_bytes:
            next_bytes = used + round_bytes
            break
        for c, item in enumerate(round_files):
            chosen[c].append(item)
        used += round_bytes
        n += 1
    indices = np.array([i for per in chosen for i, _ in per], dtype=np.int64)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), n)
    files = [f for per in chosen for _, f in per]
    return RandomSubset(n, indices, labels, files, int(max_bytes), used, next_bytes)


def save_subset(subset: RandomSubset, class_names: list[str], out_dir) -> Path:
    """Write the chosen PNGs as an ImageFolder (``out_dir/<class>/<index>.png``), byte for byte."""
    out = Path(out_dir)
    for k, (index, label, data) in enumerate(zip(subset.indices, subset.labels, subset.png)):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", class_names[int(label)]) or f"class{int(label)}"
        folder = out / f"{int(label):03d}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{int(index):07d}.png").write_bytes(data)
    return out


# ---------------------------------------------------------------------------------------
# The two baselines end to end
# ---------------------------------------------------------------------------------------


@dataclass
class BaselineConfig:
    """Which training data, which test data, how to train."""

    source: str
    test: str | None = None  # None: SRC's own test split (or its default holdout)
    budget: float | None = None  # random: images per class (float32 convention)
    image_size: int | None = None  # None: the source's
    seed: int = 0  # subset choice (training seeds come from evaluation.seed)
    out: str | None = None  # random: save the chosen PNGs here
    evaluation: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class BaselineResult:
    kind: str  # "random" | "full"
    source: str
    test_set: str
    train_images: int
    images_per_class: int | None  # random: n; full: None (classes may differ)
    bytes: int  # PNG bytes of the training images (the random subset: <= max_bytes)
    max_bytes: int | None  # random: the budget's cap
    next_bytes: int | None  # random: bytes with one more image per class
    evaluation: EvalResult

    def to_json(self) -> dict:
        return {"kind": self.kind, "source": self.source, "test_set": self.test_set,
                "train_images": self.train_images, "images_per_class": self.images_per_class,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "next_bytes": self.next_bytes,
                "evaluation": self.evaluation.to_json()}


def _open(cfg: BaselineConfig):
    """(source, train x, train y, test set): SRC's train split, and --test resolved like d3 eval."""
    from d3fmt.sources import open_source

    source = open_source(cfg.source, image_size=cfg.image_size)
    info = source.info
    x, y = source.load("train")
    if cfg.test is None:
        if not info.num_test:
            raise ConfigError(f"{cfg.source} has no test split; pass --test SRC")
        tx, ty = source.load("test")
        test = TestSet(tx, np.asarray(ty, np.int64), f"{cfg.source} test split ({len(ty)} images)")
    else:
        # SRC itself as --test: its own test split or holdout, never the training images.
        test = load_test_set(cfg.test, info.image_shape, info.num_classes, train_hash=info.content_hash)
    return source, x, np.asarray(y, np.int64), test


def run_random(cfg: BaselineConfig, progress=None) -> BaselineResult:
    """The same-bytes random real subset, trained and tested with the eval protocol."""
    if cfg.budget is None:
        raise ConfigError("the random baseline needs --budget B (images per class)")
    source, x, y, test = _open(cfg)
    info = source.info
    max_bytes = budget_bytes(cfg.budget, info.num_classes, info.image_shape)
    subset = choose_random_subset(x, y, info.num_classes, max_bytes, seed=cfg.seed)
    if subset.per_class == 0:
        raise ConfigError(f"not even one PNG per class fits in {max_bytes} bytes (budget {cfg.budget}); "
                          "use a larger --budget")
    if cfg.out:
        save_subset(subset, info.class_names, cfg.out)
    train_x = subset.images(info.image_shape[0])  # [n*K, C, H, W] decoded from the PNGs
    mean, std = pixel_mean_std(train_x)
    ev = evaluate_real(train_x, subset.labels, test.x, test.y, info.num_classes, mean, std, cfg.evaluation,
                       progress=progress)
    ev.details.update(budget=cfg.budget, images_per_class=subset.per_class, png_bytes=subset.used_bytes)
    return BaselineResult("random", info.name, test.name, len(subset.labels), subset.per_class, subset.used_bytes,
                          max_bytes, subset.next_bytes, ev)


def run_full(cfg: BaselineConfig, progress=None) -> BaselineResult:
    """Every training image: the ceiling. Its bytes are the training set as PNG files."""
    source, x, y, test = _open(cfg)
    info = source.info
    mean, std = pixel_mean_std(x)
    ev = evaluate_real(x, y, test.x, test.y, info.num_classes, mean, std, cfg.evaluation, progress=progress)
    size = sum(len(png_bytes(img)) for img in x)
    return BaselineResult("full", info.name, test.name, len(y), None, size, None, None, ev)
