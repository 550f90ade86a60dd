"""Crafting .d3 files byte by byte, for the hostile corpus (tests/test_format_hostile.py)
and the fuzz campaign (tools/fuzz_reader.py): lay sections out, recompute hashes, offsets
and bytes_used, or break exactly the rule a case is about.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d3fmt.format.constants import MAGIC, PREAMBLE_BYTES  # noqa: E402
from d3fmt.format.layout import Preamble, align, digest  # noqa: E402


def craft(header, stored, *, layout=True, used=True, hashes=True, header_bytes=None, compress=False,
          flags=None, major=1, minor=0, magic=MAGIC, stored_len=None, raw_len=None, header_hash=None,
          extra_pad=0, pad_byte=b"\0", tail=b"", truncate=None, after_layout=None, header_json=None) -> bytes:
    """File bytes from a header dict and stored section bytes ({name: bytes}, or a list in
    section order), consistent unless told otherwise.

    layout: recompute offsets/stored_bytes (the spec's fixed point, plus extra_pad);
    used: bytes_used = file size; hashes: section hashes from the stored bytes;
    after_layout(header): a last edit applied inside the fixed point (e.g. to an offset);
    header_json(raw) -> raw: an edit of the canonical JSON bytes before they are placed.
    """
    header = copy.deepcopy(header)
    secs = header.get("sections", [])
    secs = [s for s in secs if isinstance(s, dict)] if isinstance(secs, list) else []  # tolerate fuzzed headers
    if isinstance(stored, dict):  # by section name
        data = [stored.get(s.get("name"), b"") if isinstance(s.get("name"), str) else b"" for s in secs]
    else:  # by position
        data = [stored[i] if i < len(stored) else b"" for i in range(len(secs))]
    if hashes:
        for s, d in zip(secs, data):
            s["hash"] = digest(d).hex()
    rel, pos = [], 0
    for s, d in zip(secs, data):
        pos = align(pos)
        rel.append(pos)
        if layout:
            s["stored_bytes"] = len(d)
        pos += len(d)
    budget = header.get("budget")
    first = 0
    for _ in range(20):
        if layout:
            for s, r in zip(secs, rel):
                s["offset"] = first + r
        if after_layout is not None:
            after_layout(header)
        if used and isinstance(budget, dict):
            budget["bytes_used"] = first + extra_pad + pos + len(tail)
        raw = header_bytes if header_bytes is not None else json.dumps(
            header, sort_keys=True, separators=(",", ":")).encode()
        if header_json is not None:
            raw = header_json(raw)
        hb = zstandard.ZstdCompressor(level=3).compress(raw) if compress else raw
        need = align(PREAMBLE_BYTES + len(hb))
        if not layout or need <= first:
            break
        first = need
    if layout and extra_pad:
        for s, r in zip(secs, rel):
            s["offset"] = first + extra_pad + r
        raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        hb = zstandard.ZstdCompressor(level=3).compress(raw) if compress else raw
    pre = Preamble(
        len(hb) if stored_len is None else stored_len,
        len(raw) if raw_len is None else raw_len,
        digest(hb) if header_hash is None else header_hash,
        (1 if compress else 0) if flags is None else flags, major, minor, magic,
    ).pack()
    out = bytearray(pre + hb)
    for s, d in zip(secs, data):
        offset = s.get("offset")
        if not isinstance(offset, int) or offset > len(out) + 2**20:
            continue  # nothing sensible to place
        if offset >= len(out):
            out += pad_byte * (offset - len(out))
        out += d
    out += tail
    return bytes(out if truncate is None else out[:truncate])
