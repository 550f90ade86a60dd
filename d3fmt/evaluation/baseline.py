"""Baselines a .d3 file must beat, trained and tested with the same protocol as ``d3 eval``.

- **random** (``d3 baseline random SRC --budget B``): the honest competitor. Spend the
  same byte budget a .d3 file gets, ``B * K * C * H * W * 4`` bytes, on real training
  images kept as PNG files: as many per class as fit, the same number for every class,
  picked at random (deterministic by seed). Bytes are the PNG files exactly as Pillow
  encodes them (default settings, mode L or RGB); labels cost nothing (an ImageFolder's
  directory names). The subset is chosen so that its PNGs fit and one more image per
  class would not.
- **codecs** (``d3 baseline codecs SRC --budget B``): the same balanced random subset kept
  with each codec of :mod:`d3fmt.evaluation.codecs` (PNG, zstd, posterised, WebP/JPEG sheets,
  downsampled): the largest n per class whose stored bytes (blobs plus a label list) fit,
  each trained and tested; :func:`run_codecs` / :func:`evaluate_codecs` return one
  :class:`CodecResult` per codec. :func:`compare_file` (``d3 eval FILE --compare``) and
  :func:`compare_same_bytes` (for ``d3 pack``'s final evaluation) train the family at a
  .d3 file's exact bytes and give the ``compare`` object of its evaluation record.
- **full** (``d3 baseline full SRC``): every training image, the ceiling.

Both train fresh models with :func:`d3fmt.evaluation.evaluate.evaluate_real` (DSA, SGD, lr / 10 at
half, the final model tested once) and normalise with the pixel mean / std of the images
they train on -- all that a holder of those images would know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d3fmt.errors import ConfigError
from d3fmt.evaluation.codecs import (
    CODECS,
    DEFAULT_COMPARE,
    FittedSubset,
    decode,
    fit_subset,
    parse_codecs,
    png_bytes,
)
from d3fmt.evaluation.evaluate import (
    EvalConfig,
    EvalResult,
    TestSet,
    evaluate_real,
    load_test_set,
    pixel_mean_std,
)
from d3fmt.format.budget import Budget, check_budget_args


def random_subset(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, max_bytes: int,
                  seed: int = 0) -> FittedSubset:
    """The random baseline's subset: the largest n such that n random images of every class,
    as PNG files plus their label list, fit ``max_bytes`` (the png codec of the family)."""
    return fit_subset("png", train_x, train_y, num_classes, max_bytes, seed=seed)


def save_subset(subset: FittedSubset, class_names: list[str], out_dir) -> Path:
    """Write the chosen PNGs as an ImageFolder (``out_dir/<class>/<index>.png``), byte for byte."""
    out = Path(out_dir)
    _, labels = decode(subset.encoded)
    for index, label, data in zip(subset.indices, labels, subset.encoded.blobs):
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
    cache: object | None = None  # a d3fmt.sources.cache.CacheConfig: ImageFolder / webdataset pixels decoded once


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

    source = open_source(cfg.source, image_size=cfg.image_size, cache=cfg.cache)
    info = source.info
    x, y = source.view("train")  # a cached source: read a slice at a time, never held whole
    if cfg.test is None:
        if not info.num_test:
            raise ConfigError(f"{cfg.source} has no test split; pass --test SRC")
        tx, ty = source.view("test")
        test = TestSet(tx, np.asarray(ty, np.int64), f"{cfg.source} test split ({len(ty)} images)")
    else:
        # SRC itself as --test: its own test split or holdout, never the training images.
        test = load_test_set(cfg.test, info.image_shape, info.num_classes, train_hash=info.content_hash,
                             cache=cfg.cache)
    return source, x, np.asarray(y, np.int64), test


def run_random(cfg: BaselineConfig, progress=None) -> BaselineResult:
    """The same-bytes random real subset, trained and tested with the eval protocol."""
    if cfg.budget is None:
        raise ConfigError("the random baseline needs --budget B (images per class)")
    source, x, y, test = _open(cfg)
    info = source.info
    max_bytes = Budget.of(info.num_classes, info.image_shape, budget=cfg.budget).max_bytes
    subset = random_subset(x, y, info.num_classes, max_bytes, seed=cfg.seed)
    if subset.per_class == 0:
        raise ConfigError(f"not even one PNG per class fits in {max_bytes} bytes (budget {cfg.budget}); "
                          "use a larger --budget")
    if cfg.out:
        save_subset(subset, info.class_names, cfg.out)
    train_x, train_y = decode(subset.encoded)  # [n*K, C, H, W] decoded from the PNGs, class-major
    mean, std = pixel_mean_std(train_x)
    ev = evaluate_real(train_x, train_y, test.x, test.y, info.num_classes, mean, std, cfg.evaluation,
                       progress=progress)
    ev.details.update(budget=cfg.budget, images_per_class=subset.per_class, png_bytes=subset.bytes)
    return BaselineResult("random", info.name, test.name, len(train_y), subset.per_class, subset.bytes,
                          max_bytes, subset.next_bytes, ev)


def run_full(cfg: BaselineConfig, progress=None) -> BaselineResult:
    """Every training image: the ceiling. Its bytes are the training set as PNG files."""
    source, x, y, test = _open(cfg)
    x = x[:]  # the full-data baseline trains on every image: read the whole split
    info = source.info
    mean, std = pixel_mean_std(x)
    ev = evaluate_real(x, y, test.x, test.y, info.num_classes, mean, std, cfg.evaluation, progress=progress)
    size = sum(len(png_bytes(img)) for img in x)
    return BaselineResult("full", info.name, test.name, len(y), None, size, None, None, ev)


# ---------------------------------------------------------------------------------------
# The codec family at a byte cap (d3 baseline codecs) and at a file's bytes (d3 eval --compare)
# ---------------------------------------------------------------------------------------


@dataclass
class CodecResult:
    """One codec of the family: the largest balanced subset that fits, and its accuracy."""

    codec: str
    description: str
    images_per_class: int  # n (0: not even one image per class fits; then no evaluation)
    bytes: int  # exactly what is stored: blobs + label list (<= max_bytes)
    max_bytes: int
    next_bytes: int | None  # bytes with n + 1 per class; None if a class ran out
    evaluation: EvalResult | None

    def compare_record(self) -> dict:
        """The ``compare`` object of an evaluation record (spec/format.md)."""
        ev = self.evaluation
        return {"codec": self.codec, "images_per_class": self.images_per_class, "bytes": self.bytes,
                "accuracy": round(ev.mean, 6), "std": round(ev.std, 6), "runs": len(ev.accuracies)}

    def to_json(self) -> dict:
        return {"codec": self.codec, "description": self.description, "images_per_class": self.images_per_class,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "next_bytes": self.next_bytes,
                "evaluation": None if self.evaluation is None else self.evaluation.to_json()}


@dataclass
class CodecsResult:
    """The whole family at one byte cap."""

    source: str
    test_set: str
    max_bytes: int
    results: list[CodecResult]

    @property
    def best(self) -> CodecResult:
        """The codec with the highest mean accuracy (ties: the fewer bytes)."""
        fitted = [r for r in self.results if r.evaluation is not None]
        return max(fitted, key=lambda r: (r.evaluation.mean, -r.bytes))

    def to_json(self) -> dict:
        return {"kind": "codecs", "source": self.source, "test_set": self.test_set, "max_bytes": self.max_bytes,
                "best": self.best.codec, "codecs": [r.to_json() for r in self.results]}


def evaluate_codecs(train_x: np.ndarray, train_y: np.ndarray, test: TestSet, num_classes: int, max_bytes: int,
                    cfg: EvalConfig, codecs=None, seed: int = 0, progress=None,
                    on_codec=None) -> list[CodecResult]:
    """Every codec of ``codecs`` (names, default all of :data:`d3fmt.evaluation.codecs.CODECS`) at ``max_bytes``.

    For each: the largest balanced random subset of the real training images (class pick
    order by ``seed``) whose stored bytes fit, decoded as a user would, trained and tested
    with :func:`d3fmt.evaluation.evaluate.evaluate_real` (normalised with its own pixel statistics).
    A codec that cannot hold one image per class is reported with n = 0 and no evaluation;
    when no codec can, ConfigError. ``progress(run, epoch, loss)`` is passed to the
    training; ``on_codec(name)`` is called before each codec.
    """
    names = parse_codecs(codecs)
    if max_bytes < 1:
        raise ConfigError(f"the byte cap must be positive, got {max_bytes}")
    train_y = np.asarray(train_y, np.int64)
    fits = []
    for name in names:
        fits.append(fit_subset(name, train_x, train_y, num_classes, max_bytes, seed=seed))
    if all(f.per_class == 0 for f in fits):
        raise ConfigError(f"not even one image per class fits in {max_bytes:,} bytes with "
                          f"{'any of ' if len(names) > 1 else ''}{', '.join(names)}; use a larger --budget")
    results = []
    for f in fits:
        if on_codec is not None:
            on_codec(f.codec)
        ev = None
        if f.per_class:
            x, y = decode(f.encoded)  # [n*K, C, H, W] uint8, what a user of the stored bytes has
            mean, std = pixel_mean_std(x)
            ev = evaluate_real(x, y, test.x, test.y, num_classes, mean, std, cfg, progress=progress)
            ev.details.update(codec=f.codec, images_per_class=f.per_class, codec_bytes=f.bytes)
        results.append(CodecResult(f.codec, CODECS[f.codec].description, f.per_class, f.bytes, int(max_bytes),
                                   f.next_bytes, ev))
    return results


def run_codecs(cfg: BaselineConfig, codecs=None, max_bytes: int | None = None, progress=None,
               on_codec=None) -> CodecsResult:
    """``d3 baseline codecs``: the family at ``max_bytes`` or the budget's B*K*C*H*W*4 bytes."""
    check_budget_args(cfg.budget, max_bytes)
    names = parse_codecs(codecs)
    source, x, y, test = _open(cfg)
    info = source.info
    cap = Budget.of(info.num_classes, info.image_shape, budget=cfg.budget, max_bytes=max_bytes).max_bytes
    results = evaluate_codecs(x, y, test, info.num_classes, cap, cfg.evaluation, names, seed=cfg.seed,
                              progress=progress, on_codec=on_codec)
    return CodecsResult(info.name, test.name, cap, results)


