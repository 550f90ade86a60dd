"""The hostile corpus: one crafted file per MUST-reject rule of spec/format.md section 7.

Each case builds a file that breaks exactly one rule (everything else, hashes included,
is made consistent by `craft`), then asserts the exception class AND a message fragment,
so a reader that rejects for the wrong reason fails the test.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import zstandard
from craft_d3 import craft  # tools/ (tests/conftest.py puts it on the path)

from d3fmt.errors import FormatError, IntegrityError, LimitError, UnsupportedVersionError
from d3fmt.format import D3Reader, encode_d3
from d3fmt.format.constants import MAGIC, PREAMBLE_BYTES
from d3fmt.format.decoders import decoder_param_shapes
from d3fmt.format.example import example_container


def base(encoding: str = "float32", num_classes: int = 4, num_subtasks: int = 2, soft: bool = True,
         family: str = "linear"):
    """(header with sections, {name: stored bytes}) of a valid raw, uncompressed file."""
    data = encode_d3(example_container(num_classes=num_classes, num_subtasks=num_subtasks, soft=soft,
                                       encoding=encoding, family=family), codec="raw", compress_header=False)
    stored_len = struct.unpack_from("<Q", data, 16)[0]
    header = json.loads(data[PREAMBLE_BYTES:PREAMBLE_BYTES + stored_len])
    stored = {s["name"]: data[s["offset"]:s["offset"] + s["stored_bytes"]] for s in header["sections"]}
    return header, stored


def frame(payload: bytes, *, content_size: int | None, window_log: int | None = None) -> bytes:
    """A hand-made zstd frame with one raw block (to forge sizes libzstd would never write)."""
    if window_log is None:  # single segment: window = content size
        fhd = 0x80 | 0x20
        return (b"\x28\xb5\x2f\xfd" + bytes([fhd]) + struct.pack("<I", content_size)
                + struct.pack("<I", (len(payload) << 3) | 1)[:3] + payload)
    if content_size is None:
        fhd, fcs = 0x00, b""
    else:
        fhd, fcs = 0x80, struct.pack("<I", content_size)
    return (b"\x28\xb5\x2f\xfd" + bytes([fhd, (window_log - 10) << 3]) + fcs
            + struct.pack("<I", (len(payload) << 3) | 1)[:3] + payload)


def open_all(path):
    """Everything a reader can be asked to do with a file."""
    reader = D3Reader(path)
    reader.verify(decoders=False)  # the corpus' stand-in "linear" decoders are not d3fmt's
    return reader.load()


def with_(edit, header_json=None, **kw):
    """A case: edit(header, stored) in place on a fresh base, then craft with kw;
    header_json(text) -> text edits the canonical JSON bytes (for tokens json.dumps never
    writes, such as 1e999 or 4.0) before the header is placed and hashed."""
    def build():
        header, stored = base()
        edit(header, stored)
        return craft(header, stored, header_json=header_json, **kw)
    return build


def sec(header, name):
    return next(s for s in header["sections"] if s["name"] == name)


def nothing(h, s):
    return None


def set_first_offset(h, s, value):
    h["sections"][0]["offset"] = value


def replace_section(name, stored_bytes, **fields):
    def edit(h, s):
        s[name] = stored_bytes
        sec(h, name).update(fields)
    return edit


def deep_text(levels: int):
    """A header_json edit: the string "DEEP" becomes arrays nested ``levels`` deep (json.dumps
    and copy.deepcopy would recurse, so the hostile value is written as text)."""
    return lambda text: text.replace(b'"DEEP"', b"[" * levels + b"]" * levels)


W = np.arange(6, dtype="<f4").tobytes()  # 24 bytes: s0.mu of the base is [2, 2] -> 16; see cases

CASES = {
    # --- preamble
    "01_truncated_preamble": (lambda: craft(*base())[:30], FormatError, "truncated"),
    "01_truncated_magic": (lambda: MAGIC[:5], FormatError, "truncated"),
    "02_wrong_magic": (with_(nothing, magic=b"PK\x03\x04\0\0\0\0"), FormatError, "wrong magic"),
    "02_empty_file": (lambda: b"", FormatError, "truncated"),
    "03_major_version": (with_(nothing, major=2), UnsupportedVersionError, "version 2.0"),
    "04_unknown_flags": (with_(nothing, flags=0x10), FormatError, "unknown flag bits 0x10"),
    "05_header_stored_cap": (with_(nothing, stored_len=16 * 2**20 + 1), LimitError, "header stored length"),
    "05_header_ratio": (with_(nothing, compress=True, header_json=lambda t: t + b" " * (2 << 20)),
                        LimitError, "compressed header of"),
    "05_header_raw_cap": (with_(nothing, compress=True, raw_len=2**40), LimitError, "header raw length"),
    "06_header_beyond_file": (with_(nothing, stored_len=10**6), FormatError, "the header needs"),
    "06_header_zero_length": (with_(nothing, stored_len=0), FormatError, "header length is zero"),
    "07_raw_len_mismatch": (with_(nothing, raw_len=5), FormatError, "raw length different"),
    # --- header bytes
    "08_header_hash": (with_(nothing, header_hash=bytes(16)), IntegrityError, "header hash mismatch"),
    "09_header_not_zstd": (with_(nothing, flags=1), FormatError, "not a valid zstd frame"),
    "09_header_frame_too_big": (
        with_(nothing, flags=1, header_bytes=None, compress=True, raw_len=100), FormatError, "would decompress to"),
    "09_header_frame_no_size": (
        with_(nothing, flags=1, header_bytes=b"{}", stored_len=None), FormatError, "not a valid zstd frame"),
    "10_bad_utf8": (with_(nothing, header_bytes=b'{"a":"\xff\xfe"}', layout=False), FormatError, "not valid UTF-8"),
    "11_bad_json": (with_(nothing, header_bytes=b'{"a":', layout=False), FormatError, "not valid JSON"),
    "11_nan": (with_(nothing, header_bytes=b'{"a":NaN}', layout=False), FormatError, "NaN"),
    "11_infinity": (with_(nothing, header_bytes=b'{"a":-Infinity}', layout=False), FormatError, "Infinity"),
    "11_duplicate_key": (with_(nothing, header_bytes=b'{"a":1,"a":2}', layout=False), FormatError, "repeats the key 'a'"),
    "11_not_object": (with_(nothing, header_bytes=b"[1,2]", layout=False), FormatError, "not an object"),
    "11_deep_nesting": (with_(nothing, header_bytes=b"[" * 200000, layout=False), FormatError, "nested too deeply"),
    "11_huge_integer": (with_(nothing, header_bytes=b'{"a":' + b"9" * 5000 + b"}", layout=False),
                        LimitError, "outside [-2**63, 2**63-1]"),
    "11_bom": (with_(nothing, header_bytes=b"\xef\xbb\xbf{}", layout=False), FormatError, "byte-order mark"),
    "11_depth_65": (with_(nothing, header_bytes=b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", layout=False),
                    LimitError, "more than 64 levels"),
    "11_deep_unknown_key": (with_(lambda h, s: h.update(future="DEEP"), header_json=deep_text(500)),
                            LimitError, "nested too deeply"),
    "11_deep_settings": (with_(lambda h, s: h["provenance"]["settings"].update(x="DEEP"), header_json=deep_text(500)),
                         LimitError, "nested too deeply"),
    "11_deep_choices": (with_(lambda h, s: h["budget"].update(choices={"x": "DEEP"}), header_json=deep_text(500)),
                        LimitError, "nested too deeply"),
    "11_overflow_1e400": (with_(lambda h, s: None, header_json=lambda t: t.replace(b'"std":[0.25]', b'"std":[1e400]')),
                          FormatError, "1e400 overflows to infinity"),
    "11_overflow_1e999": (with_(lambda h, s: h.update(train={"lr": 0.5}),
                                header_json=lambda t: t.replace(b'"lr":0.5', b'"lr":1e999')),
                          FormatError, "1e999 overflows to infinity"),
    "11_int_2_63": (with_(lambda h, s: h["sections"][0].update(stored_bytes=2**63), layout=False),
                    LimitError, "9223372036854775808 is outside"),
    "11_too_many_values": (with_(lambda h, s: h.update(future=[0] * 100_000)), LimitError, "values, more than the cap"),
    # --- schema
    "12_float_token_for_int": (with_(nothing, header_json=lambda t: t.replace(b'"num_classes":4', b'"num_classes":4.0')),
                               FormatError, "field num_classes"),
    "12_exponent_for_int": (with_(nothing, header_json=lambda t: t.replace(b'"samples_per_class":10',
                                                                        b'"samples_per_class":1e1')),
                            FormatError, "field samples_per_class"),
    "12_missing_key": (with_(lambda h, s: h.pop("budget")), FormatError, "'budget' is a required property"),
    "12_float_for_int": (with_(lambda h, s: h.update(num_classes=4.0)), FormatError, "field num_classes"),
    "12_bool_for_int": (with_(lambda h, s: h.update(samples_per_class=True)), FormatError, "field samples_per_class"),
    "12_accuracy_range": (
        with_(lambda h, s: h["evals"].append({"model": "m", "protocol": "p", "test_set": "t", "accuracy": 71.2,
                                             "std": 0.1, "runs": 1, "epochs": 1, "date": "d"})),
        FormatError, "field evals/0/accuracy"),
    "12_bad_hash_text": (with_(lambda h, s: h["sections"][0].update(hash="XYZ"), hashes=False),
                         FormatError, "field sections/0/hash"),
    # --- sections
    "13_duplicate_name": (with_(lambda h, s: h["sections"][1].update(name=h["sections"][0]["name"]), hashes=False),
                          FormatError, "appears twice"),
    "13_long_name": (with_(lambda h, s: s.update({"n" * 257: s[h["sections"][0]["name"]]})
                           or h["sections"][0].update(name="n" * 257)),
                     FormatError, "field sections/0/name"),
    "13_bad_name": (with_(lambda h, s: s.update({"a b": s[h["sections"][0]["name"]]})
                          or h["sections"][0].update(name="a b")),
                    FormatError, "field sections/0/name"),
    "14_unknown_dtype": (with_(lambda h, s: h["sections"][0].update(dtype="bfloat16")),
                         FormatError, "unknown tensor encoding 'bfloat16'"),
    "14_unknown_codec": (with_(lambda h, s: h["sections"][0].update(codec="lz4")), FormatError, "unknown codec 'lz4'"),
    "15_ndim": (with_(lambda h, s: h["sections"][0].update(shape=[1] * 9)), LimitError, "9 dimensions"),
    "15_shape_overflow": (with_(lambda h, s: h["sections"][0].update(shape=[2**40, 2**40], raw_bytes=0, codec="zstd")),
                          LimitError, "per-section cap"),
    "15_total_cap": (
        with_(lambda h, s: [x.update(shape=[2**28], raw_bytes=2**30, codec="zstd") for x in h["sections"][:5]]),
        LimitError, "together declare"),
    "15_empty_huge_dim": (with_(lambda h, s: h["sections"][0].update(shape=[0, 2**62], raw_bytes=0, codec="zstd")),
                          LimitError, "dimension above the per-section cap"),
    "15_empty_huge_product": (
        with_(lambda h, s: h["sections"][0].update(shape=[0, 2**30, 2**30], raw_bytes=0, codec="zstd")),
        LimitError, "counting zero dimensions as 1"),
    "15_eight_big_dims": (with_(lambda h, s: h["sections"][0].update(shape=[2**30] * 8, raw_bytes=0, codec="zstd")),
                          LimitError, "per-section cap"),
    "16_huge_latents_per_class": (with_(lambda h, s: h["subtasks"][0].update(latents_per_class=2**62)),
                                  FormatError, "expected [9223372036854775808, 2]"),
    "16_raw_bytes_mismatch": (with_(lambda h, s: h["sections"][0].update(raw_bytes=h["sections"][0]["raw_bytes"] + 4)),
                              FormatError, "raw bytes but"),
    "16_int8_scalar": (with_(lambda h, s: h["sections"][0].update(dtype="int8", shape=[], raw_bytes=1)),
                       FormatError, "at least one dimension"),
    "17_raw_codec_sizes": (with_(replace_section("s0.mu", b"\0" * 8)), FormatError, "stored raw but"),
    "18_no_sections": (with_(lambda h, s: h.update(sections=[])), FormatError, "no sections"),
    # --- layout
    "19_unaligned": (with_(lambda h, s: h["sections"][1].update(offset=h["sections"][1]["offset"] + 4), layout=False),
                     FormatError, "not a multiple of 8"),
    "20_overlaps_header": (with_(lambda h, s: set_first_offset(h, s, 48), layout=False),
                           FormatError, "overlaps the header"),
    "20_too_much_padding": (with_(nothing, extra_pad=8192), FormatError, "bytes of padding allowed"),
    "21_overlap": (with_(lambda h, s: h["sections"][1].update(offset=h["sections"][0]["offset"]), layout=False),
                   FormatError, "overlaps the previous section"),
    "21_gap": (with_(lambda h, s: [x.update(offset=x["offset"] + 8) for x in h["sections"][1:]], layout=False),
               FormatError, "leaves a gap"),
    "21_out_of_order": (with_(lambda h, s: h["sections"].reverse(), layout=False), FormatError, "overlaps"),
    "22_truncated_section": (with_(nothing, truncate=-4), FormatError, "file is truncated: section"),
    "22_section_beyond_file": (
        with_(nothing, after_layout=lambda h: h["sections"][-1].update(codec="zstd", stored_bytes=10**6)),
        FormatError, "ends at byte"),
    "23_trailing_bytes": (with_(nothing, tail=b"\0" * 8), FormatError, "8 trailing bytes"),
    "24_header_padding": (with_(nothing, extra_pad=8, pad_byte=b"\x01"), FormatError, "non-zero"),
    # --- meaning
    "25_class_names": (with_(lambda h, s: h["class_names"].pop()), FormatError, "class_names"),
    "25_normalization": (with_(lambda h, s: h["normalization"]["mean"].append(0.1)), FormatError, "per channel"),
    "26_duplicate_subtask_id": (with_(lambda h, s: h["subtasks"][1].update(id=0)), FormatError, "subtask id 0 appears twice"),
    "26_class_out_of_range": (with_(lambda h, s: h["subtasks"][0]["classes"].__setitem__(1, 7)),
                              FormatError, "names class 7"),
    "26_classes_overlap": (with_(lambda h, s: h["subtasks"][0]["classes"].__setitem__(1, 1)),
                           FormatError, "disjoint"),
    "26_classes_uncovered": (with_(lambda h, s: h.update(num_classes=5, class_names=list("abcde"), labels="hard")
                                   or [t["tensors"].pop("soft") for t in h["subtasks"]]),
                             FormatError, "partial"),
    "27_missing_section": (with_(lambda h, s: h["subtasks"][0]["tensors"].update(mu="nope")),
                           FormatError, "missing section 'nope'"),
    "27_missing_decoder_section": (with_(lambda h, s: h["subtasks"][0]["tensors"]["decoder"].update(x="nope")),
                                   FormatError, "missing section 'nope'"),
    "27_wrong_shape": (with_(lambda h, s: sec(h, "s0.mu").update(shape=[4, 1])), FormatError, "expected [2, 2]"),
    "27_integer_prior": (with_(lambda h, s: sec(h, "s0.mu").update(dtype="int32")), FormatError, "float encoding"),
    "28_soft_without_tensor": (with_(lambda h, s: h["subtasks"][1]["tensors"].pop("soft")),
                               FormatError, 'labels must be "soft"'),
    "29_bytes_used": (with_(lambda h, s: h["budget"].update(bytes_used=1), used=False), FormatError, "bytes_used is 1"),
    # --- section data
    "30_section_hash": (with_(lambda h, s: s.update({"s0.mu": b"\xff" * 16}), hashes=False),
                        IntegrityError, "section 's0.mu' hash mismatch"),
    "31_zstd_size_lie": (with_(replace_section("s0.mu", frame(bytes(32), content_size=32), codec="zstd")),
                         FormatError, "would decompress to 32 bytes but 16"),
    "31_zstd_no_size": (with_(replace_section("s0.mu", frame(bytes(16), content_size=None, window_log=10), codec="zstd")),
                        FormatError, "does not declare its content size"),
    "31_zstd_window": (with_(replace_section("s0.mu", frame(bytes(16), content_size=16, window_log=30), codec="zstd")),
                       LimitError, "zstd window"),
    "31_zstd_block_lie": (with_(replace_section("s0.mu", frame(bytes(32), content_size=16, window_log=10), codec="zstd")),
                          FormatError, "s0.mu"),
    "31_zstd_trailing": (with_(replace_section("s0.mu", zstandard.ZstdCompressor().compress(bytes(16)) + b"xx",
                                               codec="zstd")), FormatError, "stray bytes"),
    "31_zstd_truncated": (with_(replace_section("s0.mu", zstandard.ZstdCompressor().compress(W[:16])[:-2],
                                                codec="zstd")), FormatError, "s0.mu"),
    "32_int8_negative_scale": (
        with_(replace_section("s0.dec.fc.bias", struct.pack("<16f", *([-1.0] * 16)) + bytes(16),
                              dtype="int8", raw_bytes=80)), FormatError, "scale"),
    "32_int8_huge_scale": (
        with_(replace_section("s0.dec.fc.bias", struct.pack("<16f", *([3.4e38] * 16)) + bytes(16),
                              dtype="int8", raw_bytes=80)), FormatError, "decode to infinity"),
    "33_nan_values": (with_(replace_section("s0.mu", struct.pack("<4f", 0.0, float("nan"), 1.0, 2.0))),
                      FormatError, "NaN or infinite values"),
    "33_inf_float16": (with_(replace_section("s0.dec.fc.bias", struct.pack("<16e", *([float("inf")] * 16)),
                                             dtype="float16", raw_bytes=32)), FormatError, "NaN or infinite values"),
}


def deep(levels: int, leaf=None):
    """A JSON value nested ``levels`` arrays deep (built without recursion)."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_is_rejected_with_its_specific_error(case, tmp_path):
    build, exc_class, fragment = CASES[case]
    path = tmp_path / f"{case}.d3"
    path.write_bytes(build())
    with pytest.raises(exc_class) as info:
        open_all(path)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message and len(message) < 300


