"""The JSON header: strict parsing, schema validation and the cross-field rules.

The header is the only structured part of a .d3 file, so it carries all the meaning:
image shape, classes, subtasks and which sections hold their tensors, the byte budget,
provenance and evaluation records. This module turns header bytes into a dict and
refuses anything a reader cannot trust (spec/format.md, "Header" and "Reader MUST
reject"); it never touches section bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from d3fmt.errors import FormatError, LimitError
from d3fmt.format.constants import (
    CODECS,
    MAX_ANCHOR_PIXELS,
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_JSON_VALUES,
    MAX_NAME_CHARS,
    MAX_TOTAL_RAW_BYTES,
)
from d3fmt.format.encoding import FLOAT_ENCODINGS, get_encoding, raw_size
from d3fmt.format.levelcode import LevelShape

_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_HASH = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class SectionInfo:
    """Where one tensor lives in the file and how to decode it (one entry of "sections")."""

    name: str
    dtype: str  # the tensor encoding, a key of encoding.ENCODINGS
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the stored bytes
    stored_bytes: int
    raw_bytes: int
    codec: str  # "raw" | "zstd"
    hash: str  # BLAKE2b-128 of the stored bytes, hex

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


# --------------------------------------------------------------------------- bytes <-> dict


def dump_header(header: dict) -> bytes:
    """Canonical header bytes: compact, sorted keys, UTF-8, no NaN (same dict, same bytes).

    The bytes are parsed back, so a writer never writes what a reader refuses (JSON
    depth, value count, integer range)."""
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = text.encode("utf-8")
    except RecursionError:
        raise FormatError("header is nested too deeply to write; keep it under 64 levels") from None
    except (TypeError, ValueError) as exc:  # also UnicodeEncodeError (lone surrogates)
        msg = " ".join(str(exc).split())[:120]
        raise FormatError(f"header is not plain JSON ({msg}); use str/int/float/bool/list/dict values") from None
    parse_header(raw)
    return raw


def _reject_constant(name: str):
    raise FormatError(f"header JSON contains {name}; only finite numbers are allowed")


def _unique_keys(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(f"header JSON repeats the key {dup[:60]!r}; each key may appear once")
    return d


def _bounded_int(token: str) -> int:
    value = int(token) if len(token) <= 20 else MAX_JSON_INT + 1  # 2**63 has 19 digits
    if not -MAX_JSON_INT - 1 <= value <= MAX_JSON_INT:
        shown = token if len(token) <= 24 else f"{token[:12]}...({len(token)} digits)"
        raise LimitError(f"header JSON integer {shown} is outside [-2**63, 2**63-1]; the file is corrupt")
    return value


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        shown = token if len(token) <= 24 else token[:21] + "..."
        raise FormatError(f"header JSON number {shown} overflows to infinity; only finite numbers are allowed")
    return value


# A JSON string (no structure inside); what is left of the text is brackets, commas,
# colons, numbers, literals and whitespace.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_DEPTH_CHUNK = 1 << 16


def check_json_size(raw: bytes) -> None:
    """LimitError if the JSON text nests deeper than MAX_JSON_DEPTH or holds more than
    MAX_JSON_VALUES values: linear in its length, no recursion, before any parsing."""
    bare = _JSON_STRING.sub(b'""', raw).translate(None, b" \t\r\n")
    codes = np.frombuffer(bare, np.uint8)
    depth = 0
    for start in range(0, len(codes), _DEPTH_CHUNK):
        part = codes[start:start + _DEPTH_CHUNK]
        step = ((part == 0x5B) | (part == 0x7B)).view(np.int8) - ((part == 0x5D) | (part == 0x7D)).view(np.int8)
        run = np.cumsum(step, dtype=np.int32) + depth
        if run.size and run.max() > MAX_JSON_DEPTH:
            raise LimitError(f"header JSON is nested too deeply: more than {MAX_JSON_DEPTH} levels (the cap)")
        depth = int(run[-1]) if run.size else depth
    opens = bare.count(b"[") + bare.count(b"{")
    values = 1 + bare.count(b",") + opens - bare.count(b"[]") - bare.count(b"{}")
    if values > MAX_JSON_VALUES:
        raise LimitError(f"header JSON holds {values} values, more than the cap of {MAX_JSON_VALUES}")


def parse_header(raw: bytes) -> dict:
    """Header dict from its raw bytes: strict UTF-8, strict JSON, an object at the top."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise FormatError("header starts with a UTF-8 byte-order mark; write the JSON without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"header is not valid UTF-8 (byte {exc.start}); the file is corrupt") from None
    check_json_size(raw)
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys,
                         parse_int=_bounded_int, parse_float=_finite_float)
    except RecursionError:  # pragma: no cover - check_json_size bounds the depth first
        raise FormatError("header JSON is nested too deeply; the file is corrupt or hostile") from None
    except FormatError:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() of absurdly long digit strings
        raise FormatError(f"header is not valid JSON ({str(exc)[:120]}); the file is corrupt") from None
    if not isinstance(obj, dict):
        raise FormatError(f"header JSON is a {type(obj).__name__}, not an object; the file is corrupt")
    return obj


