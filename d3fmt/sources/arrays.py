"""Array-backed parts: records are rows of one big pixel array (IDX file, npz member,
built-in data), read front to back in chunks so only one chunk is ever decoded.

A row reader yields raw rows; :class:`ArrayPart` picks the selected ones, converts them
to uint8 [n, C, H, W], fixes the channel count and resizes. Pixel dtypes: uint8 as is;
other integers must lie in 0..255; floats must lie in [0, 1] and are scaled by 255 and
rounded. Values outside that fail with a SourceError when the chunk is read.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from d3fmt.errors import SourceError
from d3fmt.sources.base import READ_ERRORS, BadImages, Part, one_line
from d3fmt.sources.images import resize_images, to_channels

LAYOUTS = ("NHW", "NHWC", "NCHW")


class RowReader(abc.ABC):
    """Rows of a [N, ...] array, front to back."""

    num_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    where: str

    @abc.abstractmethod
    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row number, array [<= rows, *row_shape]) until the end."""


class MemoryRows(RowReader):
    """Rows of an array already in memory (small built-in sources)."""

    def __init__(self, array: np.ndarray, where: str):
        self.array = array
        self.num_rows = array.shape[0]
        self.row_shape = tuple(array.shape[1:])
        self.dtype = array.dtype
        self.where = where

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.num_rows, rows):
            yield start, self.array[start:start + rows]


class StreamRows(RowReader):
    """Rows read from a binary stream at a data offset (raw C-order array bytes)."""

    def __init__(self, open_stream: Callable[[], BinaryIO], data_offset: int, num_rows: int,
                 row_shape: tuple[int, ...], dtype: np.dtype, where: str):
        self.open_stream = open_stream
        self.data_offset = data_offset
        self.num_rows = num_rows
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.where = where

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        try:
            with self.open_stream() as f:
                _skip(f, self.data_offset)
                for start in range(0, self.num_rows, rows):
                    n = min(rows, self.num_rows - start)
                    data = f.read(n * row_bytes)
                    if len(data) != n * row_bytes:
                        raise EOFError(f"ends after {start + len(data) // max(row_bytes, 1)} "
                                       f"of {self.num_rows} rows")
                    block = np.frombuffer(data, dtype=self.dtype)
                    yield start, block.reshape((n, *self.row_shape))
        except SourceError:
            raise
        except READ_ERRORS as exc:
            raise SourceError(f"{self.where} is truncated or corrupt ({one_line(exc)}); "
                              "re-create or re-download it") from None


def _skip(f: BinaryIO, count: int) -> None:
    """Move forward ``count`` bytes from the start (streams may not seek cheaply)."""
    while count > 0:
        block = f.read(min(count, 1 << 20))
        if not block:
            raise EOFError("stream ends inside its header")
        count -= len(block)


def to_uint8(block: np.ndarray, where: str) -> np.ndarray:
    """Pixel rows of any supported dtype -> uint8 (see the module rules)."""
    if block.dtype == np.uint8:
        return block
    if block.dtype.kind in "iu":
        if block.size and (block.min() < 0 or block.max() > 255):
            raise SourceError(f"{where} holds integer pixels outside 0..255; store uint8 pixels")
        return block.astype(np.uint8)
    if block.dtype.kind == "f":
        if block.size and not (np.isfinite(block).all() and block.min() >= 0 and block.max() <= 1):
            raise SourceError(f"{where} holds float pixels outside [0, 1]; "
                              "store uint8 0..255 or floats in [0, 1]")
        return np.round(block.astype(np.float32) * 255.0).astype(np.uint8)
    raise SourceError(f"{where} has pixel dtype {block.dtype}; use uint8 (or floats in [0, 1])")


def to_nchw(block: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHW":
        return block[:, None]
    if layout == "NHWC":
        return block.transpose(0, 3, 1, 2)
    return block


class ArrayPart(Part):
    """Records that are rows of a pixel array with a known layout."""

    def __init__(self, rows: RowReader, layout: str, labels: np.ndarray,
                 channels: int, side: int):
        if layout not in LAYOUTS:
            raise ValueError(layout)
        self.rows = rows
        self.layout = layout
        self.labels = labels
        self.channels = channels
        self.side = side

    def read(self, ids: np.ndarray, chunk: int, bad: BadImages
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if ids.size == 0:
            return
        last = int(ids[-1])
        for start, block in self.rows.chunks(chunk):
            lo, hi = np.searchsorted(ids, [start, start + len(block)])
            if hi > lo:
                picked = ids[lo:hi]
                rows = block if hi - lo == len(block) else block[picked - start]   # view if all
                pixels = to_nchw(to_uint8(rows, self.rows.where), self.layout)
                pixels = np.ascontiguousarray(resize_images(to_channels(pixels, self.channels),
                                                            self.side))   # [n, C, S, S]
                if pixels.base is not None:   # a view of the read buffer or of held data:
                    pixels = pixels.copy()    # hand out arrays the caller may write to
                yield picked, pixels
            if start + len(block) > last:
                return