def compare_same_bytes(train_x, train_y, test: TestSet, num_classes: int, file_bytes: int, cfg: EvalConfig,
                       codecs=None, seed: int = 0, progress=None, on_codec=None) -> CodecsResult:
    """The family's codecs (default :data:`d3fmt.evaluation.codecs.DEFAULT_COMPARE`) at a .d3 file's exact
    bytes, trained like the file was evaluated: what ``d3 pack`` calls at its final
    evaluation, where the source is at hand. Store ``result.best.compare_record()`` as the
    evaluation record's ``compare``."""
    names = parse_codecs(codecs, default=DEFAULT_COMPARE)
    results = evaluate_codecs(train_x, train_y, test, num_classes, int(file_bytes), cfg, names, seed=seed,
                              progress=progress, on_codec=on_codec)
    return CodecsResult("", test.name, int(file_bytes), results)


def compare_source(path, source: str | None = None, cache=None):
    """The real training images a .d3 file was distilled from, at its image size: the source
    its provenance names (or ``source``), opened with the recorded test / holdout / seed so
    the held-out images stay out. Returns (train x uint8 [N, C, H, W], train y [N]).
    Without ``source`` the data must still have the content hash the file recorded."""
    from d3fmt.format import D3Reader
    from d3fmt.sources import open_source

    with D3Reader(path) as reader:
        header = reader.header
    prov = header.get("provenance") or {}
    settings = prov.get("settings") if isinstance(prov.get("settings"), dict) else {}
    spec = source or settings.get("source") or prov.get("source")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{path} does not record its source; pass --source SRC")
    test = settings.get("test") if isinstance(settings.get("test"), str) else None
    holdout = settings.get("holdout") if isinstance(settings.get("holdout"), (int, float)) else None
    src = open_source(spec, image_size=int(header["image_shape"][1]), test=test, holdout=holdout,
                      seed=int(settings.get("seed") or 0), cache=cache)
    info = src.info
    if source is None and prov.get("source_hash") and info.content_hash != prov["source_hash"]:
        raise ConfigError(f"{spec} is not the data {path} was distilled from (content hash differs); "
                          "pass --source with the original data")
    if info.num_classes != int(header["num_classes"]) or tuple(info.image_shape) != tuple(header["image_shape"]):
        raise ConfigError(f"{spec} has {info.num_classes} classes of {list(info.image_shape)} images, "
                          f"{path} has {header['num_classes']} of {header['image_shape']}")
    x, y = src.view("train")  # a cached source: only the records the codecs pick are read
    return x, np.asarray(y, np.int64)


