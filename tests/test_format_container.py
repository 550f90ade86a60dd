"""Writer and reader of the .d3 container: round trips, determinism, atomicity, laziness."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import d3fmt.format.container as container_mod
from d3fmt.errors import ConfigError, D3IOError, FormatError, IntegrityError
from d3fmt.format import (
    D3Reader,
    append_eval,
    encode_d3,
    read_d3,
    write_d3,
)
from d3fmt.format.constants import FORMAT_MINOR, PREAMBLE
from d3fmt.format.example import example_container

REPO = Path(__file__).resolve().parents[1]
EVAL = {"model": "convnet3", "protocol": "d3-final", "test_set": "fashion-mnist:test", "accuracy": 0.7125,
        "std": 0.004, "runs": 3, "epochs": 300, "date": "2025-01-02"}


@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
@pytest.mark.parametrize("codec,compress_header", [("zstd", True), ("raw", False), ("zstd", False)])
def test_round_trip_every_float_encoding(tmp_path, encoding, codec, compress_header):
    c = example_container(num_classes=5, num_subtasks=2, latents_per_class=2, soft=True, encoding=encoding)
    path = tmp_path / "a.d3"
    size = write_d3(path, c, codec=codec, compress_header=compress_header)
    assert size == path.stat().st_size == c.header["budget"]["bytes_used"]
    back = read_d3(path)
    assert back.encodings == {n: encoding for n in c.tensors}
    assert back.header == c.header  # bytes_used and equivalents were filled in place
    for name, x in c.tensors.items():
        y = back.tensors[name]
        assert y.dtype == np.float32 and y.shape == x.shape
        tol = {"float32": 0, "float16": 1e-3 * np.abs(x).max(), "int8": np.abs(x).max() / 127}[encoding]
        assert np.abs(y - x).max() <= tol + 1e-7, name


def test_integer_and_extra_sections_round_trip(tmp_path):
    c = example_container()
    extra = {"extra.u8": (np.arange(10, dtype=np.uint8), "uint8"), "extra.i16": (np.array([-3, 4]), "int16"),
             "extra.i32": (np.arange(12).reshape(3, 4), "int32"), "extra.default": (np.arange(3), None)}
    for name, (arr, enc) in extra.items():
        c.tensors[name] = arr
        if enc:
            c.encodings[name] = enc
    write_d3(tmp_path / "a.d3", c)
    back = read_d3(tmp_path / "a.d3")
    assert back.encodings["extra.default"] == "int32"
    for name, (arr, _) in extra.items():
        np.testing.assert_array_equal(back.tensors[name], arr)


def test_identical_content_gives_identical_bytes(tmp_path):
    a = encode_d3(example_container(num_subtasks=2, soft=True, encoding="int8"))
    c = example_container(num_subtasks=2, soft=True, encoding="int8")
    c.tensors = dict(reversed(list(c.tensors.items())))  # insertion order must not matter
    c.header = dict(reversed(list(c.header.items())))
    assert encode_d3(c) == a
    assert write_d3(tmp_path / "x.d3", example_container(num_subtasks=2, soft=True, encoding="int8")) == len(a)
    assert (tmp_path / "x.d3").read_bytes() == a


def test_bytes_used_fixed_point_across_digit_boundaries():
    """Sizes around 10**k change the header's digit count: bytes_used must still be exact."""
    for width in range(1, 400, 7):
        c = example_container(image_shape=(1, width, 1), encoding="float32")
        data = encode_d3(c, codec="raw", compress_header=False)
        assert c.header["budget"]["bytes_used"] == len(data)
        k, chw = 3, width
        assert c.header["budget"]["ipc_equivalent_fp32"] == round(len(data) / (k * chw * 4), 6)


def test_all_raw_size_bounds_the_zstd_size():
    c = example_container(num_classes=4, image_shape=(1, 16, 16), soft=True)
    c.tensors["s0.dec.fc.weight"][:] = 0.25  # compressible
    assert len(encode_d3(c, codec="zstd")) < len(encode_d3(c, codec="raw", compress_header=False))
    with pytest.raises(ConfigError, match="unknown codec"):
        encode_d3(c, codec="lz4")


