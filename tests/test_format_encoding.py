"""Tensor encodings: exact round trips, bounded quantisation error, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from d3fmt.errors import ConfigError, FormatError, LimitError
from d3fmt.format import ENCODINGS, decode_tensor, encode_tensor, quantize_int8, raw_size

RNG = np.random.default_rng(0)
SHAPES = [(), (0,), (5,), (3, 4), (2, 3, 2, 2), (4, 0, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_round_trip_is_exact(shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    raw = encode_tensor(x, "float32")
    assert len(raw) == raw_size("float32", shape) == 4 * x.size
    y = decode_tensor(raw, "float32", shape)
    assert y.dtype == np.float32 and y.shape == shape and y.flags.writeable
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("shape", SHAPES)
def test_float16_round_trip_equals_numpy_half_rounding(shape):
    x = (RNG.standard_normal(shape) * 100).astype(np.float32)
    y = decode_tensor(encode_tensor(x, "float16"), "float16", shape)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    # a second trip is lossless: decoded values are exactly representable
    np.testing.assert_array_equal(decode_tensor(encode_tensor(y, "float16"), "float16", shape), y)


@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) >= 1])
def test_int8_round_trip_error_is_within_half_a_step_per_channel(shape):
    x = RNG.standard_normal(shape).astype(np.float32) * np.arange(1, shape[0] + 1).reshape((-1,) + (1,) * (len(shape) - 1))
    raw = encode_tensor(x, "int8")
    n = int(np.prod(shape))
    assert len(raw) == raw_size("int8", shape) == 4 * shape[0] + n
    y = decode_tensor(raw, "int8", shape)
    assert y.dtype == np.float32 and y.shape == shape
    scales, q = quantize_int8(x)
    step = scales.reshape((-1,) + (1,) * (len(shape) - 1))
    assert np.all(np.abs(y - x) <= step / 2 + 1e-6)
    assert q.dtype == np.int8 and np.abs(q).max(initial=0) <= 127


def test_int8_layout_is_scales_then_values():
    x = np.array([[1.0, -0.5], [0.0, 0.0], [2.54, 1.27]], np.float32)  # [3, 2]
    raw = encode_tensor(x, "int8")
    scales = np.frombuffer(raw[:12], "<f4")
    values = np.frombuffer(raw[12:], "i1").reshape(3, 2)
    np.testing.assert_allclose(scales, [1 / 127, 0.0, 2.54 / 127], rtol=1e-6)
    np.testing.assert_array_equal(values, [[127, -64], [0, 0], [127, 64]])  # -63.5 rounds to even
    np.testing.assert_array_equal(decode_tensor(raw, "int8", (3, 2))[1], [0.0, 0.0])


def test_int8_decoder_accepts_minus_128():
    raw = np.float32(0.5).tobytes() + np.array([-128, 127], "i1").tobytes()
    np.testing.assert_array_equal(decode_tensor(raw, "int8", (1, 2)), [[-64.0, 63.5]])


@pytest.mark.parametrize("enc,dtype,lo,hi", [("uint8", np.uint8, 0, 255), ("int16", np.int16, -32768, 32767),
                                             ("int32", np.int32, -2**31, 2**31 - 1)])
def test_integer_encodings_are_exact_and_keep_their_dtype(enc, dtype, lo, hi):
    x = np.array([[lo, 0, hi], [1, 2, 3]], dtype=np.int64)
    y = decode_tensor(encode_tensor(x, enc), enc, x.shape)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, x)
    with pytest.raises(ConfigError, match="outside"):
        encode_tensor(np.array([hi + 1]), enc)


def test_bytes_are_little_endian_whatever_the_input_byte_order():
    x = np.array([1.0, 2.0], dtype=">f4")
    assert encode_tensor(x, "float32") == np.array([1.0, 2.0], "<f4").tobytes()
    assert encode_tensor(np.array([258], ">i4"), "int16") == b"\x02\x01"


@pytest.mark.parametrize("enc", sorted(ENCODINGS))
def test_every_encoding_round_trips_values_it_can_hold(enc):
    """Every entry of the table, also one added later: raw_size bytes, the decoded dtype
    it declares, and small whole numbers back exactly (int8: one channel per value)."""
    x = np.array([0, 1, 2, 3, 100], np.float32 if ENCODINGS[enc].is_float else np.int64)
    raw = encode_tensor(x, enc)
    assert len(raw) == raw_size(enc, x.shape)
    y = decode_tensor(raw, enc, x.shape)
    assert y.dtype == np.dtype(ENCODINGS[enc].decoded) and y.shape == x.shape
    np.testing.assert_allclose(y, x, rtol=1e-6)


@pytest.mark.parametrize("bad,enc,match", [
    (np.array([np.nan], np.float32), "float32", "NaN"),
    (np.array([np.inf], np.float32), "int8", "NaN or infinite"),
    (np.array([1e6], np.float32), "float16", "float16 range"),
    (np.array([1.5]), "int32", "non-integer"),
    (np.array(["a"]), "float32", "dtype"),
    (np.zeros(()), "int8", "at least one dimension"),
])
def test_writer_refuses_values_an_encoding_cannot_hold(bad, enc, match):
    with pytest.raises((ConfigError, FormatError), match=match):
        encode_tensor(bad, enc)


def test_unknown_encoding_is_refused_on_both_sides():
    with pytest.raises(ConfigError, match="unknown tensor encoding"):
        encode_tensor(np.zeros(2), "bfloat16")
    with pytest.raises(FormatError, match="unknown tensor encoding"):
        decode_tensor(b"", "bfloat16", (0,))


def test_raw_size_caps_and_overflow():
    with pytest.raises(LimitError, match="dimensions"):
        raw_size("float32", (1,) * 9)
    with pytest.raises(LimitError, match="per-section cap"):
        raw_size("float32", (2**62, 2**62))  # would wrap a 64-bit product
    assert raw_size("float32", (2**28,)) == 2**30  # exactly at the cap is fine
    with pytest.raises(FormatError, match="non-negative integer"):
        raw_size("float32", (2, -1))
    with pytest.raises(FormatError, match="non-negative integer"):
        raw_size("float32", (2.0,))


def test_decode_refuses_a_length_that_does_not_match_the_shape():
    with pytest.raises(FormatError, match="needs 8"):
        decode_tensor(b"\0" * 12, "float32", (2,))


@pytest.mark.parametrize("encoding", ["int8", "float16", "float32", "int16"])
@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_reading_a_section_peaks_within_twice_its_decoded_size(tmp_path, encoding, codec):
    """Decode in place or in chunks: int8 used to peak at 9x its raw bytes (2.25x decoded)."""
    import tracemalloc

    from d3fmt.format import D3Reader, write_d3
    from d3fmt.format.example import example_container

    c = example_container()
    rng = np.random.default_rng(0)
    values = rng.integers(-3, 4, size=(256, 4096)) if encoding == "int16" else rng.standard_normal((256, 4096))
    c.tensors["big"] = values.astype(np.float32 if encoding != "int16" else np.int16)  # [256, 4096]
    c.encodings["big"] = encoding
    path = tmp_path / "big.d3"
    write_d3(path, c, codec=codec)
    reader = D3Reader(path)
    tracemalloc.start()
    try:
        out = reader.tensor("big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (256, 4096) and out.flags.writeable
    assert peak <= 2 * out.nbytes + 2**20, (peak, out.nbytes)