def test_craft_without_edits_gives_a_valid_file(tmp_path):
    """The crafting helper itself is faithful: an unedited base reads back as the container it came from."""
    original = example_container(num_classes=4, num_subtasks=2, soft=True)
    for compress in (False, True):
        path = tmp_path / f"ok{compress}.d3"
        path.write_bytes(craft(*base(), compress=compress))
        loaded = open_all(path)
        assert loaded.tensors.keys() == original.tensors.keys()
        assert all(np.array_equal(loaded.tensors[k], original.tensors[k]) for k in original.tensors)
        assert {k: v for k, v in loaded.header.items() if k != "budget"} == \
            {k: v for k, v in original.header.items() if k != "budget"}


def test_every_spec_rule_has_a_hostile_case():
    rules = {int(name[:2]) for name in CASES} | {int(name[:2]) for name in DECODER_CASES}
    assert rules == set(range(1, 35))


def test_padding_between_sections_is_checked_by_verify(tmp_path):
    """float16 [2, 2] priors are 8 bytes, [3...] decoder rows leave 4-byte gaps: poison one."""
    header, stored = base(encoding="float16", num_classes=3, num_subtasks=1, soft=False)
    data = bytearray(craft(header, stored))
    info = json.loads(data[PREAMBLE_BYTES:PREAMBLE_BYTES + struct.unpack_from("<Q", data, 16)[0]])
    gaps = [(a["offset"] + a["stored_bytes"], b["offset"]) for a, b in zip(info["sections"], info["sections"][1:])]
    start, end = next((a, b) for a, b in gaps if b > a)
    data[start] = 7
    path = tmp_path / "pad.d3"
    path.write_bytes(bytes(data))
    reader = D3Reader(path)  # the header and every hash are fine
    reader.load()
    with pytest.raises(FormatError, match="padding before section"):
        reader.verify()


