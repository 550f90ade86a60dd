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
from d3fmt.format.constants import MAX_INT8_SCALE, MAX_NDIM, MAX_SECTION_RAW_BYTES


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
            raise FormatError(f"tensor shape {_shown(shape)} has a dimension that is not a non-negative integer")
        if d > MAX_SECTION_RAW_BYTES:  # before any product: no huge numbers in arithmetic or messages
            raise LimitError(f"tensor shape {_shown(shape)} has a dimension above the per-section cap of "
                             f"{MAX_SECTION_RAW_BYTES}")
    if enc.name == "int8" and len(shape) == 0:
        raise FormatError("an int8 tensor needs at least one dimension (its scales run along axis 0)")
    # An empty tensor is capped as if its zero dimensions were 1, so every dimension and
    # the product of the others stay small enough for any array library.
    nonzero = _size(enc, [max(d, 1) for d in shape])
    if nonzero > MAX_SECTION_RAW_BYTES:
        empty = " (counting zero dimensions as 1)" if 0 in shape else ""
        raise LimitError(
            f"tensor of shape {_shown(shape)} as {enc.name} needs {nonzero} bytes{empty}, more than the "
            f"per-section cap of {MAX_SECTION_RAW_BYTES}"
        )
    return _size(enc, shape)


def _size(enc: Encoding, shape: list[int] | tuple[int, ...]) -> int:
    count = prod(shape)  # every factor <= 2**30, at most 8 of them: at most 240 bits
    return 4 * shape[0] + count if enc.name == "int8" else count * np.dtype(enc.wire).itemsize


def _shown(shape) -> str:
    """A shape for a message: no huge numbers (Python refuses str() beyond 4300 digits)."""
    return "[" + ", ".join(str(d) if isinstance(d, int) and abs(d) < 2**64 else "..." for d in list(shape)[:MAX_NDIM]) + "]"


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
    if np.any(scales > MAX_INT8_SCALE):
        raise ConfigError("tensor values are too large for int8 (a scale above FLT_MAX/128); store it as float32")
    return scales.astype("<f4").tobytes() + q.tobytes(order="C")


def decode_tensor(raw: bytes | bytearray | memoryview, encoding: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """Array from a section's raw bytes; FormatError when the bytes do not fit the shape.

    Memory stays within a small constant of the decoded size: a writable buffer whose
    values need no conversion becomes the array itself (no copy), and conversions run in
    chunks of _DECODE_CHUNK values into one preallocated output array.
    """
    enc = get_encoding(encoding)
    shape = tuple(shape)
    expected = raw_size(encoding, shape)
    if len(raw) != expected:
        raise FormatError(
            f"section holds {len(raw)} raw bytes but {encoding} of shape {list(shape)} needs {expected}"
        )
    if encoding == "int8":
        return _decode_int8(raw, shape)
    values = np.frombuffer(raw, dtype=enc.wire)  # [n]
    if values.dtype == np.dtype(enc.decoded) and values.flags.writeable:
        return values.reshape(shape)  # the caller's fresh buffer, now owned by the array
    out = np.empty(values.size, dtype=enc.decoded)  # [n]
    for start in range(0, values.size, _DECODE_CHUNK):
        out[start:start + _DECODE_CHUNK] = values[start:start + _DECODE_CHUNK]
    return out.reshape(shape)  # a fresh, writable, native-endian array


_DECODE_CHUNK = 1 << 18  # values converted at a time (1 MiB of float32)


def _decode_int8(raw, shape: tuple[int, ...]) -> np.ndarray:
    n = shape[0]
    scales = np.frombuffer(memoryview(raw)[:4 * n], dtype="<f4").astype(np.float32)  # [d0]
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise FormatError("int8 section has a negative or non-finite scale; the file is corrupt")
    if np.any(scales > MAX_INT8_SCALE):
        raise FormatError(
            f"int8 section has a scale above {MAX_INT8_SCALE:.6g}, so its values would decode to infinity; "
            "the file is corrupt"
        )
    q = np.frombuffer(memoryview(raw)[4 * n:], dtype="i1").reshape(n, prod(shape[1:]))  # [d0, rest]
    out = np.empty(q.shape, dtype=np.float32)  # [d0, rest]
    rows = max(1, _DECODE_CHUNK // max(1, q.shape[1]))
    for start in range(0, n, rows):
        stop = start + rows
        np.multiply(q[start:stop], scales[start:stop, None], out=out[start:stop])
    return out.reshape(shape)
