"""ImageFolder sources: one sub-directory of JPEG/PNG files per class.

Layout rules:
- ``ROOT/<class>/**/<image>``: the whole tree is the train part (no own test split).
- ``ROOT/train/<class>/...`` (+ optional ``ROOT/val/<class>/...``, or ``ROOT/test/``
  when there is no ``val/``): train on ``train/``, hold out ``val/``. Every class of
  ``val/`` must be a class of ``train/``; a class may be missing from ``val/``.
- Class names are the class directory names, sorted; class ids follow that order.
- Image files are found recursively below each class directory by extension
  (see images.IMAGE_EXTENSIONS); hidden files and directories (".name") are ignored;
  records are ordered by class, then by relative path (string order).
- A class directory with no image file is an error (an empty class cannot be distilled).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from d3fmt.errors import SourceError
from d3fmt.sources.base import BadImages, ChunkFiller, Part, SourceParts
from d3fmt.sources.hashing import file_hashes
from d3fmt.sources.images import ImageDecodeError, decode_image, is_image_name, look_at_images

TEST_DIRS = ("val", "test")


class FilesPart(Part):
    """Records that are image files below one directory; decoded one file at a time."""

    def __init__(self, tree: Path, rel_paths: list[str], labels: np.ndarray,
                 channels: int, side: int):
        self.tree = tree
        self.rel_paths = rel_paths
        self.labels = labels
        self.channels = channels
        self.side = side

    def where(self, i: int) -> str:
        return os.path.join(self.tree, self.rel_paths[i])

    def select(self, ids: np.ndarray) -> FilesPart:
        return FilesPart(self.tree, [self.rel_paths[i] for i in ids.tolist()], self.labels[ids],
                         self.channels, self.side)

    def read(self, ids: np.ndarray, chunk: int, bad: BadImages
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        filler = ChunkFiller(chunk, self.channels, self.side)
        for i in ids.tolist():
            path = self.where(i)
            try:
                image = decode_image(path, self.channels, self.side)
            except ImageDecodeError as exc:
                bad.handle(path, exc)
                continue
            if (full := filler.add(i, image)) is not None:
                yield full
        if (rest := filler.rest()) is not None:
            yield rest


def _visible_dirs(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images_below(tree: Path, cls: str) -> list[str]:
    """Relative paths ("cls/sub/x.png") of the image files below one class directory."""
    found: list[str] = []
    top = tree / cls
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, tree)
        found.extend(os.path.join(rel_dir, f).replace(os.sep, "/") for f in filenames
                     if not f.startswith(".") and is_image_name(f))
    found.sort()
    return found


def _list_tree(tree: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """All image paths in class order, and the count per class (int64 [K])."""
    paths: list[str] = []
    counts = np.zeros(len(classes), dtype=np.int64)
    for k, cls in enumerate(classes):
        below = _images_below(tree, cls)
        counts[k] = len(below)
        paths.extend(below)
    return paths, counts


def _split_dirs(root: Path) -> tuple[Path, Path | None, str]:
    """(train tree, test tree or None, description)."""
    if not (root / "train").is_dir():
        return root, None, ""
    for name in TEST_DIRS:
        if (root / name).is_dir():
            return root / "train", root / name, f"train/, test: {name}/"
    return root / "train", None, "train/"


def open_imagefolder(root: Path, *, image_size: int | None, channels: int | None,
                     bad: BadImages) -> SourceParts:
    train_dir, test_dir, layout = _split_dirs(root)
    classes = _visible_dirs(train_dir)
    if not classes:
        raise SourceError(f"{train_dir} has no class sub-directories; an ImageFolder source "
                          "holds one sub-directory of JPEG/PNG images per class")
    paths, counts = _list_tree(train_dir, classes)
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise SourceError(f"class directory {train_dir / empty[0]} holds no JPEG/PNG images "
                          f"({len(empty)} empty class dirs); add images or remove it")
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)   # [N]

    look = look_at_images(
        len(paths), fetch=lambda i: str(train_dir / paths[i]),
        where=lambda i: str(train_dir / paths[i]),
        on_bad=bad.handle)
    channels = channels or look.channels
    side = image_size or look.side
    train = FilesPart(train_dir, paths, labels, channels, side)

    test = None
    rel_all = paths if train_dir == root else \
        [os.path.relpath(train_dir / p, root).replace(os.sep, "/") for p in paths]
    if test_dir is not None:
        test_classes = _visible_dirs(test_dir)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise SourceError(f"{test_dir} has class dir {unknown[0]!r} that {train_dir} lacks; "
                              "held-out classes must be train classes")
        test_paths, test_counts = _list_tree(test_dir, test_classes)
        index = {c: k for k, c in enumerate(classes)}
        test_labels = np.repeat(np.asarray([index[c] for c in test_classes], dtype=np.int64),
                                test_counts)
        test = FilesPart(test_dir, test_paths, test_labels, channels, side)
        rel_all += [os.path.relpath(test_dir / p, root).replace(os.sep, "/") for p in test_paths]

    suffix = f" ({layout})" if layout else ""
    hashes = file_hashes("imagefolder", root, rel_all)
    return SourceParts(
        kind="imagefolder", name=f"imagefolder:{root}{suffix}", class_names=classes,
        channels=channels, side=side, train=train, test=test,
        test_name=f"{test_dir.name}/" if test_dir is not None else None,
        content_hash=hashes.content, cache_stamp=hashes.stamp)
