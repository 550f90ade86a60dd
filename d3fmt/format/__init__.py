"""The .d3 container format, torch-free (numpy and zstandard only).

spec/format.md is the authority on the bytes; this package is its reference reader and
writer. Main names: D3Container, write_d3, encode_d3, D3Reader, read_d3, append_eval,
Budget (the byte cap), SectionInfo.
"""

from __future__ import annotations

from d3fmt.format.budget import Budget
from d3fmt.format.constants import FORMAT_MAJOR, FORMAT_MINOR, MAGIC
from d3fmt.format.container import (
    D3Container,
    D3Reader,
    append_eval,
    encode_d3,
    read_d3,
    write_d3,
)
from d3fmt.format.encoding import ENCODINGS, decode_tensor, encode_tensor, quantize_int8, raw_size
from d3fmt.format.header import SectionInfo

__all__ = [
    "Budget",
    "D3Container",
    "D3Reader",
    "ENCODINGS",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "MAGIC",
    "SectionInfo",
    "append_eval",
    "decode_tensor",
    "encode_d3",
    "encode_tensor",
    "quantize_int8",
    "raw_size",
    "read_d3",
    "write_d3",
]
