"""MNIST-style IDX sources: a directory with the classic four files.

Rules:
- Files: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` (required) and
  ``t10k-...`` (or ``test-...``) for the test split (both or neither); ``.`` instead of
  the second ``-`` is accepted (``train-images.idx3-ubyte``); each may be gzip-compressed
  (``.gz``); the uncompressed file wins when both exist. Compression is detected from
  the gzip magic, not the name.
- Format: magic 0x00 0x00 0x08 (unsigned bytes) + ndim; big-endian uint32 sizes; images
  are [N, H, W], labels [N]. Anything else is a SourceError naming the file.
- Size check at open: an uncompressed file must have exactly header + N*H*W bytes; a
  gzip file's trailer (ISIZE, the uncompressed size mod 2**32) must agree, which catches
  truncated downloads without decompressing.
- Classes: a directory whose name contains "fashion" gets the ten Fashion-MNIST names;
  otherwise "0".."K-1" with K = largest train label + 1. Test labels >= K are an error.
- Images are streamed from the (decompressed) file on every pass; labels are loaded.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np

from d3fmt.errors import SourceError
from d3fmt.sources.arrays import ArrayPart, StreamRows
from d3fmt.sources.base import READ_ERRORS, SourceParts, one_line
from d3fmt.sources.hashing import hash_files
from d3fmt.sources.images import MAX_SIDE, default_side

FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                       "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_NAME = re.compile(r"^(train|t10k|test)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")
_UBYTE = 0x08


def find_idx_files(root: Path) -> dict[tuple[str, str], Path]:
    """{("train"|"test", "images"|"labels"): path}, uncompressed preferred."""
    found: dict[tuple[str, str], Path] = {}
    for entry in sorted(os.listdir(root)):
        m = _NAME.match(entry)
        if not m:
            continue
        split = "train" if m.group(1) == "train" else "test"
        key = (split, m.group(2))
        if key not in found or not m.group(4):
            found[key] = root / entry
    return found


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _opener(path: Path):
    return (lambda: gzip.open(path, "rb")) if _is_gzip(path) else (lambda: open(path, "rb"))


def _read_header(path: Path, ndim: int) -> tuple[tuple[int, ...], int]:
    """(sizes, header bytes) of an IDX file; checks magic, element type and length."""
    try:
        with _opener(path)() as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[3] != ndim:
                raise SourceError(f"{path} has a wrong IDX magic ({magic.hex() or 'empty'}); "
                                  f"expected 000008{ndim:02x} for an idx{ndim} file")
            if magic[2] != _UBYTE:
                raise SourceError(f"{path} has IDX element type 0x{magic[2]:02x}; only unsigned "
                                  "bytes (0x08) are supported")
            raw = f.read(4 * ndim)
    except READ_ERRORS as exc:
        raise SourceError(f"cannot read {path} ({one_line(exc)}); re-create or re-download it") from None
    if len(raw) != 4 * ndim:
        raise SourceError(f"{path} is truncated inside its header; re-download it")
    return struct.unpack(f">{ndim}I", raw), 4 + 4 * ndim


def _check_length(path: Path, expected: int) -> None:
    if _is_gzip(path):
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 18:
                raise SourceError(f"{path} is a truncated gzip file; re-download it")
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize != expected % (1 << 32):
            raise SourceError(f"{path} is truncated or corrupt (gzip says {isize} bytes, the IDX "
                              f"header needs {expected}); re-download it")
    elif os.path.getsize(path) != expected:
        raise SourceError(f"{path} has {os.path.getsize(path)} bytes, its IDX header needs "
                          f"{expected}; the file is truncated or corrupt")


def _load_labels(path: Path) -> np.ndarray:
    (n,), offset = _read_header(path, 1)
    _check_length(path, offset + n)
    try:
        with _opener(path)() as f:
            data = f.read(offset + n)[offset:]
    except READ_ERRORS as exc:
        raise SourceError(f"{path} is truncated or corrupt ({one_line(exc)}); re-download it") from None
    if len(data) != n:
        raise SourceError(f"{path} is truncated ({len(data)} of {n} labels); re-download it")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def _image_rows(path: Path) -> StreamRows:
    (n, h, w), offset = _read_header(path, 3)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise SourceError(f"{path} declares {h}x{w} images; sides must be 1..{MAX_SIDE}")
    _check_length(path, offset + n * h * w)
    return StreamRows(_opener(path), offset, n, (h, w), np.dtype(np.uint8), str(path))


def _pair(files: dict, split: str, root: Path) -> tuple[StreamRows, np.ndarray] | None:
    images, labels = files.get((split, "images")), files.get((split, "labels"))
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        lacking = "images" if images is None else "labels"
        raise SourceError(f"{root} has {split} IDX files without the {lacking} file; "
                          "add it or remove the other")
    rows, y = _image_rows(images), _load_labels(labels)
    if rows.num_rows != len(y):
        raise SourceError(f"{images.name} holds {rows.num_rows} images but {labels.name} "
                          f"{len(y)} labels; the files do not belong together")
    return rows, y


def open_idx(root: Path, *, image_size: int | None, channels: int | None, bad) -> SourceParts:
    files = find_idx_files(root)
    train = _pair(files, "train", root)
    if train is None:
        raise SourceError(f"{root} has no train-images-idx3-ubyte[.gz] / "
                          "train-labels-idx1-ubyte[.gz]; not an IDX source")
    test = _pair(files, "test", root)
    rows, labels = train
    fashion = "fashion" in root.resolve().name.lower()
    if fashion:
        names = FASHION_MNIST_NAMES
    else:
        names = [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    for what, y in (("train", labels), ("test", test[1] if test else None)):
        if y is not None and y.size and y.max() >= len(names):
            raise SourceError(f"{what} label {int(y.max())} in {root} is out of range for "
                              f"{len(names)} classes; the label file is corrupt")
    channels = channels or 1
    side = image_size or default_side(*rows.row_shape)
    train_part = ArrayPart(rows, "NHW", labels, channels, side)
    test_part = ArrayPart(test[0], "NHW", test[1], channels, side) if test else None
    tag = "fashion-mnist" if fashion else "idx"
    return SourceParts(
        kind="idx", name=f"idx:{root} ({tag}" + ("; test: t10k)" if test else ")"),
        class_names=list(names), channels=channels, side=side, train=train_part,
        test=test_part, test_name="t10k" if test else None,
        content_hash=hash_files("idx", root, [p.name for p in files.values()]))