def decoder_case(edit):
    """A file whose format is sound but whose (real, "small") decoder d3fmt cannot build."""
    def build():
        header, stored = base(family="small")
        edit(header["subtasks"][0]["decoder"])
        return craft(header, stored)
    return build


DECODER_CASES = {  # rule 34: checked by verify() (and D3Dataset), not by load()
    "34_decoder_missing_width": (decoder_case(lambda d: d.pop("width")), "missing keys ['width']"),
    "34_decoder_unknown_family": (decoder_case(lambda d: d.update(family="linear")), "family 'linear' is unknown"),
    "34_decoder_image_mismatch": (decoder_case(lambda d: d.update(image_size=8)), "does not match z_dim / image_shape"),
    "34_decoder_wrong_width": (decoder_case(lambda d: d.update(width=16)), "config needs"),
    "34_decoder_bad_value": (decoder_case(lambda d: d.update(width=10**18)), "out of range"),
}


@pytest.mark.parametrize("case", sorted(DECODER_CASES))
def test_verify_rejects_a_decoder_d3fmt_cannot_build(case, tmp_path):
    build, fragment = DECODER_CASES[case]
    path = tmp_path / f"{case}.d3"
    path.write_bytes(build())
    reader = D3Reader(path)
    reader.load()  # the format is sound
    reader.verify(decoders=False)
    with pytest.raises(FormatError) as info:
        reader.verify()
    message = str(info.value)
    assert fragment in message and message.startswith("subtask 0") and "\n" not in message, message


