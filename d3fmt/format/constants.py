"""Fixed numbers of the .d3 container, version 1 (spec/format.md is the authority).

They live in one place so that the writer, the reader, the spec tests and the hostile
corpus agree on every byte and every cap.
"""

from __future__ import annotations

import struct

# PNG-style magic: a high-bit byte (catches 7-bit transfers), the name, CR LF (catches
# newline translation), ^Z (stops `type` on DOS), LF.
MAGIC = b"\x89D3F\r\n\x1a\n"

FORMAT_MAJOR = 1
FORMAT_MINOR = 0

# Preamble: magic, u16 major, u16 minor, u32 flags, u64 header stored length,
# u64 header raw length, 16-byte BLAKE2b-128 of the stored header bytes. Little-endian.
PREAMBLE = struct.Struct("<8sHHIQQ16s")
PREAMBLE_BYTES = PREAMBLE.size  # 48

FLAG_HEADER_ZSTD = 0x1  # bit 0: the header bytes are one zstd frame
KNOWN_FLAGS = FLAG_HEADER_ZSTD

HASH_BYTES = 16  # BLAKE2b with digest_size=16, written as 32 lowercase hex chars in JSON
ALIGNMENT = 8  # every section starts at a multiple of this absolute file offset

# Hard caps: a reader rejects anything beyond them before allocating.
MAX_HEADER_BYTES = 16 * 1024 * 1024  # stored and raw header length
MAX_HEADER_PADDING = 4096  # zero bytes allowed between the header and the first section
MAX_NDIM = 8
MAX_SECTION_RAW_BYTES = 1 << 30  # 1 GiB per section, decoded
MAX_TOTAL_RAW_BYTES = 1 << 32  # 4 GiB for all sections together, decoded
MAX_NAME_CHARS = 256  # section names
MAX_HEADER_RATIO = 64  # a compressed header expands to at most max(1 MiB, 64 x its stored bytes)
MAX_HEADER_RATIO_FLOOR = 1 << 20
MAX_JSON_DEPTH = 64  # nested arrays/objects in the header, the top-level object counting 1
MAX_JSON_VALUES = 100_000  # values in the header (top level, member values, elements); jsonschema needs ~10-20 us each
MAX_JSON_INT = (1 << 63) - 1  # every header integer lies in [-2**63, 2**63 - 1]
MAX_ANCHOR_PIXELS = 1 << 28  # anchor images x C x H x W, decoded (uint8)
MAX_ANCHOR_STEPS = 1 << 18  # sequential decoding steps of an anchor stream: C*H*W*ceil(N / lanes)
MAX_INT8_SCALE = float.fromhex("0x1.fffffep+127") / 128  # 128 * scale stays a finite float32
MIN_ZSTD_WINDOW = 1 << 20  # frames may always use a window this large

# Writer settings: fixed so that identical content gives identical bytes. On float
# tensors level 15 compresses as well as 19 at a tenth of the time (measured on 6 MB of
# float32/float16/int8 weights); the small JSON header still gains a little from 19.
ZSTD_LEVEL_SECTIONS = 15
ZSTD_LEVEL_HEADER = 19

CODECS = ("raw", "zstd")