def test_reader_exposes_sections_header_and_size(tmp_path):
    c = example_container(num_subtasks=2, soft=True)
    write_d3(tmp_path / "a.d3", c)
    with D3Reader(tmp_path / "a.d3") as r:
        assert r.file_bytes == (tmp_path / "a.d3").stat().st_size
        assert "sections" not in r.header and r.header["num_classes"] == 3
        assert [s.name for s in r.sections][:2] == ["s0.dec.fc.bias", "s0.dec.fc.weight"]
        mu = r.section("s1.mu")
        assert mu.shape == (1, 2) and mu.dtype == "float32" and mu.offset % 8 == 0 and len(mu.hash) == 32
        np.testing.assert_array_equal(r.tensor("s1.mu"), c.tensors["s1.mu"])
        with pytest.raises(ConfigError, match="no section named"):
            r.tensor("s9.mu")
        with pytest.raises(ConfigError, match="out of range"):
            r.subtask_tensors(2)


def test_subtask_tensors_reads_one_subtask_only(tmp_path):
    """Corrupt every byte of subtask 1: subtask 0 still loads, subtask 1 fails its hash."""
    c = example_container(num_classes=4, num_subtasks=2, soft=True)
    path = tmp_path / "a.d3"
    write_d3(path, c, codec="raw")
    r = D3Reader(path)
    data = bytearray(path.read_bytes())
    for s in r.sections:
        if s.name.startswith("s1."):
            data[s.offset:s.offset + s.stored_bytes] = b"\x55" * s.stored_bytes
    path.write_bytes(bytes(data))
    got = r.subtask_tensors(0)
    assert set(got) == {"s0.mu", "s0.logvar", "s0.soft", "s0.dec.fc.weight", "s0.dec.fc.bias"}
    np.testing.assert_array_equal(got["s0.soft"], c.tensors["s0.soft"])
    with pytest.raises(IntegrityError, match="s1"):
        r.subtask_tensors(1)
    with pytest.raises(IntegrityError, match="hash mismatch"):
        r.verify()


def test_reader_pickles_and_holds_no_file_handle(tmp_path):
    write_d3(tmp_path / "a.d3", example_container())
    r = D3Reader(tmp_path / "a.d3")
    r2 = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(r2.tensor("s0.mu"), r.tensor("s0.mu"))
    if os.path.isdir("/proc/self/fd"):
        target = str((tmp_path / "a.d3").resolve())
        assert not any(os.path.realpath(f"/proc/self/fd/{fd}") == target for fd in os.listdir("/proc/self/fd"))


def test_reader_notices_a_file_that_changed_size(tmp_path):
    path = tmp_path / "a.d3"
    write_d3(path, example_container())
    r = D3Reader(path)
    write_d3(path, example_container(num_classes=5))
    with pytest.raises(FormatError, match="changed size"):
        r.tensor("s0.mu")


def test_newer_minor_version_and_unknown_keys_are_accepted(tmp_path):
    c = example_container(family="small")
    c.header["future_key"] = {"anything": [1, 2]}
    c.header["subtasks"][0]["future"] = True
    data = bytearray(encode_d3(c, compress_header=False))
    PREAMBLE.pack_into(data, 0, *(list(PREAMBLE.unpack_from(data))[:2] + [FORMAT_MINOR + 7]
                                  + list(PREAMBLE.unpack_from(data))[3:]))
    (tmp_path / "a.d3").write_bytes(bytes(data))
    r = D3Reader(tmp_path / "a.d3")
    assert r.preamble.minor == FORMAT_MINOR + 7 and r.header["future_key"] == {"anything": [1, 2]}
    r.verify()


def test_partial_container_may_cover_a_subset_of_classes(tmp_path):
    c = example_container(num_classes=4, num_subtasks=2)
    for name in [n for n in c.tensors if n.startswith("s1.")]:
        del c.tensors[name], c.encodings[name]
    del c.header["subtasks"][1]
    with pytest.raises(FormatError, match="partial"):
        encode_d3(c)
    c.header["partial"] = True
    write_d3(tmp_path / "p.d3", c)
    assert read_d3(tmp_path / "p.d3").header["partial"] is True


def test_writer_refuses_an_invalid_container_and_writes_nothing(tmp_path):
    c = example_container()
    c.header["labels"] = "soft"  # no soft tensors
    with pytest.raises(FormatError, match='labels must be "soft"'):
        write_d3(tmp_path / "bad.d3", c)
    c = example_container()
    del c.tensors["s0.mu"]
    with pytest.raises(ConfigError, match="encodings name tensors"):
        write_d3(tmp_path / "bad.d3", c)
    del c.encodings["s0.mu"]
    with pytest.raises(FormatError, match="missing section 's0.mu'"):
        write_d3(tmp_path / "bad.d3", c)
    c = example_container()
    c.header["provenance"]["settings"]["bad"] = float("nan")
    with pytest.raises(FormatError, match="not plain JSON"):
        write_d3(tmp_path / "bad.d3", c)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_when_the_process_dies_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "a.d3"
    write_d3(path, example_container())
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(container_mod.os, "replace", crash)
    with pytest.raises(D3IOError, match="No space left"):
        write_d3(path, example_container(num_classes=6))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.d3"]  # the temp file is gone too


