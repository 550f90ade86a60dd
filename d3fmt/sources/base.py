"""What every dataset source is: labelled records in parts, streamed as uint8 batches.

A source kind (ImageFolder, webdataset shards, IDX, npz, digits) only has to say which
records exist, what their labels are, and how to decode a sorted run of them. Everything
the distiller relies on -- split resolution, class subsets, fixed-size batches, bad-image
policy, counts -- lives here once, so every kind behaves the same.

Memory rule: labels (int64 per record) and a per-record index (paths or offsets) are held
in memory; pixels never are, except the one batch being assembled.
"""

from __future__ import annotations

import abc
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from d3fmt.errors import ConfigError, SourceError

SPLITS = ("train", "test")

# What reading a damaged file can raise: I/O, short gzip/zip/tar streams, bad deflate
# data, and what zipfile raises on a damaged directory (bogus versions, methods, flags).
READ_ERRORS = (OSError, EOFError, ValueError, OverflowError, struct.error, zlib.error,
               zipfile.BadZipFile, tarfile.TarError, NotImplementedError, RuntimeError)


@dataclass
class SourceInfo:
    """What a source holds, known without decoding a single image."""

    name: str                           # human description, e.g. "imagefolder:/data/x (train/)"
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]   # (C, H, W) after resizing
    num_train: int
    num_test: int | None                # None when the source has no held-out split
    content_hash: str                   # stable hex digest identifying the data


@dataclass
class BadImages:
    """The bad-image policy of one source: raise a SourceError naming the file, or skip.

    Skipped images are counted once each (by where they are: a path, or shard:member),
    however many times the source is iterated, so ``Source.skipped`` is the number of
    distinct bad files found so far.
    """

    skip: bool = False
    seen: dict[str, None] = field(default_factory=dict)   # ordered set of bad files

    def handle(self, where: str, err: BaseException) -> None:
        reason = one_line(err)
        if not self.skip:
            raise SourceError(
                f"cannot decode image {where} ({reason}); fix or delete the file, "
                "or pass --skip-bad to skip unreadable images"
            ) from None
        self.seen.setdefault(where, None)


