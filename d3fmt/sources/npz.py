"""``.npz`` sources: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``, ``class_names``.

Rules:
- Never unpickles: member headers are parsed with numpy's header reader and an object
  dtype is refused before any data is touched (np.savez stores object arrays as pickle).
- ``x``: [N, H, W] (grey), [N, H, W, C] or [N, C, H, W] with C in {1, 3}; the
  channels-last reading wins when both fit. Pixel dtypes per d3fmt.sources.arrays.
  ``x`` is streamed from the zip member in chunks (stored or deflated alike); a
  Fortran-ordered ``x`` cannot be streamed and is read whole.
- ``y``/``y_test``: 1-D integers, same length as their ``x``. ``class_names``: 1-D
  strings; without it the names are "0".."K-1", K = largest train label + 1. Labels
  outside 0..K-1 are an error. ``x_train``/``y_train`` are accepted for ``x``/``y``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy

from d3fmt.errors import SourceError
from d3fmt.sources.arrays import ArrayPart, MemoryRows, StreamRows
from d3fmt.sources.base import READ_ERRORS, SourceParts, one_line
from d3fmt.sources.hashing import hash_files
from d3fmt.sources.images import MAX_SIDE, default_side

MAX_HEADER = 10_000


class _Member:
    """Context manager over one zip member that also closes its ZipFile."""

    def __init__(self, path: Path, member: str):
        self.path, self.member = path, member

    def __enter__(self):
        self.zf = zipfile.ZipFile(self.path)
        self.f = self.zf.open(self.member)
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        self.zf.close()


def _header(zf: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of one .npy member, without unpickling."""
    try:
        with zf.open(member) as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f, max_header_size=MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f, max_header_size=MAX_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: member {member} is not a plain .npy array "
                          f"({one_line(exc)})") from None
    if dtype.hasobject:
        raise SourceError(f"{path}: {member} holds Python objects (a pickle); d3fmt never "
                          "unpickles, save plain numeric/string arrays")
    return tuple(shape), bool(fortran), dtype, offset


def _small(zf: zipfile.ZipFile, member: str, path: Path) -> np.ndarray:
    _header(zf, member, path)   # refuses object arrays first
    try:
        with zf.open(member) as f:
            return npy.read_array(f, allow_pickle=False)
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: cannot read {member} ({one_line(exc)})") from None


def _layout(shape: tuple, path: Path, key: str) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    raise SourceError(f"{path}: {key} has shape {list(shape)}; expected [N, H, W], "
                      "[N, H, W, C] or [N, C, H, W] with C in {1, 3}")


def _hw_c(shape: tuple, layout: str) -> tuple[int, int, int]:
    if layout == "NHW":
        return shape[1], shape[2], 1
    if layout == "NHWC":
        return shape[1], shape[2], shape[3]
    return shape[2], shape[3], shape[1]


def _rows(zf, path: Path, key: str):
    shape, fortran, dtype, offset = _header(zf, key + ".npy", path)
    if dtype.kind not in "iuf":
        raise SourceError(f"{path}: {key} has dtype {dtype}; use uint8 (or floats in [0, 1])")
    layout = _layout(shape, path, key)
    if not all(1 <= side <= MAX_SIDE for side in _hw_c(shape, layout)[:2]):
        raise SourceError(f"{path}: {key} has shape {list(shape)}; image sides must be 1..{MAX_SIDE}")
    if fortran:
        whole = np.ascontiguousarray(_small(zf, key + ".npy", path))
        return MemoryRows(whole, f"{path}:{key}"), layout, shape
    return (StreamRows(lambda: _Member(path, key + ".npy"), offset, shape[0],
                       shape[1:], dtype, f"{path}:{key}"), layout, shape)


def _labels(zf, path: Path, key: str, n: int) -> np.ndarray:
    y = _small(zf, key + ".npy", path)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise SourceError(f"{path}: {key} must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    if len(y) != n:
        raise SourceError(f"{path}: {key} has {len(y)} labels for {n} images; x and y "
                          "lengths must match")
    if y.size and y.min() < 0:
        raise SourceError(f"{path}: {key} holds negative label {int(y.min())}; labels are 0..K-1")
    return y.astype(np.int64)


def open_npz(path: Path, *, image_size: int | None, channels: int | None, bad) -> SourceParts:
    try:
        zf = zipfile.ZipFile(path)
    except READ_ERRORS as exc:
        raise SourceError(f"cannot open {path} as .npz ({one_line(exc)})") from None
    with zf:
        keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        xk, yk = ("x", "y") if {"x", "y"} <= keys else ("x_train", "y_train")
        if not {xk, yk} <= keys:
            raise SourceError(f"{path} needs arrays 'x' and 'y' (has {sorted(keys)}); "
                              "save with np.savez(path, x=images, y=labels)")
        rows, layout, shape = _rows(zf, path, xk)
        labels = _labels(zf, path, yk, shape[0])
        test = None
        if "x_test" in keys or "y_test" in keys:
            if not {"x_test", "y_test"} <= keys:
                raise SourceError(f"{path} has only one of x_test / y_test; give both or neither")
            t_rows, t_layout, t_shape = _rows(zf, path, "x_test")
            if _hw_c(t_shape, t_layout)[2] != _hw_c(shape, layout)[2]:
                raise SourceError(f"{path}: x_test and x have different channel counts")
            test = (t_rows, t_layout, _labels(zf, path, "y_test", t_shape[0]))
        if "class_names" in keys:
            names_arr = _small(zf, "class_names.npy", path)
            if names_arr.ndim != 1 or names_arr.dtype.kind not in "US":
                raise SourceError(f"{path}: class_names must be a 1-D string array")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_arr.tolist()]
        else:
            names = [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    for key, y in ((yk, labels), ("y_test", test[2] if test else None)):
        if y is not None and y.size and y.max() >= len(names):
            raise SourceError(f"{path}: {key} label {int(y.max())} is out of range for "
                              f"{len(names)} classes; fix the labels or class_names")
    height, width, have = _hw_c(shape, layout)
    channels = channels or have
    side = image_size or default_side(height, width)
    train = ArrayPart(rows, layout, labels, channels, side)
    test_part = ArrayPart(test[0], test[1], test[2], channels, side) if test else None
    return SourceParts(
        kind="npz", name=f"npz:{path}" + (" (test: x_test)" if test else ""),
        class_names=names, channels=channels, side=side, train=train, test=test_part,
        test_name="x_test" if test else None,
        content_hash=hash_files("npz", path.parent, [path.name]))
