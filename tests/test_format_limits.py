"""spec/format.md names every reader limit with a number, and the reader enforces exactly it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from d3fmt.errors import FormatError, LimitError
from d3fmt.format import constants
from d3fmt.format.encoding import raw_size
from d3fmt.format.header import parse_header

SPEC = (Path(__file__).parent.parent / "spec" / "format.md").read_text("utf-8")


@pytest.mark.parametrize("phrase,value", [
    ("`header_raw <= 16 MiB` (16 MiB = 16,777,216 bytes)", constants.MAX_HEADER_BYTES == 16_777_216),
    ("`header_raw <= max(1 MiB, 64 · header_stored)`",
     (constants.MAX_HEADER_RATIO_FLOOR, constants.MAX_HEADER_RATIO) == (2**20, 64)),
    ("**Nesting depth <= 64**", constants.MAX_JSON_DEPTH == 64),
    ("**At most 100,000 values**", constants.MAX_JSON_VALUES == 100_000),
    ("**Integers in [-2^63, 2^63 - 1]**", constants.MAX_JSON_INT == 2**63 - 1),
    ("every dimension `<= 2^30`", constants.MAX_SECTION_RAW_BYTES == 2**30),
    ("`raw_bytes <= 1 GiB` (2^30 bytes) per section, the sum of all `raw_bytes <= 4 GiB`\n(2^32), `ndim <= 8`",
     (constants.MAX_SECTION_RAW_BYTES, constants.MAX_TOTAL_RAW_BYTES, constants.MAX_NDIM) == (2**30, 2**32, 8)),
    ("a scale above `FLT_MAX / 128`", constants.MAX_INT8_SCALE == 3.4028234663852886e38 / 128),
    ("1..256 chars", constants.MAX_NAME_CHARS == 256),
    ("extra <= 4096", constants.MAX_HEADER_PADDING == 4096),
])
def test_spec_states_each_limit_the_reader_uses(phrase, value):
    assert phrase in SPEC
    assert value


def nested(levels: int) -> bytes:
    """A header object whose deepest value sits at ``levels`` (the object itself is level 1)."""
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def test_depth_limit_is_a_number_not_the_recursion_limit():
    old = sys.getrecursionlimit()
    try:
        for limit in (old, 100_000):
            sys.setrecursionlimit(limit)
            assert parse_header(nested(64)) == {"a": json.loads(b"[" * 63 + b"]" * 63)}
            with pytest.raises(LimitError, match="more than 64 levels"):
                parse_header(nested(65))
    finally:
        sys.setrecursionlimit(old)


def test_value_count_limit_is_exact():
    at_cap = b'{"a":[' + b",".join([b"0"] * (constants.MAX_JSON_VALUES - 2)) + b"]}"
    assert len(parse_header(at_cap)["a"]) == constants.MAX_JSON_VALUES - 2  # + the object + the list
    with pytest.raises(LimitError, match="100001 values"):
        parse_header(at_cap.replace(b"[", b"[0,", 1))
    assert parse_header(b'{"a":[[],{},[{}]]}')["a"] == [[], {}, [{}]]  # empty containers hold no values


@pytest.mark.parametrize("token,error", [
    (b"9223372036854775807", None), (b"-9223372036854775808", None),
    (b"9223372036854775808", LimitError), (b"-9223372036854775809", LimitError),
    (b"1e308", None), (b"1e400", FormatError), (b"1e999", FormatError), (b"-1e999", FormatError),
    (b"1e-400", None),  # underflows to 0.0: finite
])
def test_number_limits(token, error):
    raw = b'{"a":' + token + b"}"
    if error is None:
        parse_header(raw)
    else:
        with pytest.raises(error):
            parse_header(raw)


def test_every_dimension_is_bounded_even_in_an_empty_tensor():
    assert raw_size("float32", [0, 2**28]) == 0
    assert raw_size("int8", [3, 0]) == 12
    for shape in ([0, 2**30 + 1], [0, 2**28 + 1], [0, 2**62], [2**15, 2**15, 0, 2]):
        with pytest.raises(LimitError):
            raw_size("float32", shape)