@dataclass
class CompareResult:
    """``d3 eval FILE --compare``: the file's evaluation and the family at its bytes."""

    evaluation: EvalResult
    test_set: str
    file_bytes: int  # the file's size when compared (before the record was appended)
    codecs: CodecsResult
    record: dict  # the evaluation record, with ``compare`` (appended unless record=False)

    @property
    def margin(self) -> float:
        """Points of accuracy over the best same-bytes codec (negative: below it)."""
        return 100 * (self.evaluation.mean - self.codecs.best.evaluation.mean)


def compare_file(path, test_spec: str, cfg: EvalConfig, codecs=None, source: str | None = None,
                 record: bool = True, progress=None, on_codec=None, cache=None) -> CompareResult:
    """Evaluate a .d3 file like ``d3 eval`` and train the codec family at the file's exact byte
    count with the same EvalConfig; append one evaluation record carrying ``compare`` (the
    best codec: name, images per class, bytes, accuracy, std, runs)."""
    from d3fmt.evaluation.evaluate import evaluate_file
    from d3fmt.format import D3Reader, append_eval

    names = parse_codecs(codecs, default=DEFAULT_COMPARE)
    cfg.validate()
    with D3Reader(path) as reader:
        file_bytes = reader.file_bytes
        num_classes = int(reader.header["num_classes"])
    x, y = compare_source(path, source, cache)
    ev, test = evaluate_file(path, test_spec, cfg, progress=progress, record=False, cache=cache)
    family = compare_same_bytes(x, y, test, num_classes, file_bytes, cfg, names, progress=progress,
                                on_codec=on_codec)
    rec = ev.record(test.name)
    rec["compare"] = family.best.compare_record()
    if record:
        append_eval(path, rec)
    return CompareResult(ev, test.name, file_bytes, family, rec)
