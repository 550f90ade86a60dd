"""The .d3 container: D3Container in memory, write_d3 / encode_d3, D3Reader, read_d3.

Writing is deterministic (sorted JSON keys, sections in a fixed order, zstd at a fixed
level, single-threaded) and atomic (temp file in the target directory + os.replace), so
a crash never leaves a half-written file at the target path and the same content always
gives the same bytes. Reading is lazy and hostile-input safe: the constructor reads and
validates only the preamble and the header; each tensor is read, hash-checked,
decompressed (bounded by its declared, capped size) and decoded on demand.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np

from d3fmt.errors import ConfigError, D3IOError, FormatError, IntegrityError, LimitError
from d3fmt.format import compression
from d3fmt.format.budget import usage_fields
from d3fmt.format.constants import (
    FLAG_HEADER_ZSTD,
    FORMAT_MINOR,
    HASH_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADER_PADDING,
    PREAMBLE_BYTES,
    ZSTD_LEVEL_HEADER,
)
from d3fmt.format.decoders import check_decoders
from d3fmt.format.encoding import decode_tensor, default_encoding, encode_tensor
from d3fmt.format.header import (
    SectionInfo,
    check_eval_record,
    check_semantics,
    dump_header,
    parse_header,
    parse_sections,
    validate_header,
    validate_schema,
)
from d3fmt.format.layout import Preamble, align, check_layout, digest, parse_preamble
from d3fmt.format.levelcode import anchor_levels

_CHUNK = 1 << 20  # streaming read size for verify()


@dataclass
class D3Container:
    """One whole .d3 file in memory, decoded.

    header: every header key except "sections" (spec/format.md); tensors: section name
    -> array (float32 for float encodings); encodings: section name -> encoding name
    (missing names default to float32 for float arrays, int32 for integer arrays).
    """

    header: dict
    tensors: dict[str, np.ndarray]
    encodings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SectionPayload:
    """A section ready to be placed in a file: its description and its stored bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    raw_bytes: int
    codec: str
    stored: bytes

    def info(self, offset: int) -> SectionInfo:
        return SectionInfo(self.name, self.dtype, self.shape, offset, len(self.stored),
                           self.raw_bytes, self.codec, digest(self.stored).hex())


# --------------------------------------------------------------------------- writing


