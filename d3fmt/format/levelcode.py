"""Context-coded image levels: lossless entropy coding of few-level images (format 1.2).

A D3 file may hold *anchors*: real images reduced to ``L`` grey levels (2..16) per
channel. Their level indices are stored with this codec, which is what makes an anchor
cheap: an adaptive context model (each pixel's level predicted from its already-coded
neighbours) drives an interleaved rANS coder. On 2-level-bit Fashion-MNIST images it
stores about 52 bytes per image where zstd-19 on the same levels needs 74.

The bitstream (``spec/format.md``, section 10) is fixed by these rules:

- **Symbols.** ``levels`` is uint8 ``[N, C, H, W]`` with values ``< L``. Image ``i`` is
  coded by lane ``i % M`` (``M`` = lanes) as its ``group`` ``i // M``; a lane codes its
  images one after another, each plane by plane (c), row by row, left to right. A *step*
  ``(g, p)`` is the p-th pixel of group g across all lanes that hold an image in group g.
- **Context.** The neighbours W (left), N (up), NW, NE inside the same plane, 0 outside
  the image. ``ctx = ((W·L + N)·L + NW)·L + NE`` when ``L <= 8``, else ``W·L + N``.
- **Model.** One table of counts ``[contexts, L]`` shared by all lanes, every count 1 at
  the start. A step's symbols are all coded with the table as it was before the step;
  after the step each lane's ``count[ctx, symbol]`` grows by ``INCREMENT``. Frequencies
  (precision ``PRECISION`` bits, ``T = 2^PRECISION``) of a row ``c`` with sum ``S``:
  ``f = 1 + floor(c · (T − L) / S)``, then the row's largest count (lowest index on a tie)
  takes ``T − sum(f)`` more, so every ``f >= 1`` and ``sum(f) = T``.
- **rANS.** 32-bit states in ``[2^16, 2^32)``, 16-bit words. Decoding a symbol of a lane:
  ``slot = x mod T``; s is the symbol with ``cum[s] <= slot < cum[s] + f[s]``;
  ``x = f[s]·(x >> PRECISION) + slot − cum[s]``; if ``x < 2^16`` the lane reads the next
  word: ``x = (x << 16) | word``. Within a step, the lanes that read take consecutive words
  in lane order.
- **Bytes.** ``M`` u32 initial states (little-endian), then the u16 words. A valid stream
  ends exactly at its last word and leaves every lane's state at ``2^16``; a reader rejects
  anything else (a corrupt stream cannot go unnoticed past the section hash either).

Numpy only; the per-step work is vectorised over lanes, so decoding costs
``C·H·W·ceil(N / M)`` small array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from d3fmt.errors import ConfigError, FormatError, LimitError
from d3fmt.format.constants import MAX_ANCHOR_STEPS

PRECISION = 14  # frequency precision in bits
TOTAL = 1 << PRECISION
RANS_LOW = 1 << 16  # the lower end of a normalised state
INCREMENT = 2  # count added per coded symbol (the start count is 1): a KT estimator
MIN_LEVELS, MAX_LEVELS = 2, 16
MAX_LANES = 4096
IMAGES_PER_LANE = 16  # the writer's choice: lanes = ceil(N / 16), capped


@dataclass(frozen=True)
class LevelShape:
    """What a reader must know to decode a stream: the array and the coder's lanes."""

    count: int  # N images
    channels: int
    height: int
    width: int
    levels: int  # L
    lanes: int  # M

    def validate(self) -> None:
        if not MIN_LEVELS <= self.levels <= MAX_LEVELS:
            raise FormatError(f"anchor levels must be {MIN_LEVELS}..{MAX_LEVELS}, got {self.levels}")
        if not 1 <= self.lanes <= MAX_LANES:
            raise FormatError(f"anchor lanes must be 1..{MAX_LANES}, got {self.lanes}")
        if min(self.count, self.channels, self.height, self.width) < 1:
            raise FormatError("anchor images must have a positive count and shape")
        if self.lanes > self.count:
            raise FormatError(f"{self.lanes} anchor lanes for {self.count} images; lanes must not exceed images")
        if self.steps > MAX_ANCHOR_STEPS:
            raise LimitError(f"the anchor stream needs {self.steps:,} decoding steps, over the reader's cap of "
                             f"{MAX_ANCHOR_STEPS:,}; write it with more lanes")

    @property
    def steps(self) -> int:
        return self.channels * self.height * self.width * -(-self.count // self.lanes)


def default_lanes(count: int) -> int:
    return max(1, min(MAX_LANES, -(-count // IMAGES_PER_LANE)))


def context_count(levels: int) -> int:
    return levels**4 if levels <= 8 else levels**2


def _contexts(img: np.ndarray, levels: int) -> np.ndarray:
    """Context ids of every pixel of planes ``img`` [..., H, W] (int32, same shape)."""
    h, w = img.shape[-2:]
    pad = np.zeros(img.shape[:-2] + (h + 1, w + 2), dtype=np.int32)  # ids < 4096
    pad[..., 1:, 1:-1] = img
    west, north = pad[..., 1:, :-2], pad[..., :-1, 1:-1]
    if levels > 8:
        return west * levels + north
    north_west, north_east = pad[..., :-1, :-2], pad[..., :-1, 2:]
    return ((west * levels + north) * levels + north_west) * levels + north_east


def _frequencies(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts [M, L] -> (f [M, L], cumulative start [M, L]), int64, each row summing to TOTAL."""
    levels = rows.shape[1]
    f = 1 + rows * (TOTAL - levels) // rows.sum(1, keepdims=True)
    top = rows.argmax(1)
    f[np.arange(len(rows)), top] += TOTAL - f.sum(1)
    return f, np.cumsum(f, axis=1) - f


def _schedule(shape: LevelShape) -> tuple[int, list[np.ndarray]]:
    """(groups, per group the images it codes, in lane order)."""
    groups = -(-shape.count // shape.lanes)
    return groups, [np.arange(g * shape.lanes, min(shape.count, (g + 1) * shape.lanes)) for g in range(groups)]


def encode_levels(levels: np.ndarray, num_levels: int, lanes: int | None = None) -> tuple[bytes, LevelShape]:
    """uint8 levels [N, C, H, W] (< num_levels) -> (stream bytes, the shape to decode them)."""
    arr = np.asarray(levels)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise ConfigError(f"anchor levels must be uint8 [N, C, H, W], got {arr.dtype} {list(arr.shape)}")
    n, c, h, w = arr.shape
    shape = LevelShape(n, c, h, w, int(num_levels), default_lanes(n) if lanes is None else int(lanes))
    shape.validate()
    if arr.size and int(arr.max()) >= num_levels:
        raise ConfigError(f"anchor levels hold {int(arr.max())}, not below {num_levels} levels")
    flat = arr.reshape(n, c * h * w)  # [N, P] symbols, uint8
    ctx = _contexts(arr, num_levels).reshape(n, c * h * w).astype(np.uint16)  # [N, P], ids < 4096
    counts = np.ones((context_count(num_levels), num_levels), dtype=np.int64)
    groups, members = _schedule(shape)
    freq = np.empty((n, c * h * w), dtype=np.uint16)  # f and cum are below TOTAL = 2^14: 4 bytes a symbol
    start = np.empty((n, c * h * w), dtype=np.uint16)
    for g in range(groups):  # forward: the model each symbol is coded with
        ids = members[g]
        for p in range(c * h * w):
            cx, sym = ctx[ids, p].astype(np.int64), flat[ids, p].astype(np.int64)
            f, cum = _frequencies(counts[cx])
            pick = np.arange(len(ids))
            freq[ids, p], start[ids, p] = f[pick, sym], cum[pick, sym]
            np.add.at(counts, (cx, sym), INCREMENT)
    state = np.full(shape.lanes, RANS_LOW, dtype=np.int64)
    emitted: list[np.ndarray] = []  # words in emission order (the reverse of reading order)
    limit_unit = (RANS_LOW >> PRECISION) << 16
    for g in reversed(range(groups)):
        ids = members[g]
        lanes = np.arange(len(ids))
        for p in reversed(range(c * h * w)):
            f, cum = freq[ids, p].astype(np.int64), start[ids, p].astype(np.int64)
            x = state[lanes]
            emit = x >= limit_unit * f
            emitted.append((x[emit] & 0xFFFF)[::-1])  # lanes descending
            x = np.where(emit, x >> 16, x)
            state[lanes] = ((x // f) << PRECISION) + x % f + cum
    words = np.concatenate([e[::-1] for e in reversed(emitted)] + [np.zeros(0, np.int64)])  # reading order
    out = state.astype("<u4").tobytes() + words.astype("<u2").tobytes()
    return out, shape


def decode_levels(data: bytes, shape: LevelShape) -> np.ndarray:
    """Stream bytes -> uint8 levels [N, C, H, W]; FormatError for any stream that is not
    exactly what :func:`encode_levels` writes for ``shape``."""
    shape.validate()
    head = 4 * shape.lanes
    if len(data) < head or (len(data) - head) % 2:
        raise FormatError(f"anchor stream of {len(data)} bytes cannot hold {shape.lanes} lane states and 16-bit words")
    state = np.frombuffer(data, dtype="<u4", count=shape.lanes).astype(np.int64)
    words = np.frombuffer(data, dtype="<u2", offset=head).astype(np.int64)
    if np.any(state < RANS_LOW):
        raise FormatError("anchor stream has a lane state below 2^16; the stream is corrupt")
    n, c, h, w, levels = shape.count, shape.channels, shape.height, shape.width, shape.levels
    out = np.zeros((n, c, h + 1, w + 2), dtype=np.uint8)  # padded planes, decoded in place
    counts = np.ones((context_count(levels), levels), dtype=np.int64)
    groups, members = _schedule(shape)
    ptr = 0
    for g in range(groups):
        ids = members[g]
        lanes = np.arange(len(ids))
        for p in range(c * h * w):
            ch, rem = divmod(p, h * w)
            row, col = divmod(rem, w)
            cx = _context_at(out, ids, ch, row, col, levels)
            f, cum = _frequencies(counts[cx])
            x = state[lanes]
            slot = x & (TOTAL - 1)
            sym = (slot[:, None] >= cum + f).sum(1)  # the s with cum[s] <= slot < cum[s] + f[s]
            x = f[lanes, sym] * (x >> PRECISION) + slot - cum[lanes, sym]
            low = x < RANS_LOW
            need = int(low.sum())
            if ptr + need > len(words):
                raise FormatError("anchor stream ends early; the stream is truncated or corrupt")
            x[low] = (x[low] << 16) | words[ptr : ptr + need]
            ptr += need
            state[lanes] = x
            out[ids, ch, row + 1, col + 1] = sym
            np.add.at(counts, (cx, sym), INCREMENT)
    if ptr != len(words) or np.any(state != RANS_LOW):
        raise FormatError("anchor stream does not end where its images do; the stream is corrupt")
    return np.ascontiguousarray(out[:, :, 1:, 1:-1])


def _context_at(out: np.ndarray, ids: np.ndarray, ch: int, row: int, col: int, levels: int) -> np.ndarray:
    """Context ids of pixel (row, col) of plane ch for images ``ids`` of padded ``out``."""
    r, k = row + 1, col + 1
    west, north = out[ids, ch, r, k - 1].astype(np.int64), out[ids, ch, r - 1, k].astype(np.int64)
    if levels > 8:
        return west * levels + north
    north_west, north_east = out[ids, ch, r - 1, k - 1].astype(np.int64), out[ids, ch, r - 1, k + 1].astype(np.int64)
    return ((west * levels + north) * levels + north_west) * levels + north_east


def anchor_levels(entry: dict, image_shape, get_tensor) -> np.ndarray:
    """The level indices [N, C, H, W] of a header's ``anchors`` entry (already schema-checked)."""
    shape = LevelShape(sum(entry["counts"]), *(int(v) for v in image_shape), entry["levels"], entry["lanes"])
    return decode_levels(np.asarray(get_tensor(entry["stream"]), dtype=np.uint8).tobytes(), shape)


def anchor_pixels(entry: dict, image_shape, get_tensor) -> np.ndarray:
    """The anchors as uint8 pixels [N, C, H, W]: each level replaced by its channel's value."""
    levels = anchor_levels(entry, image_shape, get_tensor)
    values = np.asarray(get_tensor(entry["values"]), dtype=np.uint8)  # [C, L]
    return np.stack([values[ch][levels[:, ch]] for ch in range(levels.shape[1])], axis=1)
