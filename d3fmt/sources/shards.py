"""webdataset sources: tar shards of samples, one image + one ``.cls`` label per sample.

Rules (the webdataset convention plus d3fmt's choices):
- SRC is one shard path, a brace pattern (``data/shard-{000..009}.tar``, ``{a,b}``
  lists too, several braces allowed), or a directory (all ``*.tar``/``*.tar.gz``/``*.tgz``
  in it, sorted). Shards are read in the pattern's order. Plain and gzip tars only.
- A sample is the group of members sharing a key: the member path up to the first dot of
  its file name. Its image is the member with an image extension (png, jpg, ...); its
  label is the ``cls`` (or ``cls.txt``) member. A sample without image or label is an
  error naming shard and key; members with other extensions are ignored.
- Labels: when every ``.cls`` holds an integer, that integer is the class id; class
  names come from ``classes.json`` (a JSON list of names, next to the first shard) when
  present, else "0".."K-1" with K = largest label + 1. When some ``.cls`` hold text,
  the text is the class name: ids follow ``classes.json`` if present, else the sorted
  names. Labels outside ``classes.json`` are an error.
- Opening scans every shard once (tar headers and the small ``.cls`` members) to build
  an index (shard, offset, size, label) per sample; iterating then seeks straight to the
  selected images, shard by shard, so a class subset reads only its own images.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from d3fmt.errors import SourceError
from d3fmt.sources.base import READ_ERRORS, BadImages, ChunkFiller, Part, SourceParts, one_line
from d3fmt.sources.hashing import file_hashes
from d3fmt.sources.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, look_at_images

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LABEL_EXTENSIONS = ("cls", "cls.txt")
MAX_MEMBER_BYTES = 64 * 1024 * 1024   # an image member larger than this is a bad image
MAX_BRACE_EXPANSION = 1_000_000
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``a{0..2}b{x,y}`` -> a0bx a0by a1bx ... ; zero padding follows the first bound."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        if abs(hi - lo) + 1 > MAX_BRACE_EXPANSION:
            raise SourceError(f"brace range {{{body}}} is too large; split the source")
        options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    else:
        options = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [head + opt + rest for opt in options for rest in expand_braces(tail)]


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


def list_shards(spec: str) -> list[Path]:
    """Shard paths of a spec (brace pattern, one file, or a directory of shards)."""
    path = Path(spec)
    if "{" not in spec and path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.is_file() and is_shard_name(p.name))
        if not shards:
            raise SourceError(f"{path} holds no .tar shards")
        return shards
    shards = [Path(s) for s in expand_braces(spec)]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise SourceError(f"shard {missing[0]} not found ({len(missing)} of {len(shards)} "
                          "shards missing); check the path or brace pattern")
    return shards


def _open_raw(path: Path):
    """The shard's (decompressed) tar stream: offsets in the index refer to it."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