def _section_order(name: str) -> tuple:
    """s2.* before s10.*; within a subtask, by name. Fixed so that bytes are reproducible."""
    m = re.match(r"s(\d+)\.", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def encode_payloads(container: D3Container, codec: str = "zstd") -> list[SectionPayload]:
    """Encode and compress every tensor; zstd only where it is strictly smaller than raw.

    Falling back to raw means the all-raw size is an upper bound of the file size, which
    the budget fitter relies on.
    """
    if codec not in ("zstd", "raw"):
        raise ConfigError(f"unknown codec {codec!r}; use 'zstd' or 'raw'")
    unknown = set(container.encodings) - set(container.tensors)
    if unknown:
        raise ConfigError(f"encodings name tensors that do not exist: {sorted(unknown)[:5]}")
    payloads = []
    for name in sorted(container.tensors, key=_section_order):
        array = np.asarray(container.tensors[name])
        encoding = container.encodings.get(name) or default_encoding(array)
        raw = encode_tensor(array, encoding)
        stored, used = raw, "raw"
        if codec == "zstd" and raw:
            packed = compression.compress(raw)
            if len(packed) < len(raw):
                stored, used = packed, "zstd"
        payloads.append(SectionPayload(name, encoding, tuple(int(d) for d in array.shape), len(raw), used, stored))
    return payloads


def _header_bytes(header: dict, compress_header: bool) -> tuple[bytes, int, int]:
    """(stored header bytes, raw length, flags)."""
    raw = dump_header(header)
    if compress_header:
        packed = compression.compress(raw, ZSTD_LEVEL_HEADER)
        if len(packed) < len(raw):
            return packed, len(raw), FLAG_HEADER_ZSTD
    return raw, len(raw), 0


def assemble(header: dict, payloads: list[SectionPayload], *, compress_header: bool = True) -> tuple[bytes, dict]:
    """File bytes for ``header`` (without "sections") and placed ``payloads``.

    bytes_used must equal the file size, but the size depends on the header, which holds
    bytes_used and every offset. Fixed point: the data area (sections and their padding)
    has a fixed length D once its start F is a multiple of 8, so the file size is F + D.
    Start with F = 0 and raise F to align(48 + len(header written for F)) until that
    header fits before F; the few bytes between header and F are zero padding.
    Returns (file bytes, the final header including "sections").
    """
    if not isinstance(header, dict):
        raise ConfigError(f"a container header must be a dict, not {type(header).__name__}")
    dump_header(header)  # plain JSON within the reader's limits, before anything recurses into it
    header = copy.deepcopy(header)
    header.pop("sections", None)
    rel, pos = [], 0
    for p in payloads:
        pos = align(pos)
        rel.append(pos)
        pos += len(p.stored)
    data_len = pos

    first = 0
    for _ in range(64):
        full = _fill(header, payloads, rel, first, first + data_len)
        stored, raw_len, flags = _header_bytes(full, compress_header)
        need = align(PREAMBLE_BYTES + len(stored))
        if need <= first:
            break
        first = need
    else:  # pragma: no cover - the header grows by O(log size) per step
        raise FormatError("could not settle bytes_used; please report this bug")
    if first - align(PREAMBLE_BYTES + len(stored)) > MAX_HEADER_PADDING:  # pragma: no cover
        raise FormatError("header padding exceeds its cap; please report this bug")

    if raw_len > MAX_HEADER_BYTES:
        raise LimitError(f"header is {raw_len} bytes, more than the cap of {MAX_HEADER_BYTES}; store fewer sections")
    sections = parse_sections(full["sections"])
    validate_header(full, sections)
    check_layout(sections, PREAMBLE_BYTES + len(stored), first + data_len)

    # The lowest minor version whose features the file uses (spec section 8): 1.1 adds `teacher`, 1.2 `anchors`.
    minor = 2 if "anchors" in full else 1 if "teacher" in full else FORMAT_MINOR
    pre = Preamble(len(stored), raw_len, digest(stored), flags, minor=minor)
    out = bytearray(pre.pack())
    out += stored
    for p, r in zip(payloads, rel):
        out += bytes(first + r - len(out))  # zero padding up to the aligned offset
        out += p.stored
    assert len(out) == first + data_len
    return bytes(out), full


def _fill(header: dict, payloads: list[SectionPayload], rel: list[int], first: int, size: int) -> dict:
    """The header as written when the data area starts at ``first`` and the file has ``size`` bytes."""
    full = dict(header)
    budget = header.get("budget")
    if isinstance(budget, dict):
        full["budget"] = _refresh_budget(budget, header, size)
    full["sections"] = [p.info(first + r).to_json() for p, r in zip(payloads, rel)]
    return full


def _refresh_budget(budget: dict, header: dict, size: int) -> dict:
    """bytes_used = size, and the ipc equivalents recomputed from it (when computable)."""
    new = dict(budget)
    new["bytes_used"] = size
    try:
        new.update(usage_fields(header["num_classes"], header["image_shape"], size))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass  # the header is invalid anyway; validation will say why
    return new


def _fill_caller_budget(container: D3Container, final: dict) -> None:
    budget = container.header.get("budget")
    if isinstance(budget, dict):
        for key in ("bytes_used", "ipc_equivalent_fp32", "ipc_equivalent_uint8"):
            budget[key] = final["budget"][key]


def encode_d3(container: D3Container, *, codec: str = "zstd", compress_header: bool = True) -> bytes:
    """The exact bytes write_d3 would write; fills the container's budget.bytes_used."""
    data, final = assemble(container.header, encode_payloads(container, codec), compress_header=compress_header)
    _fill_caller_budget(container, final)
    return data


def write_d3(path, container: D3Container, *, codec: str = "zstd", compress_header: bool = True) -> int:
    """Write ``container`` to ``path`` atomically; returns the file size (= bytes_used)."""
    data = encode_d3(container, codec=codec, compress_header=compress_header)
    atomic_write(path, data)
    return len(data)


def atomic_write(path, data: bytes) -> None:
    """Write to a temp file next to ``path``, fsync, then os.replace onto ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_replace(path, write)


def atomic_replace(path, produce) -> None:
    """``produce(tmp)`` writes a temp file next to ``path``; it is fsynced, then replaces
    ``path`` (a writer that takes a file name, like safetensors' ``save_file``, streams
    from the tensors without a copy of the whole file in memory). On any failure ``path``
    is left as it was and the temp file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise D3IOError(f"cannot write {path}: directory {directory} does not exist")
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o644
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".tmp")
        os.close(fd)
        produce(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise D3IOError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- reading


def _read_exact(f, n: int, what: str) -> bytearray:
    """Exactly ``n`` bytes (``n`` already checked against the file size), in a fresh
    writable buffer that a decoded array may take over without a copy."""
    data = bytearray(n)
    if f.readinto(data) != n:
        raise FormatError(f"file is truncated while reading {what}")
    return data


class D3Reader:
    """Lazy, validated view of a .d3 file.

    The constructor reads and checks the preamble, the header (hash, size caps, JSON,
    schema, section layout, meaning) and the header padding. It keeps no file handle:
    every tensor read reopens the file, so a reader can be pickled into DataLoader
    workers, and a file that changes size under it is noticed.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        with self._open() as f:
            self.file_bytes = os.fstat(f.fileno()).st_size
            self.preamble = parse_preamble(f.read(PREAMBLE_BYTES), self.file_bytes)
            stored = bytes(_read_exact(f, self.preamble.header_stored_bytes, "the header"))
            if digest(stored) != self.preamble.header_hash:
                raise IntegrityError("header hash mismatch: the header bytes are corrupt")
            raw = stored
            if self.preamble.flags & FLAG_HEADER_ZSTD:
                raw = compression.decompress(stored, self.preamble.header_raw_bytes, "header")
            header = parse_header(raw)
            validate_schema(header)
            self.sections: list[SectionInfo] = parse_sections(header["sections"])
            check_layout(self.sections, self.preamble.header_end, self.file_bytes)
            self._by_name = {s.name: s for s in self.sections}
            check_semantics(header, self._by_name)
            used = header["budget"]["bytes_used"]
            if used != self.file_bytes:
                raise FormatError(f"budget.bytes_used is {used} but the file has {self.file_bytes} bytes; the file was altered")
            pad = _read_exact(f, self.sections[0].offset - self.preamble.header_end, "the header padding")
            if pad.count(0) != len(pad):
                raise FormatError("padding after the header holds non-zero bytes; the file is corrupt")
        header.pop("sections")
        self.header: dict = header

    # -- context manager: nothing to close, but `with D3Reader(p) as r:` reads well
    def __enter__(self) -> D3Reader:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __repr__(self) -> str:
        return f"D3Reader({self.path!r}, {len(self.sections)} sections, {self.file_bytes} bytes)"

    def _open(self):
        try:
            return open(self.path, "rb")
        except OSError as exc:
            raise FormatError(f"cannot read .d3 file {self.path}: {exc.strerror or exc}") from None

    def _opened_unchanged(self):
        f = self._open()
        if os.fstat(f.fileno()).st_size != self.file_bytes:
            f.close()
            raise FormatError(f"{self.path} changed size since it was opened; open it again")
        return f

    def section(self, name: str) -> SectionInfo:
        info = self._by_name.get(name)
        if info is None:
            raise ConfigError(f"no section named {name!r} in {self.path}")
        return info

    def stored_bytes(self, name: str) -> bytearray:
        """The verified stored bytes of one section (compressed if its codec is zstd)."""
        info = self.section(name)
        with self._opened_unchanged() as f:
            f.seek(info.offset)
            stored = _read_exact(f, info.stored_bytes, f"section {name!r}")
        if digest(stored).hex() != info.hash:
            raise IntegrityError(f"section {name!r} hash mismatch: its bytes are corrupt")
        return stored

    def tensor(self, name: str) -> np.ndarray:
        """Read, verify, decompress and decode one section."""
        info = self.section(name)
        raw = self.stored_bytes(name)  # a fresh buffer: a raw float32/int section decodes without a copy
        if info.codec == "zstd":
            raw = compression.decompress(raw, info.raw_bytes, f"section {name!r}")  # the stored bytes go
        return decode_tensor(raw, info.dtype, info.shape)

    def subtask_names(self, i: int) -> list[str]:
        """Section names of subtask ``i`` (index into header["subtasks"])."""
        subtasks = self.header["subtasks"]
        if not 0 <= i < len(subtasks):
            raise ConfigError(f"subtask index {i} out of range; the file has {len(subtasks)} subtasks")
        t = subtasks[i]["tensors"]
        names = [t["mu"], t["logvar"]] + ([t["soft"]] if "soft" in t else [])
        return names + list(t["decoder"].values())

    def subtask_tensors(self, i: int) -> dict[str, np.ndarray]:
        """Section name -> array for subtask ``i`` only; other subtasks are not read."""
        return {name: self.tensor(name) for name in self.subtask_names(i)}

    def verify(self, decoders: bool = True) -> None:
        """Check that the whole file is sound and usable, one section at a time.

        First the padding between sections and every hash (streamed); then every section
        is decoded as load() would (zstd frames, int8 scales) and its float values must be
        finite; with ``decoders`` (the default), each subtask's decoder config must be one
        d3fmt can build and its sections must have the shapes the config implies, checked
        without torch. So a file that passes loads and samples. Memory: about one
        decoded section at a time. decoders=False is for files whose decoders are not
        d3fmt's (the format tests' stand-in "linear" family).
        """
        self._verify_hashes()
        for s in self.sections:
            values = self.tensor(s.name)
            if values.dtype.kind == "f" and not _all_finite(values):
                raise FormatError(f"section {s.name!r} holds NaN or infinite values; the file is corrupt")
            del values
        if decoders:
            check_decoders(self.header, self._by_name)
        if self.header.get("anchors") is not None:
            anchor_levels(self.header["anchors"], self.header["image_shape"], self.tensor)  # FormatError if corrupt

    def _verify_hashes(self) -> None:
        bad = []
        with self._opened_unchanged() as f:
            pos = self.sections[0].offset
            for s in self.sections:
                gap = _read_exact(f, s.offset - pos, "padding") if s.offset > pos else b""
                if gap.count(0) != len(gap):
                    raise FormatError(f"padding before section {s.name!r} holds non-zero bytes")
                f.seek(s.offset)
                h = hashlib.blake2b(digest_size=HASH_BYTES)
                left = s.stored_bytes
                while left:
                    chunk = _read_exact(f, min(left, _CHUNK), f"section {s.name!r}")
                    h.update(chunk)
                    left -= len(chunk)
                if h.hexdigest() != s.hash:
                    bad.append(s.name)
                pos = s.offset + s.stored_bytes
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise IntegrityError(f"section {bad[0]!r} hash mismatch{more}: the file is corrupt")

    def load(self) -> D3Container:
        """Everything, decoded."""
        tensors = {s.name: self.tensor(s.name) for s in self.sections}
        return D3Container(copy.deepcopy(self.header), tensors, {s.name: s.dtype for s in self.sections})


def _all_finite(values: np.ndarray) -> bool:
    flat = values.reshape(-1)
    return all(np.isfinite(flat[i:i + _CHUNK]).all() for i in range(0, flat.size, _CHUNK))


def read_d3(path) -> D3Container:
    """The whole file, validated and decoded."""
    return D3Reader(path).load()


def append_eval(path, record: dict) -> int:
    """Add one evaluation record to a file, atomically; returns the new file size.

    Sections are copied byte for byte (after their hash is checked), never re-encoded,
    so int8 and float16 tensors stay exactly as they were.
    """
    check_eval_record(record)
    dump_header(record)  # within the JSON limits (depth, values, integers) before it is copied
    reader = D3Reader(path)
    payloads = []
    for s in reader.sections:
        payloads.append(SectionPayload(s.name, s.dtype, s.shape, s.raw_bytes, s.codec, reader.stored_bytes(s.name)))
    header = copy.deepcopy(reader.header)
    header["evals"] = list(header["evals"]) + [copy.deepcopy(record)]
    data, _ = assemble(header, payloads, compress_header=bool(reader.preamble.flags & FLAG_HEADER_ZSTD))
    atomic_write(path, data)
    return len(data)


__all__ = [
    "D3Container",
    "D3Reader",
    "SectionPayload",
    "append_eval",
    "assemble",
    "atomic_write",
    "encode_d3",
    "encode_payloads",
    "read_d3",
    "write_d3",
]
