"""Seed derivation: every random stream of d3fmt gets its seed from here (torch-free).

Two kinds, both pure functions of their arguments, so a result never depends on which
process, machine or order computed it:

- :func:`derive_seed` names a stream by tags, e.g. (seed, "experts", subtask index);
- :func:`mix_seed` numbers the streams of a sequence, e.g. (seed, expert index) or
  (seed, epoch): a cheap integer mix used where a stream is opened per item.
"""

from __future__ import annotations

import hashlib
import json

MIX_MULTIPLIER = 1_000_003


def derive_seed(seed: int, *tags) -> int:
    """A seed that depends only on (seed, tags), e.g. (seed, "experts", subtask index)."""
    blob = json.dumps([int(seed), *tags], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 2


def mix_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of the sequence seeded by ``seed`` (a non-negative int64)."""
    return (seed * MIX_MULTIPLIER + index) % (1 << 63)