class ShardsPart(Part):
    """Samples of tar shards, located by (shard, offset, size) from the opening scan."""

    def __init__(self, shards: list[Path], shard_ids: np.ndarray, offsets: np.ndarray,
                 sizes: np.ndarray, members: list[str], labels: np.ndarray,
                 channels: int, side: int):
        self.shards = shards
        self.shard_ids = shard_ids      # int32 [N]
        self.offsets = offsets          # int64 [N], data offset in the tar stream
        self.sizes = sizes              # int64 [N]
        self.members = members          # member name of each image, for messages
        self.labels = labels            # int64 [N]
        self.channels = channels
        self.side = side

    def where(self, i: int) -> str:
        return f"{self.shards[self.shard_ids[i]]}:{self.members[i]}"

    def select(self, ids: np.ndarray) -> ShardsPart:
        return ShardsPart(self.shards, self.shard_ids[ids], self.offsets[ids], self.sizes[ids],
                          [self.members[i] for i in ids.tolist()], self.labels[ids], self.channels, self.side)

    def fetch(self, i: int) -> bytes:
        if self.sizes[i] > MAX_MEMBER_BYTES:
            return b""   # not an image: the look reports it as bad
        shard = self.shards[self.shard_ids[i]]
        try:
            with _open_raw(shard) as f:
                f.seek(int(self.offsets[i]))
                return f.read(int(self.sizes[i]))
        except READ_ERRORS as exc:
            raise SourceError(f"shard {shard} is truncated or corrupt ({one_line(exc)}); "
                              "re-create it") from None

    def read(self, ids: np.ndarray, chunk: int, bad: BadImages
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        filler = ChunkFiller(chunk, self.channels, self.side)
        by_shard = self.shard_ids[ids]
        for shard in np.unique(by_shard).tolist():   # ids are sorted, so shards are too
            wanted = ids[by_shard == shard]
            try:
                stream = _open_raw(self.shards[shard])
            except OSError as exc:
                raise SourceError(f"cannot open shard {self.shards[shard]}: {one_line(exc)}") from None
            with stream:
                for i in wanted.tolist():
                    if self.sizes[i] > MAX_MEMBER_BYTES:
                        bad.handle(self.where(i), ImageDecodeError(
                            f"member of {int(self.sizes[i])} bytes is over {MAX_MEMBER_BYTES}"))
                        continue
                    try:
                        stream.seek(int(self.offsets[i]))
                        data = stream.read(int(self.sizes[i]))
                    except READ_ERRORS as exc:
                        raise SourceError(f"shard {self.shards[shard]} is truncated or corrupt "
                                          f"({one_line(exc)}); re-create it") from None
                    try:
                        if len(data) != self.sizes[i]:
                            raise ImageDecodeError("member is truncated")
                        image = decode_image(data, self.channels, self.side)
                    except ImageDecodeError as exc:
                        bad.handle(self.where(i), exc)
                        continue
                    if (full := filler.add(i, image)) is not None:
                        yield full
        if (rest := filler.rest()) is not None:
            yield rest


def _split_member(name: str) -> tuple[str, str]:
    """webdataset key and extension: "a/b/x.seg.png" -> ("a/b/x", "seg.png")."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def _scan_shard(path: Path) -> list[tuple[str, str, int, int, str]]:
    """Samples of one shard in tar order: (key, image member, offset, size, label text)."""
    samples: dict[str, list] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                if posixpath.basename(member.name).startswith(".") or not ext:
                    continue
                entry = samples.setdefault(key, [None, 0, 0, None])
                if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and entry[0] is None:
                    entry[0:3] = [member.name, member.offset_data, member.size]
                elif ext in LABEL_EXTENSIONS:
                    raw = tar.extractfile(member).read(256)
                    entry[3] = raw.decode("utf-8", "replace").strip()
    except READ_ERRORS as exc:
        raise SourceError(f"cannot read shard {path} ({one_line(exc)}); "
                          "is it a complete .tar file?") from None
    rows = []
    for key, (member, offset, size, label) in samples.items():
        if member is None or label is None:
            lacks = "image" if member is None else ".cls label"
            raise SourceError(f"sample {key!r} in shard {path} has no {lacks}; every sample "
                              "needs one image and one .cls member")
        rows.append((key, member, offset, size, label))
    return rows


def _class_list(shards: list[Path]) -> list[str] | None:
    path = shards[0].parent / "classes.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path} ({one_line(exc)}); "
                          "it must be a JSON list of class names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise SourceError(f"{path} must be a JSON list of distinct class names")
    return names


def _labels(texts: list[str], names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Class ids [N] and class names from the .cls texts (see the module rules)."""
    try:
        ids = np.asarray([int(t) for t in texts], dtype=np.int64)
    except ValueError:
        ids = None
    if ids is not None:
        if ids.size and ids.min() < 0:
            raise SourceError(f"negative class label {int(ids.min())} in .cls; labels are 0..K-1")
        top = int(ids.max()) + 1 if ids.size else 0
        if names is None:
            return ids, [str(k) for k in range(top)]
        if top > len(names):
            raise SourceError(f"label {top - 1} is out of range for the {len(names)} names "
                              "in classes.json; fix the labels or classes.json")
        return ids, names
    if names is None:
        names = sorted(set(texts))
    index = {n: k for k, n in enumerate(names)}
    unknown = sorted(set(texts) - set(index))
    if unknown:
        raise SourceError(f"class {unknown[0]!r} is not listed in classes.json")
    return np.asarray([index[t] for t in texts], dtype=np.int64), names


def open_shards(spec: str, *, image_size: int | None, channels: int | None,
                bad: BadImages) -> SourceParts:
    shards = list_shards(spec)
    shard_ids, offsets, sizes, members, texts = [], [], [], [], []
    for s, path in enumerate(shards):
        for _key, member, offset, size, label in _scan_shard(path):
            shard_ids.append(s)
            offsets.append(offset)
            sizes.append(size)
            members.append(member)
            texts.append(label)
    if not members:
        raise SourceError(f"shards {spec} hold no samples")
    names = _class_list(shards)
    labels, class_names = _labels(texts, names)
    part = ShardsPart(shards, np.asarray(shard_ids, dtype=np.int32),
                      np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                      members, labels, channels or 3, image_size or 1)
    look = look_at_images(len(members), fetch=part.fetch, where=part.where,
                          on_bad=bad.handle)
    part.channels = channels or look.channels
    part.side = image_size or look.side

    base = Path(os.path.commonpath([str(p.parent.resolve()) for p in shards]))
    rels = [os.path.relpath(p.resolve(), base) for p in shards]
    if names is not None:
        rels.append(os.path.relpath((shards[0].parent / "classes.json").resolve(), base))
    count = f"{len(shards)} shard" + ("s" if len(shards) > 1 else "")
    hashes = file_hashes("webdataset", base, rels)
    return SourceParts(
        kind="webdataset", name=f"webdataset:{spec} ({count})", class_names=class_names,
        channels=part.channels, side=part.side, train=part, test=None, test_name=None,
        content_hash=hashes.content, cache_stamp=hashes.stamp)