# --------------------------------------------------------------------------- schema


@lru_cache(maxsize=1)
def header_schema() -> dict:
    """The JSON Schema shipped with the package (identical to spec/header.schema.json)."""
    text = resources.files("d3fmt.format").joinpath("schema/header.schema.json").read_text("utf-8")
    return json.loads(text)


_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _short(value) -> str:
    """repr() for a message: short, and safe for integers too long for str()."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__} of {len(value)} entries>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keyword_error(value, key: str, arg) -> str | None:
    """The message for one assertion keyword that ``value`` breaks, or None (type checked already)."""
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "type":
        kinds = [arg] if isinstance(arg, str) else arg
        return None if any(_TYPES[k](value) for k in kinds) else f"{_short(value)} is not of type {arg!r}"
    if key == "enum":
        return None if any(value == v and type(value) is type(v) for v in arg) else f"{_short(value)} is not one of {arg!r}"
    if key == "const":
        return None if value == arg and type(value) is type(arg) else f"{_short(value)} should be {arg!r}"
    if key == "required":
        if isinstance(value, dict):
            missing = next((k for k in arg if k not in value), None)
            return None if missing is None else f"{missing!r} is a required property"
        return None
    limits = {"minimum": (lambda v: v < arg, "less than the minimum of"),
              "maximum": (lambda v: v > arg, "greater than the maximum of"),
              "exclusiveMinimum": (lambda v: v <= arg, "less than or equal to the minimum of"),
              "exclusiveMaximum": (lambda v: v >= arg, "greater than or equal to the maximum of")}
    if key in limits:
        broken, words = limits[key]
        return f"{_short(value)} is {words} {arg}" if num and broken(value) else None
    sizes = {"minItems": (list, lambda n: n < arg, "is too short"), "maxItems": (list, lambda n: n > arg, "is too long"),
             "minLength": (str, lambda n: n < arg, "is too short"), "maxLength": (str, lambda n: n > arg, "is too long"),
             "minProperties": (dict, lambda n: n < arg, "has too few properties"),
             "maxProperties": (dict, lambda n: n > arg, "has too many properties")}
    if key in sizes:
        kind, broken, words = sizes[key]
        return f"{_short(value)} {words}" if isinstance(value, kind) and broken(len(value)) else None
    if key == "pattern":
        return None if not isinstance(value, str) or re.search(arg, value) else f"{_short(value)} does not match {arg!r}"
    raise KeyError(key)


KEYWORDS = _ANNOTATIONS | {"type", "properties", "items", "additionalProperties", "enum", "const", "required",
                           "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
                           "minLength", "maxLength", "minProperties", "maxProperties", "pattern", "$ref"}  # what the walker below implements


def _first_violation(instance, schema: dict) -> tuple[list, str] | None:
    """(path, message) of the first place, in document order, where ``instance`` breaks
    ``schema``; None if it is valid. Iterative and linear in the size of the instance:
    jsonschema needs 10-20 us per value, this about one (the tests check that the two
    agree). A schema keyword it does not implement is a bug of this module (KEYWORDS)."""
    root = header_schema()
    stack = [(instance, schema, [])]
    while stack:
        value, sub, path = stack.pop()
        while "$ref" in sub:
            sub = {**root["$defs"][sub["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        kind = sub.get("type")
        if kind is not None and not (_TYPES[kind](value) if isinstance(kind, str) else
                                     any(_TYPES[k](value) for k in kind)):
            return path, f"{_short(value)} is not of type {kind!r}"
        if len(sub) == 1 and kind is not None:
            continue  # the common leaf: {"type": ...}
        children = []
        for key, arg in sub.items():
            if key in _ANNOTATIONS or key == "type":
                continue
            if key == "properties":
                if isinstance(value, dict):
                    children += [(value[k], s, path + [k]) for k, s in arg.items() if k in value]
            elif key == "items":
                if isinstance(value, list):
                    children += [(v, arg, path + [i]) for i, v in enumerate(value)]
            elif key == "additionalProperties":
                if isinstance(value, dict):
                    known = sub.get("properties", {})
                    children += [(v, arg if isinstance(arg, dict) else {"not": {}}, path + [k])
                                 for k, v in value.items() if k not in known]
            else:
                try:
                    message = _keyword_error(value, key, arg)
                except KeyError:
                    raise NotImplementedError(f"schema keyword {key!r} is not implemented by validate_schema; "
                                              "add it to d3fmt.format.header._keyword_error") from None
                if message:
                    return path, message
        stack.extend(reversed(children))
    return None


def validate_schema(header: dict, subschema: str | None = None, what: str = "header") -> None:
    """Raise FormatError naming the first field that breaks the schema."""
    schema = header_schema() if subschema is None else {"$ref": f"#/$defs/{subschema}"}
    found = _first_violation(header, schema)
    if found is None:
        return
    where = "/".join(str(p) for p in found[0]) or "(top level)"
    message = " ".join(found[1].split())
    if len(message) > 160:
        message = message[:157] + "..."
    raise FormatError(f"{what} field {where[:120]}: {message}")


# --------------------------------------------------------------------------- sections


def parse_sections(entries: list) -> list[SectionInfo]:
    """SectionInfo list from the schema-checked "sections" array, with the size rules.

    Checks that need no file offsets: unique names, known encoding and codec, ndim and
    size caps, raw_bytes == size implied by shape and encoding, raw codec stores as is.
    """
    sections: list[SectionInfo] = []
    names: set[str] = set()
    total_raw = 0
    for i, e in enumerate(entries):
        name = e["name"]
        if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
            raise FormatError(f"section {i} has an invalid name {name[:60]!r}")
        if name in names:
            raise FormatError(f"section name {name!r} appears twice; names must be unique")
        names.add(name)
        get_encoding(e["dtype"])
        if e["codec"] not in CODECS:
            raise FormatError(f"section {name!r} uses unknown codec {e['codec'][:30]!r}; this reader knows raw, zstd")
        if not _HASH.fullmatch(e["hash"]):
            raise FormatError(f"section {name!r} hash is not 32 lowercase hex digits")
        expected = raw_size(e["dtype"], e["shape"])
        if e["raw_bytes"] != expected:
            raise FormatError(
                f"section {name!r} declares {e['raw_bytes']} raw bytes but {e['dtype']} of shape "
                f"{e['shape']} needs {expected}; the file is corrupt"
            )
        if e["codec"] == "raw" and e["stored_bytes"] != e["raw_bytes"]:
            raise FormatError(f"section {name!r} is stored raw but stored_bytes != raw_bytes")
        total_raw += expected
        if total_raw > MAX_TOTAL_RAW_BYTES:
            raise LimitError(
                f"sections together declare more than {MAX_TOTAL_RAW_BYTES} raw bytes (the cap)"
            )
        sections.append(
            SectionInfo(name, e["dtype"], tuple(e["shape"]), e["offset"], e["stored_bytes"],
                        e["raw_bytes"], e["codec"], e["hash"])
        )
    return sections


# --------------------------------------------------------------------------- meaning


def check_semantics(header: dict, sections: dict[str, SectionInfo]) -> None:
    """Cross-field rules the schema cannot express (spec/format.md, rules 20-27)."""
    k = header["num_classes"]
    c = header["image_shape"][0]
    if len(header["class_names"]) != k:
        raise FormatError(f"header has {len(header['class_names'])} class_names for num_classes={k}")
    norm = header["normalization"]
    if len(norm["mean"]) != c or len(norm["std"]) != c:
        raise FormatError(f"normalization mean/std need one value per channel ({c})")
    seen: set[int] = set()
    ids: set[int] = set()
    all_soft = bool(header["subtasks"])
    if not header["subtasks"] and header.get("anchors") is None:
        raise FormatError("the file has no subtasks and no anchors; it needs at least one of them")
    for i, sub in enumerate(header["subtasks"]):
        if sub["id"] in ids:
            raise FormatError(f"subtask id {sub['id']} appears twice")
        ids.add(sub["id"])
        classes = sub["classes"]
        for cls in classes:
            if cls >= k:
                raise FormatError(f"subtask {i} names class {cls} but num_classes is {k}")
            if cls in seen:
                raise FormatError(f"class {cls} belongs to more than one subtask; subtasks must be disjoint")
            seen.add(cls)
        rows = len(classes) * sub["latents_per_class"]
        tensors = sub["tensors"]
        _check_tensor(sections, tensors["mu"], (rows, sub["z_dim"]), f"subtask {i} mu")
        _check_tensor(sections, tensors["logvar"], (rows, sub["z_dim"]), f"subtask {i} logvar")
        if "soft" in tensors:
            _check_tensor(sections, tensors["soft"], (rows, k), f"subtask {i} soft labels")
        else:
            all_soft = False
        for param, name in tensors["decoder"].items():
            if name not in sections:
                raise FormatError(f"subtask {i} decoder parameter {param[:60]!r} names missing section {name[:60]!r}")
    if header.get("anchors") is not None:
        seen |= check_anchors(header["anchors"], header["image_shape"], k, sections)
    if len(seen) != k and not header.get("partial", False):
        missing = sorted(set(range(k)) - seen)[:5]
        raise FormatError(
            f"subtasks cover {len(seen)} of {k} classes (missing e.g. {missing}); "
            "set \"partial\": true for a partial container"
        )
    if (header["labels"] == "soft") != all_soft:
        raise FormatError('labels must be "soft" exactly when every subtask has a soft-label tensor')
    teacher = header.get("teacher")
    if teacher is not None:
        for param, name in teacher["tensors"].items():
            info = sections.get(name)
            if info is None:
                raise FormatError(f"teacher parameter {param[:60]!r} names missing section {name[:60]!r}")
            if info.dtype not in FLOAT_ENCODINGS:
                raise FormatError(f"teacher section {name[:60]!r} uses {info.dtype}; it needs a float encoding")


def check_anchors(anchors: dict, image_shape, k: int, sections: dict[str, SectionInfo]) -> set[int]:
    """The anchors' cross-field rules (spec section 10); returns the classes that have anchors."""
    counts = anchors["counts"]
    if len(counts) != k:
        raise FormatError(f"anchors list counts for {len(counts)} classes, the file has {k}")
    total = sum(counts)
    if total < 1:
        raise FormatError("anchors hold no image; drop the anchors entry or give a class at least one")
    pixels = total * image_shape[0] * image_shape[1] * image_shape[2]
    if pixels > MAX_ANCHOR_PIXELS:
        raise LimitError(f"anchors decode to {pixels:,} pixels, over the reader's cap of {MAX_ANCHOR_PIXELS:,}")
    LevelShape(total, *image_shape, anchors["levels"], anchors["lanes"]).validate()
    values = sections.get(anchors["values"])
    if values is None or values.dtype != "uint8" or values.shape != (image_shape[0], anchors["levels"]):
        raise FormatError(f"anchor values must be a uint8 section of shape [{image_shape[0]}, {anchors['levels']}]")
    stream = sections.get(anchors["stream"])
    if stream is None or stream.dtype != "uint8" or len(stream.shape) != 1:
        raise FormatError("the anchor stream must be a one-dimensional uint8 section")
    return {c for c, n in enumerate(counts) if n > 0}


def _check_tensor(sections: dict[str, SectionInfo], name: str, shape: tuple[int, int], what: str) -> None:
    info = sections.get(name)
    if info is None:
        raise FormatError(f"{what} names missing section {name[:60]!r}")
    if info.shape != shape:
        raise FormatError(f"{what} section {name!r} has shape {list(info.shape)}, expected {list(shape)}")
    if info.dtype not in FLOAT_ENCODINGS:
        raise FormatError(f"{what} section {name!r} uses {info.dtype}; it needs a float encoding")


def validate_header(header: dict, sections: list[SectionInfo]) -> None:
    """All header rules that need no file bytes: schema (with "sections") then meaning."""
    validate_schema(header)
    check_semantics(header, {s.name: s for s in sections})


def check_eval_record(record: dict) -> None:
    """FormatError unless ``record`` is a valid evaluation record (see "evals")."""
    if not isinstance(record, dict):
        raise FormatError("an evaluation record must be a JSON object")
    validate_schema(record, "eval", what="evaluation record")