def test_atomic_replace_streams_from_a_writer_and_keeps_the_old_file_on_failure(tmp_path):
    """A writer that takes a file name (safetensors' save_file) writes the temp file; the target
    changes only when it finishes; any failure leaves the old bytes and no temp file."""
    path = tmp_path / "c.bin"
    path.write_bytes(b"old")
    container_mod.atomic_replace(path, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert path.read_bytes() == b"new"

    def half_then_fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        container_mod.atomic_replace(path, half_then_fail)
    with pytest.raises(D3IOError, match="No space left"):
        container_mod.atomic_replace(path, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["c.bin"]


def test_write_to_a_missing_directory_is_a_clean_error(tmp_path):
    with pytest.raises(D3IOError, match="does not exist"):
        write_d3(tmp_path / "no" / "a.d3", example_container())


def test_append_eval_keeps_sections_byte_for_byte(tmp_path):
    path = tmp_path / "a.d3"
    write_d3(path, example_container(num_subtasks=3, soft=True, encoding="int8", family="small"))
    before = D3Reader(path)
    stored = {s.name: before.stored_bytes(s.name) for s in before.sections}
    size = append_eval(path, EVAL)
    size2 = append_eval(path, {**EVAL, "model": "resnet18", "extra": "kept"})
    after = D3Reader(path)
    assert size2 == after.file_bytes == after.header["budget"]["bytes_used"] > size
    assert [e["model"] for e in after.header["evals"]] == ["convnet3", "resnet18"]
    assert after.header["evals"][1]["extra"] == "kept"
    assert {s.name: after.stored_bytes(s.name) for s in after.sections} == stored
    after.verify()
    with pytest.raises(FormatError, match="evaluation record field accuracy"):
        append_eval(path, {**EVAL, "accuracy": 71.25})
    with pytest.raises(FormatError, match="'runs' is a required property"):
        append_eval(path, {k: v for k, v in EVAL.items() if k != "runs"})


def test_schema_copies_are_identical():
    spec = (REPO / "spec" / "header.schema.json").read_bytes()
    pkg = (REPO / "d3fmt" / "format" / "schema" / "header.schema.json").read_bytes()
    assert spec == pkg
    json.loads(spec)


def test_sections_without_an_encoding_are_stored_in_the_default_one(tmp_path):
    c = example_container(num_classes=3, image_shape=(1, 4, 4))
    c.tensors["s0.counts"] = np.array([1, 2, 3], np.int64)
    c.encodings = {}  # no encoding named for any section
    write_d3(tmp_path / "d.d3", c)
    reader = D3Reader(tmp_path / "d.d3")
    dtypes = {s.name: s.dtype for s in reader.sections}
    assert dtypes.pop("s0.counts") == "int32" and set(dtypes.values()) == {"float32"}
    assert reader.tensor("s0.counts").tolist() == [1, 2, 3]


def test_writer_refuses_a_header_beyond_the_cap(monkeypatch):
    import d3fmt.format.container as cm
    from d3fmt.errors import LimitError

    monkeypatch.setattr(cm, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(LimitError, match="header is"):
        encode_d3(example_container())


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    """Depth, integer range: write_d3 and append_eval fail with one FormatError line, write nothing."""
    from d3fmt.errors import LimitError

    deep = None
    for _ in range(5000):
        deep = [deep]
    for edit, exc in ((lambda c: c.header.update(future=deep), FormatError),
                      (lambda c: c.header["provenance"]["settings"].update(x=deep[0][0]), FormatError),
                      (lambda c: c.header.update(future=2**64), LimitError)):
        c = example_container()
        edit(c)
        with pytest.raises(exc):
            write_d3(tmp_path / "w.d3", c)
    assert not (tmp_path / "w.d3").exists()
    path = tmp_path / "a.d3"
    write_d3(path, example_container())
    before = path.read_bytes()
    with pytest.raises(FormatError, match="nested too deeply"):
        append_eval(path, {**EVAL, "extra": deep})
    assert path.read_bytes() == before
