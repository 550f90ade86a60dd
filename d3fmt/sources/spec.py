"""``open_source(SRC)``: tell the kind of a SRC string, open it, resolve its test split.

SRC forms, tried in this order:
- ``digits``: the built-in scikit-learn digits; ``fashion-mnist``: the IDX files of the
  Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), unless a
  path of that name exists.
- An explicit kind prefix: ``imagefolder:PATH``, ``webdataset:SPEC`` (or ``wds:``),
  ``idx:DIR``, ``npz:FILE`` -- for when the guess below would be wrong.
- A brace pattern (``{``), a ``.tar``/``.tar.gz``/``.tgz`` file: webdataset shards.
- A ``.npz`` file: npz. A directory holding ``train-images-idx3-ubyte[.gz]``: IDX; a
  directory holding only shard files: webdataset; any other directory: ImageFolder.

Test split, first that applies: a separate ``test=`` SRC (its train part, resized and
converted to the main source's shape; it must have exactly the same class names);
the source's own (``val/``, t10k, ``x_test``); else a deterministic stratified
holdout of ``holdout`` (default DEFAULT_HOLDOUT = 0.2, only used when no test split
exists; 0 means no test split) carved out of train -- disjoint from what is left.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d3fmt.errors import ConfigError, SourceError
from d3fmt.sources.base import BadImages, Source, SourceInfo, SourceParts
from d3fmt.sources.cache import CACHED_KINDS, CacheConfig, CacheStatus, use_cache
from d3fmt.sources.digits import open_digits
from d3fmt.sources.hashing import combine_hashes
from d3fmt.sources.idx import FASHION_MNIST_DIR, find_idx_files, open_idx
from d3fmt.sources.imagefolder import open_imagefolder
from d3fmt.sources.images import check_image_size
from d3fmt.sources.npz import open_npz
from d3fmt.sources.shards import is_shard_name, open_shards

DEFAULT_HOLDOUT = 0.2
KINDS = ("imagefolder", "webdataset", "idx", "npz", "digits")
_PREFIXES = {"imagefolder:": "imagefolder", "webdataset:": "webdataset", "wds:": "webdataset",
             "idx:": "idx", "npz:": "npz"}
_SUPPORTED = ("give an ImageFolder directory, .tar shards (a path or brace pattern), an IDX "
              "directory, an .npz file, or 'digits'")


def detect_kind(spec: str) -> tuple[str, str]:
    """(kind, location) of a SRC string; SourceError when it is missing or unsupported."""
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"empty source; {_SUPPORTED}")
    if spec == "digits":
        return "digits", spec
    if spec == "fashion-mnist" and not Path(spec).exists():
        if not FASHION_MNIST_DIR.is_dir():
            raise SourceError(f"{FASHION_MNIST_DIR} not found; apt-get install dataset-fashion-mnist")
        return "idx", str(FASHION_MNIST_DIR)
    for prefix, kind in _PREFIXES.items():
        if spec.startswith(prefix):
            return kind, spec[len(prefix):]
    if "{" in spec:
        return "webdataset", spec
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"source {spec} not found; {_SUPPORTED}")
    if path.is_file():
        if is_shard_name(path.name):
            return "webdataset", spec
        if path.name.lower().endswith(".npz"):
            return "npz", spec
        raise SourceError(f"unsupported source {spec}; {_SUPPORTED}")
    if path.is_dir():
        if ("train", "images") in find_idx_files(path):
            return "idx", spec
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if entries and all(p.is_file() for p in entries) and any(is_shard_name(p.name) for p in entries):
            return "webdataset", spec
        return "imagefolder", spec
    raise SourceError(f"unsupported source {spec}; {_SUPPORTED}")


def _open_parts(spec: str, image_size: int | None, channels: int | None,
                bad: BadImages, cache: CacheConfig | None = None) -> SourceParts:
    parts = _open_raw_parts(spec, image_size, channels, bad)
    if cache is not None and parts.kind in CACHED_KINDS:
        parts, _ = use_cache(parts, _location(spec), cache)
    return parts


def _location(spec: str) -> str:
    """The absolute location of a file source: what names its cache entry."""
    _, where = detect_kind(spec)
    return os.path.abspath(where)


def _open_raw_parts(spec: str, image_size: int | None, channels: int | None,
                    bad: BadImages) -> SourceParts:
    kind, where = detect_kind(spec)
    if kind == "digits":
        return open_digits(image_size=image_size, channels=channels, bad=bad)
    if kind == "webdataset":
        return open_shards(where, image_size=image_size, channels=channels, bad=bad)
    path = Path(where)
    if not path.exists():
        raise SourceError(f"source {where} not found; {_SUPPORTED}")
    opener = {"imagefolder": open_imagefolder, "idx": open_idx, "npz": open_npz}[kind]
    if kind == "npz" and not path.is_file() or kind != "npz" and not path.is_dir():
        what = "file" if kind == "npz" else "directory"
        raise SourceError(f"{kind} source {where} must be a {what}")
    return opener(path, image_size=image_size, channels=channels, bad=bad)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask [N]: round(fraction * n_c) records of each class c, chosen by a
    generator seeded with (seed, c) -- so a class's pick does not depend on the others --
    and never the last record of a class (train keeps at least one per class)."""
    mask = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if members.size == 0:
            continue
        n_test = min(int(round(fraction * members.size)), members.size - 1)
        rng = np.random.default_rng([int(seed), int(labels[members[0]])])
        mask[rng.choice(members, size=n_test, replace=False)] = True
    return mask


