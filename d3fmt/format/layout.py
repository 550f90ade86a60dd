"""Byte layout of a .d3 file: the fixed preamble and where sections may sit.

    [preamble 48 B][header stored bytes][zero padding][section 0][pad][section 1]...EOF

The preamble is the only binary structure; everything else is described by the JSON
header. These checks run before any section byte is read, so a reader never seeks or
allocates according to an offset or size that does not fit the file and the caps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from d3fmt.errors import FormatError, LimitError, UnsupportedVersionError
from d3fmt.format.constants import (
    ALIGNMENT,
    FLAG_HEADER_ZSTD,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HASH_BYTES,
    KNOWN_FLAGS,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_HEADER_PADDING,
    MAX_HEADER_RATIO,
    MAX_HEADER_RATIO_FLOOR,
    PREAMBLE,
    PREAMBLE_BYTES,
)
from d3fmt.format.header import SectionInfo


@dataclass(frozen=True)
class Preamble:
    """The fixed 48 bytes at the start of every .d3 file."""

    header_stored_bytes: int
    header_raw_bytes: int
    header_hash: bytes  # BLAKE2b-128 of the stored header bytes, 16 raw bytes
    flags: int = 0
    major: int = FORMAT_MAJOR
    minor: int = FORMAT_MINOR
    magic: bytes = MAGIC

    def pack(self) -> bytes:
        return PREAMBLE.pack(self.magic, self.major, self.minor, self.flags,
                             self.header_stored_bytes, self.header_raw_bytes, self.header_hash)

    @property
    def header_end(self) -> int:
        return PREAMBLE_BYTES + self.header_stored_bytes


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE2b with a 16-byte digest: the hash of every section and of the header."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def align(n: int) -> int:
    """Smallest multiple of ALIGNMENT that is >= n."""
    return -(-n // ALIGNMENT) * ALIGNMENT


def parse_preamble(buf: bytes, file_bytes: int) -> Preamble:
    """Validated preamble from the first bytes of a file of ``file_bytes`` bytes.

    Order matters for useful errors: not-a-d3 first, then version, then sizes.
    """
    if len(buf) < len(MAGIC) or buf[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(bytes(buf[: len(MAGIC)])) and len(buf) < len(MAGIC):
            raise FormatError(f"file is truncated: {file_bytes} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble")
        raise FormatError("not a .d3 file (wrong magic bytes at the start)")
    if len(buf) < PREAMBLE_BYTES:
        raise FormatError(f"file is truncated: {file_bytes} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble")
    magic, major, minor, flags, stored, raw, hsh = PREAMBLE.unpack_from(buf, 0)
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"file uses .d3 format version {major}.{minor}; this reader supports major version "
            f"{FORMAT_MAJOR} only; upgrade d3fmt"
        )
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"preamble sets unknown flag bits {flags & ~KNOWN_FLAGS:#x}; the file is corrupt or newer")
    for what, n in (("stored", stored), ("raw", raw)):
        if n > MAX_HEADER_BYTES:
            raise LimitError(f"header {what} length {n} exceeds the cap of {MAX_HEADER_BYTES} bytes")
    if stored == 0:
        raise FormatError("header length is zero; the file is corrupt")
    if flags & FLAG_HEADER_ZSTD and raw > max(MAX_HEADER_RATIO_FLOOR, MAX_HEADER_RATIO * stored):
        raise LimitError(
            f"compressed header of {stored} bytes declares {raw} raw bytes, more than "
            f"max({MAX_HEADER_RATIO_FLOOR}, {MAX_HEADER_RATIO} x stored) (the cap)"
        )
    if PREAMBLE_BYTES + stored > file_bytes:
        raise FormatError(
            f"file is truncated: the header needs {PREAMBLE_BYTES + stored} bytes but the file has {file_bytes}"
        )
    if not flags & FLAG_HEADER_ZSTD and raw != stored:
        raise FormatError("uncompressed header declares a raw length different from its stored length")
    return Preamble(stored, raw, hsh, flags, major, minor, magic)


def check_layout(sections: list[SectionInfo], header_end: int, file_bytes: int) -> None:
    """Offsets in order, aligned, not overlapping, inside the file, no trailing bytes.

    Rules (spec/format.md): the first section starts at a multiple of 8 no earlier than
    the header end and at most MAX_HEADER_PADDING bytes after align(header_end); each
    next section starts at align(end of the previous one); the file ends where the last
    section ends.
    """
    if not sections:
        raise FormatError("header lists no sections; the file is corrupt")
    first = align(header_end)
    pos = None
    for s in sections:
        if s.offset % ALIGNMENT:
            raise FormatError(f"section {s.name!r} offset {s.offset} is not a multiple of {ALIGNMENT}")
        if pos is None:
            if s.offset < first:
                raise FormatError(f"section {s.name!r} offset {s.offset} overlaps the header (ends at {header_end})")
            if s.offset - first > MAX_HEADER_PADDING:
                raise FormatError(
                    f"section {s.name!r} starts {s.offset - first} bytes after the header, "
                    f"more than the {MAX_HEADER_PADDING} bytes of padding allowed"
                )
        elif s.offset < pos:
            raise FormatError(f"section {s.name!r} offset {s.offset} overlaps the previous section (ends at {pos})")
        elif s.offset != align(pos):
            raise FormatError(f"section {s.name!r} offset {s.offset} leaves a gap; expected {align(pos)}")
        end = s.offset + s.stored_bytes
        if end > file_bytes:
            raise FormatError(
                f"file is truncated: section {s.name!r} ends at byte {end} but the file has {file_bytes}"
            )
        pos = end
    if pos != file_bytes:
        raise FormatError(f"file has {file_bytes - pos} trailing bytes after the last section")
