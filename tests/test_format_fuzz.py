"""Property-based fuzzing of the reader: any mutation of a valid file either reads fine
or raises a D3Error - never another exception, a hang or unbounded memory.

Raw byte mutations mostly hit a hash; "resealed" mutations recompute every hash and
bytes_used after editing the header or a section, so they reach the parser, the schema,
the layout and meaning checks, the zstd bounds and the decoders behind the hashes.
"""

from __future__ import annotations

import copy
import tracemalloc
from itertools import islice
from pathlib import Path

import pytest
from craft_d3 import craft  # tools/: the file crafter the fuzz campaign uses too
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_format_hostile import base  # the hostile corpus' base file

from d3fmt.errors import D3Error
from d3fmt.format import D3Reader, encode_d3
from d3fmt.format.example import example_container

PEAK_LIMIT = 32 * 2**20  # the inputs are ~3 KB; the caps alone must keep memory far below this
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID = {
    "zstd": encode_d3(example_container(num_classes=4, num_subtasks=2, soft=True, encoding="int8", family="small")),
    "raw": encode_d3(example_container(num_classes=4, num_subtasks=2, soft=True, family="small"), codec="raw", compress_header=False),
    "f16": encode_d3(example_container(num_classes=3, latents_per_class=2, encoding="float16", family="small")),
    "anchors": (Path(__file__).parent / "golden" / "tiny_anchors.d3").read_bytes(),  # format 1.2: a level stream
}


def read_everything(path) -> str:
    """Open, verify and load; return 'ok' or the D3Error class name, with a memory bound."""
    tracemalloc.start()
    try:
        reader = D3Reader(path)
        reader.verify()
        reader.load()
        outcome = "ok"
    except D3Error as exc:
        message = str(exc)
        assert message and "\n" not in message
        outcome = type(exc).__name__
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"reader peaked at {peak} bytes"
    return outcome


@st.composite
def byte_mutations(draw):
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "preamble"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:  # the 48-byte preamble is where lengths and versions live
            at = draw(st.integers(0, min(47, len(data) - 1)))
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@FUZZ
@given(data=byte_mutations())
def test_byte_mutations_read_or_raise_d3error(tmp_path, data):
    path = tmp_path / "m.d3"
    path.write_bytes(data)
    read_everything(path)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=8)


def _paths(node, prefix=()):
    """Every path to a value inside a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


BASE = base(encoding="int8")
HEADER_PATHS = [p for p in _paths(BASE[0]) if p]


@st.composite
def header_edits(draw):
    header, stored = copy.deepcopy(BASE[0]), dict(BASE[1])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(HEADER_PATHS))
        parent = header
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                old = parent[path[-1]]
                if isinstance(old, int) and not isinstance(old, bool) and draw(st.booleans()):
                    new = old + draw(st.sampled_from([-8, -1, 1, 8, 2**32, 2**62]))
                else:
                    new = draw(JSON_VALUES)
                parent[path[-1]] = new
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
    layout = draw(st.booleans())
    return header, stored, layout


@FUZZ
@given(edit=header_edits(), compress=st.booleans())
def test_resealed_header_edits_read_or_raise_d3error(tmp_path, edit, compress):
    header, stored, layout = edit
    data = craft(header, stored, layout=layout, compress=compress)
    path = tmp_path / "h.d3"
    path.write_bytes(data)
    read_everything(path)


@FUZZ
@given(
    name=st.sampled_from(sorted(BASE[1])),
    payload=st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, n: __import__("zstandard").ZstdCompressor(level=1).compress(b)[:n],
                  st.binary(max_size=64), st.integers(0, 80)),
    ),
    codec=st.sampled_from(["raw", "zstd"]),
    fix_raw=st.booleans(),
)
def test_resealed_section_payloads_read_or_raise_d3error(tmp_path, name, payload, codec, fix_raw):
    header, stored = copy.deepcopy(BASE[0]), dict(BASE[1])
    stored[name] = payload
    entry = next(s for s in header["sections"] if s["name"] == name)
    entry["codec"] = codec
    if fix_raw and codec == "raw":
        entry["raw_bytes"] = len(payload)
    path = tmp_path / "s.d3"
    path.write_bytes(craft(header, stored))
    read_everything(path)


@pytest.mark.parametrize("name", sorted(VALID))
def test_unmutated_inputs_read_fine(tmp_path, name):
    path = tmp_path / "v.d3"
    path.write_bytes(VALID[name])
    assert read_everything(path) == "ok"


def jsonschema_verdict(header) -> str:
    """The cross-check: jsonschema itself on the shipped schema ("ok" or "header field <path>")."""
    import jsonschema

    from d3fmt.format.header import header_schema

    base = jsonschema.Draft202012Validator
    # JSON integers only: 3.0 is not a valid shape dimension, and true is not 1.
    checker = base.TYPE_CHECKER.redefine("integer", lambda c, v: isinstance(v, int) and not isinstance(v, bool))
    try:
        errors = islice(jsonschema.validators.extend(base, type_checker=checker)(header_schema()).iter_errors(header), 20)
        error = jsonschema.exceptions.best_match(errors)
    except RecursionError:
        return "too deep"
    return "ok" if error is None else "header field " + "/".join(str(p) for p in error.absolute_path)


@FUZZ
@given(edit=header_edits())
def test_fast_schema_walker_agrees_with_jsonschema(edit):
    """validate_schema's own walker (linear, ~1 us a value) accepts exactly what jsonschema accepts."""
    from d3fmt.errors import FormatError
    from d3fmt.format.header import validate_schema

    header = edit[0]
    try:
        validate_schema(header)
        verdict = "ok"
    except FormatError as exc:
        verdict = str(exc).split(":")[0]  # "header field <path>"
    assert (verdict == "ok") == (jsonschema_verdict(header) == "ok"), verdict


def test_the_walker_implements_every_keyword_of_the_schema():
    from d3fmt.format.header import KEYWORDS, header_schema

    found, stack = set(), [header_schema()]
    while stack:  # schema objects only: the values of enum, const, required... are data
        node = stack.pop()
        found |= set(node)
        for key in ("properties", "$defs"):
            stack.extend(node.get(key, {}).values())
        stack.extend(node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict))
    assert "pattern" in found and found <= KEYWORDS, found - KEYWORDS
