"""Tensor encodings: how one numpy array becomes the raw bytes of a section and back.

No pickle and no numpy ``.npy`` header: a section's bytes are plain little-endian
values, and its shape and encoding live in the JSON header. Float encodings trade
precision for bytes (the distiller picks them to fit a budget) and always decode to
float32; integer encodings are exact and decode to their own dtype.

``int8`` is symmetric per-channel quantisation along axis 0: the raw payload is
``shape[0]`` float32 scales followed by ``prod(shape)`` int8 values (C order), and
value ``x[i, ...] = q[i, ...] * scale[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from d3fmt.errors import ConfigError, FormatError, LimitError
from d3fmt.format.constants import MAX_NDIM, MAX_SECTION_RAW_BYTES


@dataclass(frozen=True)
class Encoding:
    """One entry of the encoding table (spec/format.md, "Tensor encodings")."""

    name: str
    wire: str  # numpy dtype string of the stored values, little-endian
    decoded: str  # numpy dtype of the decoded array
    is_float: bool


ENCODINGS: dict[str, Encoding] = {
    "float32": Encoding("float32", "<f4", "float32", True),
    "float16": Encoding("float16", "<f2", "float32", True),
    "int8": Encoding("int8", "i1", "float32", True),  # + float32 scales, see module doc
    "uint8": Encoding("uint8", "u1", "uint8", False),
    "int16": Encoding("int16", "<i2", "int16", False),
    "int32": Encoding("int32", "<i4", "int32", False),
}
FLOAT_ENCODINGS = tuple(n for n, e in ENCODINGS.items() if e.is_float)


def get_encoding(name: object) -> Encoding:
    """The encoding called ``name``; FormatError for an unknown one."""
    enc = ENCODINGS.get(name) if isinstance(name, str) else None
    if enc is None:
        raise FormatError(
            f"unknown tensor encoding {str(name)[:40]!r}; this reader knows {', '.join(ENCODINGS)}"
        )
    return enc


def raw_size(encoding: str, shape: tuple[int, ...] | list[int]) -> int:
    """Exact raw byte count of a tensor, checked against the caps before any allocation.

    Python integers cannot overflow, so a hostile shape such as [2**40, 2**40] yields a
    huge number here and is refused with LimitError instead of wrapping around.
    """
    enc = get_encoding(encoding)
    if len(shape) > MAX_NDIM:
        raise LimitError(f"tensor has {len(shape)} dimensions, more than the cap of {MAX_NDIM}")
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise FormatError(f"tensor shape {list(shape)[:MAX_NDIM]} has a dimension that is not a non-negative integer")
    count = prod(shape)
    itemsize = np.dtype(enc.wire).itemsize
    if enc.name == "int8":
        if len(shape) == 0:
            raise FormatError("an int8 tensor needs at least one dimension (its scales run along axis 0)")
        size = 4 * shape[0] + count
    else:
        size = count * itemsize
    if size > MAX_SECTION_RAW_BYTES:
        raise LimitError(
            f"tensor of shape {list(shape)} as {enc.name} needs {size} bytes, more than the "
            f"per-section cap of {MAX_SECTION_RAW_BYTES}"
        )
    return size


def default_encoding(array: np.ndarray) -> str:
    """Encoding used when a container names none: float32 for floats, int32 for integers."""
    return "float32" if np.issubdtype(array.dtype, np.floating) else "int32"


def encode_tensor(array: np.ndarray, encoding: str) -> bytes:
    """Raw section bytes of ``array`` under ``encoding``; ConfigError if it does not fit it."""
    enc = ENCODINGS.get(encoding)
    if enc is None:
        raise ConfigError(f"unknown tensor encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    array = np.asarray(array)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise ConfigError(f"cannot store an array of dtype {array.dtype}; use a numeric array")
    raw_size(encoding, array.shape)  # caps
    if enc.is_float:
        values = array.astype(np.float32)  # [*shape]
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"tensor holds NaN or infinite values; {encoding} stores finite numbers only")
        if encoding == "int8":
            return _encode_int8(values)
        with np.errstate(over="ignore"):
            wire = values.astype(enc.wire)
        if not np.all(np.isfinite(wire)):
            raise ConfigError("tensor values exceed the float16 range (65504); store it as float32")
        return wire.tobytes(order="C")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise ConfigError(f"tensor holds non-integer values; {encoding} stores integers only")
    info = np.iinfo(enc.decoded)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise ConfigError(f"tensor values fall outside the {encoding} range [{info.min}, {info.max}]")
    return array.astype(enc.wire).tobytes(order="C")


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel (axis 0) int8 quantisation: (scales [d0] f32, q [*shape] i8).

    scale = max|x| / 127 per channel (0 for an all-zero channel), q = rint(x / scale)
    clipped to [-127, 127]; rint rounds half to even, so the result is deterministic.
    """
    values = np.asarray(values, dtype=np.float32)  # [d0, ...]
    flat = values.reshape(values.shape[0], prod(values.shape[1:]))  # [d0, rest]
    peak = np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(flat.shape[0], np.float32)
    scales = (peak / np.float32(127.0)).astype(np.float32)  # [d0]
    safe = np.where(scales > 0, scales, np.float32(1.0))[:, None]  # [d0, 1]
    q = np.clip(np.rint(flat / safe), -127, 127).astype(np.int8)  # [d0, rest]
    return scales, q.reshape(values.shape)


def _encode_int8(values: np.ndarray) -> bytes:
    scales, q = quantize_int8(values)
    return scales.astype("<f4").tobytes() + q.tobytes(order="C")


def decode_tensor(raw: bytes | bytearray | memoryview, encoding: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Array from a section's raw bytes; FormatError when the bytes do not fit the shape."""
    enc = get_encoding(encoding)
    shape = tuple(shape)
    expected = raw_size(encoding, shape)
    if len(raw) != expected:
        raise FormatError(
            f"section holds {len(raw)} raw bytes but {encoding} of shape {list(shape)} needs {expected}"
        )
    if encoding == "int8":
        n = shape[0]
        scales = np.frombuffer(raw, dtype="<f4", count=n)  # [d0]
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise FormatError("int8 section has a negative or non-finite scale; the file is corrupt")
        q = np.frombuffer(raw, dtype="i1", offset=4 * n).reshape(shape)  # [*shape]
        bshape = (n,) + (1,) * (len(shape) - 1)
        return q.astype(np.float32) * scales.astype(np.float32).reshape(bshape)
    values = np.frombuffer(raw, dtype=enc.wire).reshape(shape)
    return values.astype(enc.decoded)  # a fresh, writable, native-endian copy