def test_a_small_decoder_file_passes_verify(tmp_path):
    path = tmp_path / "ok.d3"
    path.write_bytes(craft(*base(family="small")))
    reader = D3Reader(path)
    reader.verify()
    entry = reader.header["subtasks"][0]
    shapes = {p: tuple(reader.tensor(name).shape) for p, name in entry["tensors"]["decoder"].items()}
    assert shapes == decoder_param_shapes(entry["decoder"])  # what verify checked without torch


@pytest.mark.parametrize("case", sorted(c for c in CASES if int(c[:2]) >= 30))
def test_verify_rejects_what_load_rejects(case, tmp_path):
    """Section data rules: a file that opens but does not load never passes verify."""
    build, exc_class, _ = CASES[case]
    path = tmp_path / f"{case}.d3"
    path.write_bytes(build())
    with pytest.raises(exc_class):
        D3Reader(path).verify(decoders=False)


def test_nesting_limit_is_exact(tmp_path):
    """64 levels (the top-level object is one) read fine, anywhere; 65 do not."""
    for levels, ok in ((62, True), (63, False)):  # header -> "future" list (2) + 62 more
        header, stored = base()
        header["future"] = [deep(levels, 1)]
        path = tmp_path / f"n{levels}.d3"
        path.write_bytes(craft(header, stored))
        if ok:
            reader = D3Reader(path)
            open_all(path)
            assert reader.load().header["future"] == [deep(levels, 1)]
        else:
            with pytest.raises(LimitError, match="nested too deeply"):
                D3Reader(path)
