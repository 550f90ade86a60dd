"""The anchor level stream (spec section 10): round trips, an independent scalar decoder
written from the spec text, and streams a reader must reject."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from d3fmt.errors import ConfigError, FormatError, LimitError
from d3fmt.format.levelcode import LevelShape, decode_levels, default_lanes, encode_levels


def smooth_levels(n: int, c: int, h: int, w: int, levels: int, seed: int = 0) -> np.ndarray:
    """Images with structure (blobs on a background), like posterised photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, c, h, w))
    for i in range(n):
        for ch in range(c):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(3, h / 2))
            out[i, ch] = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1) + rng.normal(0, 0.05, (h, w))
    return np.clip(np.round(out * (levels - 1)), 0, levels - 1).astype(np.uint8)


@pytest.mark.parametrize("levels,shape,lanes", [
    (2, (7, 1, 6, 5), None), (4, (33, 1, 8, 8), 3), (8, (5, 3, 4, 6), 5), (16, (9, 2, 5, 5), 2), (4, (1, 1, 1, 1), 1),
])  # fmt: skip
def test_round_trip_is_exact(levels, shape, lanes):
    x = smooth_levels(*shape, levels)
    data, ls = encode_levels(x, levels, lanes)
    assert ls.lanes == (lanes or default_lanes(shape[0]))
    assert np.array_equal(decode_levels(data, ls), x)


def test_stream_beats_zstd_on_structured_levels():
    x = smooth_levels(64, 1, 16, 16, 4)
    data, _ = encode_levels(x, 4)
    assert len(data) < 0.8 * len(zstandard.ZstdCompressor(19).compress(x.tobytes()))


def spec_decode(data: bytes, n: int, c: int, h: int, w: int, levels: int, lanes: int) -> np.ndarray:
    """A scalar decoder written from spec/format.md section 10 alone."""
    t, low = 1 << 14, 1 << 16
    states = [int.from_bytes(data[4 * j:4 * j + 4], "little") for j in range(lanes)]
    words = [int.from_bytes(data[4 * lanes + 2 * k:4 * lanes + 2 * k + 2], "little")
             for k in range((len(data) - 4 * lanes) // 2)]
    ptr = 0
    ctxs = levels**4 if levels <= 8 else levels**2
    counts = [[1] * levels for _ in range(ctxs)]
    out = np.zeros((n, c, h, w), np.int64)

    def at(img, ch, r, q):
        return int(out[img, ch, r, q]) if 0 <= r < h and 0 <= q < w else 0

    for g in range(-(-n // lanes)):
        members = [i for i in range(g * lanes, min(n, (g + 1) * lanes))]
        for p in range(c * h * w):
            ch, rem = divmod(p, h * w)
            r, q = divmod(rem, w)
            updates = []
            for lane, img in enumerate(members):
                wv, nv = at(img, ch, r, q - 1), at(img, ch, r - 1, q)
                ctx = wv * levels + nv
                if levels <= 8:
                    ctx = (ctx * levels + at(img, ch, r - 1, q - 1)) * levels + at(img, ch, r - 1, q + 1)
                row = counts[ctx]
                f = [1 + cnt * (t - levels) // sum(row) for cnt in row]
                f[row.index(max(row))] += t - sum(f)
                cum = [sum(f[:s]) for s in range(levels)]
                x = states[lane]
                slot = x % t
                s = max(k for k in range(levels) if cum[k] <= slot)
                x = f[s] * (x >> 14) + slot - cum[s]
                if x < low:
                    x = (x << 16) | words[ptr]
                    ptr += 1
                states[lane] = x
                out[img, ch, r, q] = s
                updates.append((ctx, s))
            for ctx, s in updates:
                counts[ctx][s] += 2
    assert ptr == len(words) and all(x == low for x in states)
    return out.astype(np.uint8)


@pytest.mark.parametrize("levels,lanes", [(4, 2), (16, 3)])
def test_the_spec_text_decodes_the_reference_stream(levels, lanes):
    x = smooth_levels(5, 2, 4, 5, levels, seed=3)
    data, ls = encode_levels(x, levels, lanes)
    assert np.array_equal(spec_decode(data, *x.shape, levels, lanes), x)


def test_golden_stream_bytes():
    """Pinned bytes of a tiny stream: a change of the coder is a change of the format."""
    x = np.array([[[[0, 1, 3], [3, 2, 0]]], [[[1, 1, 1], [0, 0, 3]]], [[[2, 3, 0], [0, 1, 1]]]], np.uint8)
    data, ls = encode_levels(x, 4, 2)
    assert data.hex() == GOLDEN_HEX
    assert np.array_equal(decode_levels(data, ls), x)


GOLDEN_HEX = "1b80ad02c35c60088ac4"


def _stream():
    x = smooth_levels(12, 1, 6, 6, 4, seed=1)
    data, ls = encode_levels(x, 4, 3)
    return x, bytearray(data), ls


def test_every_single_byte_flip_in_the_states_is_caught():
    x, data, ls = _stream()
    for pos in range(4 * ls.lanes):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(FormatError):
            decode_levels(bytes(bad), ls)


@pytest.mark.parametrize("cut", [1, 2, 7])
def test_truncated_stream_is_rejected(cut):
    _, data, ls = _stream()
    with pytest.raises(FormatError):
        decode_levels(bytes(data[:-cut]), ls)


def test_trailing_words_are_rejected():
    _, data, ls = _stream()
    with pytest.raises(FormatError, match="does not end"):
        decode_levels(bytes(data) + b"\0\0", ls)


def test_a_stream_for_other_images_is_rejected():
    _, data, ls = _stream()
    other = LevelShape(ls.count - 1, ls.channels, ls.height, ls.width, ls.levels, ls.lanes)
    with pytest.raises(FormatError):
        decode_levels(bytes(data), other)


@pytest.mark.parametrize("shape,err", [
    (LevelShape(3, 1, 2, 2, 1, 1), FormatError),  # one level
    (LevelShape(3, 1, 2, 2, 17, 1), FormatError),  # too many levels
    (LevelShape(3, 1, 2, 2, 4, 4), FormatError),  # more lanes than images
    (LevelShape(3, 1, 2, 2, 4, 0), FormatError),
    (LevelShape(0, 1, 2, 2, 4, 1), FormatError),
    (LevelShape(4096, 3, 64, 64, 4, 1), LimitError),  # 50 M sequential steps
])  # fmt: skip
def test_shapes_a_reader_refuses_before_decoding(shape, err):
    with pytest.raises(err):
        decode_levels(b"\0" * 64, shape)


def test_encoder_refuses_levels_out_of_range_and_wrong_arrays():
    with pytest.raises(ConfigError, match="not below"):
        encode_levels(np.full((2, 1, 2, 2), 4, np.uint8), 4)
    with pytest.raises(ConfigError, match="uint8"):
        encode_levels(np.zeros((2, 2, 2), np.uint8), 4)
