"""content_hash: a cheap, stable digest that changes when a source's data changes.

Rule for file sources (ImageFolder, webdataset, IDX, npz): SHA-256 over the sorted
list of (path relative to the source root, size in bytes) of every file the source
reads, and -- when those files total at most FULL_BYTES_LIMIT (64 MiB) -- over their
full bytes too. A big source is therefore identified by its file names and sizes
(an edit that keeps a file's size is missed; re-hashing a 100 GB tree would not be
cheap); a small one by its exact bytes. The kind of source is hashed first, so the
same files read as different kinds give different digests. File modification times
are left out on purpose: copying a dataset must not change its identity.

The decoded-image cache needs more than that identity: it must notice an image replaced
by another of the same size. :func:`file_hashes` also returns a *stamp*, the digest of
(path, size, modification time in ns) from the same ``stat`` calls (no extra I/O), as
make and rsync decide what changed. For a small source, whose bytes are hashed, the
stamp is its content hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from d3fmt.errors import SourceError

FULL_BYTES_LIMIT = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20


@dataclass
class FileHashes:
    content: str  # the source's identity (names, sizes; bytes when small): provenance, expert caches
    stamp: str  # content + modification times: the decoded-image cache's identity


def hash_files(kind: str, root: Path, rel_paths: Iterable[str], *, extra: bytes = b"") -> str:
    """SHA-256 hex digest of (kind, extra, [(rel_path, size)], and small files' bytes)."""
    return file_hashes(kind, root, rel_paths, extra=extra).content


def file_hashes(kind: str, root: Path, rel_paths: Iterable[str], *, extra: bytes = b"") -> FileHashes:
    """The content hash of :func:`hash_files` and the stamp (adds every file's mtime) from one stat pass."""
    rels = sorted(rel_paths)
    try:
        stats = [os.stat(root / rel) for rel in rels]
    except OSError as exc:
        raise SourceError(f"cannot read {exc.filename} ({exc.strerror}); "
                          "check the source's files") from None
    sizes = [st.st_size for st in stats]
    digest, stamp = hashlib.sha256(), hashlib.sha256()
    head = f"d3fmt-source/{kind}\n".encode()
    digest.update(head)
    digest.update(extra)
    stamp.update(head + extra)
    for rel, st in zip(rels, stats):
        name = f"{rel}\0{st.st_size}".encode("utf-8", "surrogateescape")
        digest.update(name + b"\n")
        stamp.update(name + f"\0{st.st_mtime_ns}\n".encode())
    if sum(sizes) > FULL_BYTES_LIMIT:
        return FileHashes(digest.hexdigest(), stamp.hexdigest())
    digest.update(b"bytes\n")
    for rel in rels:
        try:
            with open(root / rel, "rb") as f:
                while block := f.read(_READ_CHUNK):
                    digest.update(block)
        except OSError as exc:
            raise SourceError(f"cannot read {root / rel} ({exc.strerror}); check the "
                              "source's files") from None
    content = digest.hexdigest()
    return FileHashes(content, content)


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