def _check_classes(name: str, class_names: list[str], labels: np.ndarray) -> None:
    if len(class_names) < 2:
        only = repr(class_names[0]) if class_names else "none"
        raise SourceError(f"{name} has only one class ({only}); distillation needs at least two")
    if len(set(class_names)) != len(class_names):
        raise SourceError(f"{name} repeats a class name; class names must be distinct")
    counts = np.bincount(labels, minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise SourceError(f"{name}: class {class_names[empty[0]]!r} (id {empty[0]}) has no training "
                          f"images ({empty.size} empty classes); every class needs images")


def open_source(spec: str, *, image_size: int | None = None, skip_bad: bool = False,
                test: str | None = None, holdout: float | None = None, seed: int = 0,
                cache: CacheConfig | None = None) -> Source:
    """Open a dataset source for ``d3 pack`` (see the module docstring for SRC forms).

    image_size: square side S of every image (default: the source's shorter side).
    skip_bad: skip (and count, ``Source.skipped``) undecodable images instead of raising.
    test: a separate SRC for the test split. holdout: fraction held out of train when
    there is no test split (default 0.2; 0 = none). seed: the holdout's seed.
    cache: read ImageFolder / webdataset pixels from a decoded-image cache (built on first
    use, see :mod:`d3fmt.sources.cache`); other kinds are read directly.
    """
    image_size = check_image_size(image_size)
    if holdout is not None and not (isinstance(holdout, (int, float)) and 0 <= holdout < 1):
        raise ConfigError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    bad = BadImages(skip=bool(skip_bad))
    parts = _open_parts(spec, image_size, None, bad, cache)
    all_train = np.arange(len(parts.train.labels), dtype=np.int64)
    train, test_split, name = (parts.train, all_train), None, parts.name
    content_hash = parts.content_hash

    if test is not None:
        if holdout:
            raise ConfigError("give either a test source or a holdout fraction, not both")
        other = _open_parts(test, parts.side, parts.channels, bad, cache)
        if other.class_names != parts.class_names:
            raise SourceError(f"test source {test} has classes {other.class_names[:5]}... but "
                              f"{spec} has {parts.class_names[:5]}...; both need the same classes")
        test_split = (other.train, np.arange(len(other.train.labels), dtype=np.int64))
        name += f"; test: {other.name}"
        content_hash = combine_hashes(content_hash, other.content_hash)
    elif parts.test is not None:
        if holdout:
            raise ConfigError(f"{spec} has its own test split ({parts.test_name}); holdout only "
                              "applies to sources without one")
        test_split = (parts.test, np.arange(len(parts.test.labels), dtype=np.int64))
    else:
        fraction = DEFAULT_HOLDOUT if holdout is None else float(holdout)
        if fraction > 0:
            mask = stratified_holdout(parts.train.labels, fraction, seed)
            train = (parts.train, np.flatnonzero(~mask).astype(np.int64))
            test_split = (parts.train, np.flatnonzero(mask).astype(np.int64))
            name += f"; test: {fraction:g} stratified holdout of train, seed {seed}"

    _check_classes(name, parts.class_names, parts.train.labels[train[1]])
    info = SourceInfo(
        name=name, num_classes=len(parts.class_names), class_names=list(parts.class_names),
        image_shape=(parts.channels, parts.side, parts.side), num_train=len(train[1]),
        num_test=None if test_split is None else len(test_split[1]), content_hash=content_hash)
    return Source(info, train, test_split, bad)


def prepare_cache(spec: str, cache: CacheConfig, *, image_size: int | None = None, skip_bad: bool = False,
                  test: str | None = None) -> list[CacheStatus]:
    """``d3 prepare``: build (or resume, or find complete) the decoded-image cache of an
    ImageFolder / webdataset source and of its separate ``test`` source.

    Unreadable images are recorded in the manifest either way; without ``skip_bad`` a
    SourceError then names the first (the cache stays complete: a rerun with skip_bad,
    or a pack with --skip-bad, decodes nothing)."""
    image_size = check_image_size(image_size)
    bad = BadImages(skip=bool(skip_bad))
    statuses = []
    parts = None
    for one in [spec] + ([test] if test is not None else []):
        raw = _open_raw_parts(one, image_size if parts is None else parts.side,
                              None if parts is None else parts.channels, bad)
        if raw.kind not in CACHED_KINDS:
            raise ConfigError(f"{one} is a {raw.kind} source, read directly without decoding JPEG/PNG files; "
                              "only ImageFolder and webdataset sources are cached")
        parts = parts or raw
        statuses.append(use_cache(raw, _location(one), cache)[1])
    found = [b for s in statuses for b in s.bad]
    if found and not skip_bad:
        raise SourceError(f"{len(found)} unreadable image(s), first {found[0].where} ({found[0].reason}); the "
                          "cache is complete and lists them: fix or delete the files, or pass --skip-bad")
    return statuses
