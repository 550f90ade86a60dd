"""content_hash: a cheap, stable digest that changes when a source's data changes.

Rule for file sources (ImageFolder, webdataset, IDX, npz): SHA-256 over the sorted
list of (path relative to the source root, size in bytes) of every file the source
reads, and -- when those files total at most FULL_BYTES_LIMIT (64 MiB) -- over their
full bytes too. A big source is therefore identified by its file names and sizes
(an edit that keeps a file's size is missed; re-hashing a 100 GB tree would not be
cheap); a small one by its exact bytes. The kind of source is hashed first, so the
same files read as different kinds give different digests. File modification times
are left out on purpose: copying a dataset must not change its identity.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from d3fmt.errors import SourceError

FULL_BYTES_LIMIT = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20


def hash_files(kind: str, root: Path, rel_paths: Iterable[str], *, extra: bytes = b"") -> str:
    """SHA-256 hex digest of (kind, extra, [(rel_path, size)], and small files' bytes)."""
    rels = sorted(rel_paths)
    try:
        sizes = [os.stat(root / rel).st_size for rel in rels]
    except OSError as exc:
        raise SourceError(f"cannot read {exc.filename} ({exc.strerror}); "
                          "check the source's files") from None
    digest = hashlib.sha256()
    digest.update(f"d3fmt-source/{kind}\n".encode())
    digest.update(extra)
    for rel, size in zip(rels, sizes):
        digest.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
    if sum(sizes) <= FULL_BYTES_LIMIT:
        digest.update(b"bytes\n")
        for rel in rels:
            try:
                with open(root / rel, "rb") as f:
                    while block := f.read(_READ_CHUNK):
                        digest.update(block)
            except OSError as exc:
                raise SourceError(f"cannot read {root / rel} ({exc.strerror}); check the "
                                  "source's files") from None
    return digest.hexdigest()


def hash_arrays(kind: str, *arrays) -> str:
    """SHA-256 of in-memory arrays (shape, dtype and bytes): for the built-in sources."""
    digest = hashlib.sha256()
    digest.update(f"d3fmt-source/{kind}\n".encode())
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}\n".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def combine_hashes(*digests: str) -> str:
    """One digest for a train source plus a separate test source."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
