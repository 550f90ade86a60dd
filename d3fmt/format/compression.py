"""zstd for sections and the header: deterministic on write, bounded on read.

The reader never trusts a frame: it must declare its content size, that size must equal
the size the header declared (itself capped), its window must be small, and the frame
must use every stored byte. Only then is it decompressed into one buffer of exactly the
declared size, so a "zip bomb" cannot make the reader allocate more than the caps allow.
"""

from __future__ import annotations

import zstandard

from d3fmt.errors import FormatError, LimitError
from d3fmt.format.constants import MIN_ZSTD_WINDOW, ZSTD_LEVEL_SECTIONS


def compress(raw: bytes, level: int = ZSTD_LEVEL_SECTIONS) -> bytes:
    """One zstd frame at a fixed level, single-threaded, content size in the frame."""
    cctx = zstandard.ZstdCompressor(
        level=level,
        write_content_size=True,
        write_checksum=False,  # the container hashes the stored bytes itself
        write_dict_id=False,
        threads=0,
    )
    return cctx.compress(raw)


def decompress(stored: bytes, raw_bytes: int, what: str) -> bytes:
    """Exactly ``raw_bytes`` bytes from the single zstd frame ``stored``, or FormatError."""
    try:
        params = zstandard.get_frame_parameters(stored)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: not a valid zstd frame ({exc}); the file is corrupt") from None
    size = params.content_size
    if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise FormatError(f"{what}: zstd frame does not declare its content size; the file is corrupt")
    if size != raw_bytes:
        raise FormatError(
            f"{what}: zstd frame would decompress to {size} bytes but {raw_bytes} are declared; "
            "the file is corrupt"
        )
    window_cap = max(raw_bytes, MIN_ZSTD_WINDOW)
    if params.window_size > window_cap:
        raise LimitError(f"{what}: zstd window of {params.window_size} bytes exceeds the cap of {window_cap}")
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << max(10, (window_cap - 1).bit_length()))
    try:  # one shot into one buffer of the declared size (decompressobj joins chunks: 2x)
        out = dctx.decompress(stored, max_output_size=max(raw_bytes, 1), allow_extra_data=False)
    except zstandard.ZstdError as exc:
        text = str(exc)
        if "unused data" in text:
            raise FormatError(f"{what}: stray bytes after the zstd frame ({text}); the file is corrupt") from None
        if "full frame" in text:
            raise FormatError(f"{what}: zstd frame is truncated; the file is corrupt") from None
        raise FormatError(f"{what}: corrupt zstd data ({text})") from None
    if len(out) != raw_bytes:
        raise FormatError(f"{what}: zstd frame produced {len(out)} bytes, {raw_bytes} declared")
    return out
