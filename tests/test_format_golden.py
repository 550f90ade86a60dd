"""Golden bytes of a tiny container, and an independent spec-only reader of them.

tiny_raw.d3 (raw sections, uncompressed header) is fully determined by spec/format.md,
so the writer must reproduce it byte for byte. tiny_zstd.d3 depends on libzstd's
encoder, so for it we assert that it still decodes to the same tensors. Regenerate both
(after a deliberate format change only) with D3_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import zstandard

from d3fmt.format import D3Reader, encode_d3, read_d3
from d3fmt.format.example import example_container

GOLDEN = Path(__file__).parent / "golden"


def golden_container():
    """2 classes, 1x2x2 images, one subtask: one tensor in each encoding."""
    c = example_container(num_classes=2, image_shape=(1, 2, 2), z_dim=2, soft=True, seed=7)
    c.encodings.update({"s0.logvar": "float16", "s0.dec.fc.weight": "int8", "s0.soft": "float16"})
    c.tensors["s0.idx"] = np.array([[0, 255], [7, 9]], np.uint8)
    c.encodings["s0.idx"] = "uint8"
    c.tensors["s0.i16"] = np.array([-2, 300], np.int16)
    c.encodings["s0.i16"] = "int16"
    c.tensors["s0.i32"] = np.array([70000], np.int64)
    c.encodings["s0.i32"] = "int32"
    c.header["evals"].append({"model": "convnet3", "protocol": "d3-final", "test_set": "digits:test",
                              "accuracy": 0.5, "std": 0.0, "runs": 1, "epochs": 2, "date": "2025-01-01"})
    return c


def golden_zstd_sections_container():
    """The golden container plus tensors that zstd shrinks: their sections are stored as zstd frames."""
    c = golden_container()
    c.tensors["s0.zeros"] = np.zeros((16, 16), np.float32)
    c.tensors["s0.ramp"] = np.tile(np.arange(32, dtype=np.int16), 8)
    c.encodings["s0.ramp"] = "int16"
    c.tensors["s0.q"] = np.repeat(np.linspace(-1, 1, 8, dtype=np.float32), 32).reshape(8, 32)
    c.encodings["s0.q"] = "int8"
    return c


def _check_or_update(name: str, data: bytes) -> bytes:
    path = GOLDEN / name
    if os.environ.get("D3_UPDATE_GOLDEN") == "1":
        path.write_bytes(data)
    return path.read_bytes()


def test_raw_golden_bytes_are_reproduced_exactly():
    data = encode_d3(golden_container(), codec="raw", compress_header=False)
    golden = _check_or_update("tiny_raw.d3", data)
    assert data == golden, "the writer's bytes changed: a format change needs a version bump"


def test_zstd_golden_file_still_decodes_to_the_same_tensors():
    c = golden_container()
    _check_or_update("tiny_zstd.d3", encode_d3(golden_container()))
    back = read_d3(GOLDEN / "tiny_zstd.d3")
    raw = read_d3(GOLDEN / "tiny_raw.d3")
    assert back.encodings == raw.encodings == {n: c.encodings.get(n, "float32") for n in c.tensors}
    for name in c.tensors:
        np.testing.assert_array_equal(back.tensors[name], raw.tensors[name])
    assert back.header["evals"] == raw.header["evals"]
    assert D3Reader(GOLDEN / "tiny_zstd.d3").preamble.flags == 1


def test_zstd_sections_golden_file_decodes_and_holds_zstd_frames():
    """tiny_zstd_sections.d3: zstd sections (and header); libzstd may change its bytes, never their meaning."""
    c = golden_zstd_sections_container()
    _check_or_update("tiny_zstd_sections.d3", encode_d3(golden_zstd_sections_container()))
    reader = D3Reader(GOLDEN / "tiny_zstd_sections.d3")
    reader.verify(decoders=False)
    codecs = {s.name: s.codec for s in reader.sections}
    assert codecs["s0.zeros"] == codecs["s0.ramp"] == codecs["s0.q"] == "zstd" and "raw" in codecs.values()
    assert reader.preamble.flags == 1
    back = reader.load()
    for name in ("s0.zeros", "s0.ramp"):
        np.testing.assert_array_equal(back.tensors[name], c.tensors[name])
    np.testing.assert_allclose(back.tensors["s0.q"], c.tensors["s0.q"], atol=1 / 127)
    raw = read_d3(GOLDEN / "tiny_raw.d3")
    for name in raw.tensors:
        np.testing.assert_array_equal(back.tensors[name], raw.tensors[name])


def _independent_read(data: bytes) -> dict[str, np.ndarray]:
    """A reader written from spec/format.md alone (struct + json + hashlib + zstd)."""
    magic, major, minor, flags, hs, hr, hh = struct.unpack_from("<8sHHIQQ16s", data, 0)
    assert magic == b"\x89D3F\r\n\x1a\n" and major == 1
    hb = data[48:48 + hs]
    assert hashlib.blake2b(hb, digest_size=16).digest() == hh
    text = zstandard.ZstdDecompressor().decompress(hb) if flags & 1 else hb
    assert len(text) == hr
    header = json.loads(text)
    assert header["budget"]["bytes_used"] == len(data)
    out, pos = {}, None
    for s in header["sections"]:
        assert s["offset"] % 8 == 0 and (pos is None or s["offset"] == -(-pos // 8) * 8)
        assert set(data[(48 + hs if pos is None else pos):s["offset"]]) <= {0}
        stored = data[s["offset"]:s["offset"] + s["stored_bytes"]]
        assert hashlib.blake2b(stored, digest_size=16).hexdigest() == s["hash"]
        raw = zstandard.ZstdDecompressor().decompress(stored) if s["codec"] == "zstd" else stored
        assert len(raw) == s["raw_bytes"]
        shape = tuple(s["shape"])
        if s["dtype"] == "int8":
            scales = np.frombuffer(raw[:4 * shape[0]], "<f4").reshape((-1,) + (1,) * (len(shape) - 1))
            out[s["name"]] = np.frombuffer(raw[4 * shape[0]:], "i1").reshape(shape) * scales
        else:
            wire = {"float32": "<f4", "float16": "<f2", "uint8": "u1", "int16": "<i2", "int32": "<i4"}[s["dtype"]]
            out[s["name"]] = np.frombuffer(raw, wire).reshape(shape)
        pos = s["offset"] + s["stored_bytes"]
    assert pos == len(data)
    return out


def test_independent_spec_reader_agrees_with_the_library():
    for name in ("tiny_raw.d3", "tiny_zstd.d3", "tiny_zstd_sections.d3"):
        data = (GOLDEN / name).read_bytes()
        mine = _independent_read(data)
        lib = read_d3(GOLDEN / name).tensors
        assert set(mine) == set(lib)
        for key in lib:
            np.testing.assert_array_equal(mine[key].astype(lib[key].dtype), lib[key])


def test_golden_preamble_fields():
    data = (GOLDEN / "tiny_raw.d3").read_bytes()
    assert data[:8] == b"\x89D3F\r\n\x1a\n"
    assert data[8:12] == b"\x01\x00\x00\x00"  # major 1, minor 0, little-endian
    assert data[12:16] == b"\x00\x00\x00\x00"  # flags: header not compressed


def golden_anchors_container():
    """Format 1.2: 2 classes of 1x3x3 images, 2 and 1 anchors at 4 levels, no subtask."""
    from d3fmt.format.levelcode import encode_levels

    levels = np.array([[[[0, 1, 3], [3, 2, 0], [0, 0, 1]]], [[[1, 1, 1], [0, 0, 3], [2, 2, 2]]],
                       [[[2, 3, 0], [0, 1, 1], [3, 3, 3]]]], np.uint8)
    stream, shape = encode_levels(levels, 4, 2)
    c = example_container(num_classes=2, image_shape=(1, 3, 3), z_dim=2, seed=7)
    c.header["subtasks"] = []
    c.tensors = {"anchors.values": np.array([[0, 85, 170, 255]], np.uint8),
                 "anchors.stream": np.frombuffer(stream, np.uint8).copy()}
    c.encodings = {"anchors.values": "uint8", "anchors.stream": "uint8"}
    c.header["anchors"] = {"levels": 4, "lanes": shape.lanes, "counts": [2, 1], "values": "anchors.values",
                           "stream": "anchors.stream"}
    c.header["provenance"]["created"] = "2026-01-01T00:00:00Z"
    return c, levels


def test_anchors_golden_bytes_and_a_spec_only_decode():
    """tiny_anchors.d3 is fully determined by the spec: the writer reproduces it byte for
    byte, and the scalar decoder of tests/test_levelcode.py (written from section 10 alone)
    reads its pixels back."""
    from test_levelcode import spec_decode

    container, levels = golden_anchors_container()
    data = encode_d3(container, codec="raw", compress_header=False)
    golden = _check_or_update("tiny_anchors.d3", data)
    assert data == golden, "the writer's bytes changed: a format change needs a version bump"
    assert golden[8:12] == b"\x01\x00\x02\x00"  # major 1, minor 2
    sections = _independent_read(golden)
    header = json.loads(golden[48:48 + struct.unpack_from("<Q", golden, 16)[0]])
    a = header["anchors"]
    got = spec_decode(sections["anchors.stream"].tobytes(), 3, 1, 3, 3, a["levels"], a["lanes"])
    assert np.array_equal(got, levels)
    pixels = sections["anchors.values"][0][got]
    from d3fmt.loader.dataset import open_representation

    rep = open_representation(GOLDEN / "tiny_anchors.d3")
    held = rep.anchors.pixels.numpy()
    assert held.dtype == np.uint8 and np.array_equal(held, pixels)