class Part(abc.ABC):
    """One physical set of labelled records (a directory tree, a set of shards, one
    IDX image/label pair, one npz x/y pair). Record ids are 0..N-1 in a fixed order."""

    labels: np.ndarray   # int64 [N], global class ids

    @abc.abstractmethod
    def read(self, ids: np.ndarray, chunk: int, bad: BadImages
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode the records ``ids`` (sorted, unique) in order.

        Yields ``(ids_read int64 [n], images uint8 [n, C, H, W])`` with n <= chunk;
        bad records are reported to ``bad`` (which raises or records them) and left out.
        """

    def where(self, i: int) -> str:
        """Where record ``i`` comes from, for messages (a path, or shard:member)."""
        return f"record {i}"

    def select(self, ids: np.ndarray) -> Part:
        """Records ``ids`` as a new, small part (their ids 0..len-1): what a worker process
        decoding them needs, and nothing more (the decoded-image cache sends these)."""
        raise NotImplementedError(f"{type(self).__name__} records are not decoded in workers")


class ChunkFiller:
    """Decoded images gathered into fixed-size chunks: (record ids [n], uint8 [n, C, S, S])."""

    def __init__(self, chunk: int, channels: int, side: int):
        self.shape = (chunk, channels, side, side)
        self.out = np.empty(self.shape, dtype=np.uint8)  # [chunk, C, S, S]
        self.got: list[int] = []

    def add(self, record: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Store one image; returns the chunk when it is full."""
        self.out[len(self.got)] = image
        self.got.append(record)
        if len(self.got) < self.shape[0]:
            return None
        full = (np.asarray(self.got, dtype=np.int64), self.out)
        self.out, self.got = np.empty(self.shape, dtype=np.uint8), []
        return full

    def rest(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The last, partly filled chunk, or None."""
        if not self.got:
            return None
        return np.asarray(self.got, dtype=np.int64), self.out[: len(self.got)]


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (some libraries write several)."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


def check_class_ids(classes: Sequence[int] | np.ndarray | None, num_classes: int
                    ) -> np.ndarray | None:
    """Validate a class subset; returns sorted unique int64 ids (or None for all)."""
    if classes is None:
        return None
    if isinstance(classes, (int, np.integer)):
        classes = [classes]
    ids = np.unique(np.asarray(list(classes), dtype=np.int64))
    if ids.size == 0:
        raise ConfigError("empty class subset; give at least one class id")
    if ids[0] < 0 or ids[-1] >= num_classes:
        raise ConfigError(
            f"class ids must lie in 0..{num_classes - 1}, got {ids.tolist()[:8]}; "
            "use ids of the source's class_names"
        )
    return ids


class Source:
    """A dataset to distil: class names, shapes, and streamed uint8 batches per split.

    Built by :func:`d3fmt.sources.open_source`; the train split and the test split are
    each a part plus a sorted array of its record ids (a holdout carves both out of the
    same part, disjointly).
    """

    def __init__(self, info: SourceInfo, train: tuple[Part, np.ndarray],
                 test: tuple[Part, np.ndarray] | None, bad: BadImages):
        self.info = info
        self._splits = {"train": train, "test": test}
        self._bad = bad

    @property
    def skipped(self) -> int:
        """Bad images skipped so far (only with ``skip_bad=True``; 0 otherwise)."""
        return len(self._bad.seen)

    @property
    def skipped_files(self) -> list[str]:
        """Where the skipped images are (file path, or shard:member), in the order found."""
        return list(self._bad.seen)

    def __repr__(self) -> str:
        info = self.info
        return f"Source({info.name!r}, classes={info.num_classes}, shape={info.image_shape})"

    def _records(self, split: str, classes) -> tuple[Part, np.ndarray]:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use 'train' or 'test'")
        entry = self._splits[split]
        if entry is None:
            raise ConfigError(
                f"source {self.info.name} has no test split; pass a test source (--test) "
                "or a holdout fraction"
            )
        part, ids = entry
        wanted = check_class_ids(classes, self.info.num_classes)
        if wanted is not None:
            ids = ids[np.isin(part.labels[ids], wanted)]
        return part, ids

    def labels(self, split: str = "train") -> np.ndarray:
        """The labels of a split's records, in the source's order (int64 [N]); reads no image."""
        part, ids = self._records(split, None)
        return np.asarray(part.labels[ids], dtype=np.int64)

    def take(self, positions: np.ndarray, split: str = "train") -> np.ndarray:
        """uint8 images [n, C, H, W] of the records at ``positions`` (indices into
        :meth:`labels`), in that order. An unreadable image is a SourceError naming it,
        whatever the bad-image policy: a chosen record cannot silently go missing."""
        part, ids = self._records(split, None)
        return SplitView(part, ids, self.info.image_shape)[np.asarray(positions, dtype=np.int64)]

    def iter_batches(self, split: str = "train", classes=None, batch_size: int = 256
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(images uint8 [N, C, H, W], labels int64 [N])`` in the source's fixed
        order. Every batch has ``batch_size`` items except the last. With ``classes``,
        only records of those global class ids are decoded (other files are not read)."""
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        part, ids = self._records(split, classes)   # options are checked now, not lazily
        return self._stream(part, ids, int(batch_size))

    def _stream(self, part: Part, ids: np.ndarray, batch_size: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        held_x: list[np.ndarray] = []
        held_y: list[np.ndarray] = []
        held = 0
        for got, images in part.read(ids, batch_size, self._bad):
            if held == 0 and len(got) == batch_size:   # the common case: no copy
                yield images, part.labels[got]
                continue
            held_x.append(images)
            held_y.append(part.labels[got])
            held += len(got)
            while held >= batch_size:
                x = np.concatenate(held_x)   # [held, C, H, W]
                y = np.concatenate(held_y)   # [held]
                yield x[:batch_size], y[:batch_size]
                held_x, held_y = [x[batch_size:].copy()], [y[batch_size:]]   # drop x's base
                held -= batch_size
        if held:
            yield np.concatenate(held_x), np.concatenate(held_y)

    def load(self, split: str = "train", classes=None) -> tuple[np.ndarray, np.ndarray]:
        """All images of a split (or of a class subset) in one array: for small sources
        or one federated subset. Allocated once at full size, filled batch by batch."""
        part, ids = self._records(split, classes)
        c, h, w = self.info.image_shape
        x = np.empty((len(ids), c, h, w), dtype=np.uint8)   # [N, C, H, W]
        y = np.empty((len(ids),), dtype=np.int64)           # [N]
        n = 0
        for got, images in part.read(ids, 256, self._bad):
            x[n:n + len(got)] = images
            y[n:n + len(got)] = part.labels[got]
            n += len(got)
        return x[:n], y[:n]

    def view(self, split: str = "test", classes=None) -> SplitView | tuple[np.ndarray, np.ndarray]:
        """A split for batch-wise reading: on a cached source (parts that can read any
        records cheaply: ``Part.random_access``) a :class:`SplitView` whose slices are read
        when asked for, so a test split is streamed in batches, never held; elsewhere
        :meth:`load`'s arrays. Either way ``(images, labels)`` with ``len``, ``shape`` and
        ``images[a:b]`` -> uint8 [b - a, C, H, W]."""
        part, ids = self._records(split, classes)
        if not getattr(part, "random_access", False):
            return self.load(split, classes)
        ids = part.drop_bad(ids, self._bad)   # strict: raises now, as a full read would
        return SplitView(part, ids, self.info.image_shape), part.labels[ids]

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Records per class (int64 [num_classes]); bad images not yet found are counted."""
        part, ids = self._records(split, None)
        return np.bincount(part.labels[ids], minlength=self.info.num_classes).astype(np.int64)


class SplitView:
    """uint8 images [N, C, H, W] of one split read a slice at a time from a random-access
    part (the decoded-image cache): ``len``, ``shape``, ``dtype`` and ``view[a:b]``."""

    dtype = np.dtype(np.uint8)

    def __init__(self, part: Part, ids: np.ndarray, image_shape):
        self.part, self.ids = part, ids
        self.shape = (len(ids), *(int(v) for v in image_shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s) -> np.ndarray:
        """``view[a:b]``, ``view[i]`` or ``view[index_array]`` (the records in that order),
        read from the part when asked for."""
        if isinstance(s, (int, np.integer)):
            return self[np.asarray([s])][0]
        if not isinstance(s, slice):
            index = np.asarray(s)
            if index.dtype == bool or index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                raise TypeError("a SplitView is read by slices, integers or 1-D integer index arrays")
            order = np.argsort(index, kind="stable")  # read in file order, hand back in the order asked
            out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
            out[order] = self._read(self.ids[index[order]])
            return out
        return self._read(self.ids[s])

    def _read(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), *self.shape[1:]), dtype=np.uint8)   # [n, C, H, W]
        n = 0
        for got, images in self.part.read(ids, max(1, len(ids)), BadImages(skip=False)):
            out[n:n + len(got)] = images
            n += len(got)
        return out


@dataclass
class SourceParts:
    """What one source kind's opener found, before the test split is resolved."""

    kind: str                  # "imagefolder" | "webdataset" | "idx" | "npz" | "digits"
    name: str                  # e.g. "imagefolder:/data/x (train/)"
    class_names: list[str]
    channels: int              # C after conversion
    side: int                  # H == W after resizing
    train: Part
    test: Part | None          # the source's own held-out part, if it has one
    test_name: str | None      # how that part is called, e.g. "val/", "t10k", "x_test"
    content_hash: str
    cache_stamp: str = ""      # the decoded-image cache's identity (hashing.FileHashes.stamp); "": content_hash
