"""The decoded-image cache: a file source (ImageFolder, webdataset) decoded once per image size.

Decoding and resizing full-size JPEGs costs milliseconds per image; an ImageNet pass is an
hour or more on one core. The first open of a file source with a :class:`CacheConfig`
decodes every record once -- in worker processes, a block of BLOCK_RECORDS records per
task -- into one uint8 ``.npy`` array per part (``train.npy`` [N, C, S, S], ``test.npy``
for a ``val/`` tree), and every later open at the same size reads pixels from there:
:class:`CachedPart` stands in for the source's part, so everything above ``Part`` (splits,
holdouts, class subsets, bad-image policy) works unchanged and the bytes are those
``decode_image`` gives (a pack from the cache equals a pack from the raw tree, bit for bit).

Layout of one entry, ``<root>/<kind>-<name>-<digest>-<C>x<S>x<S>/`` (one per source
location and shape; ``digest`` hashes the absolute location)::

    build.json     the build plan: content hash, shape, records per part (written first)
    train.npy      uint8 [N, C, S, S], filled block by block (bad records stay zero)
    test.npy       the same for the source's own test part, when it has one
    blocks.jsonl   one line per finished block: {"part", "block", "bad": [[id, where, why]]}
    manifest.json  written last, atomically (tmp + rename), when every block is done:
                   complete flag, content hash, shape, class names, records per part, and
                   the per-record status (every unreadable record: id, file, reason)
    lock           flock'd while an entry is checked or built (parallel jobs wait)

Rules:
- Reuse: manifest complete, same content hash (see :mod:`d3fmt.sources.hashing`), shape,
  class names and record counts. A different content hash (the source changed) prints
  one line naming the entry and both hashes, and the entry is rebuilt.
- Resume: a build stopped at any point (Ctrl-C, crash, kill) keeps the blocks its log
  lists; the next open with the same plan decodes only the others. A block is logged
  only after its rows are flushed, and the manifest only after every block, so an
  interrupted build never looks complete.
- Bad images are recorded, not raised, while building; reading applies the source's
  policy (``skip_bad``): the same SourceError naming the file as the raw source, or a
  skip counted in ``Source.skipped``.
- Reads use ``pread`` into fresh arrays (no mapping stays resident); ``Source.view``
  reads a cached split a slice at a time.
- Identity is the source's content hash plus its stamp (:mod:`d3fmt.sources.hashing`):
  file names, sizes and modification times, as make and rsync compare them (a small
  source: its bytes). An image replaced by one of the same size has a new mtime and the
  entry is rebuilt; so is one whose files were copied without their times (``cp -a`` and
  ``rsync -a`` keep them). An entry written before stamps existed is rebuilt once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from d3fmt.errors import ConfigError, D3IOError, SourceError
from d3fmt.format.container import atomic_write
from d3fmt.sources.base import BadImages, Part, SourceParts, one_line
from d3fmt.sources.images import ImageDecodeError

CACHE_FORMAT = "d3fmt-image-cache/1"
CACHED_KINDS = ("imagefolder", "webdataset")
BLOCK_RECORDS = 1024   # records decoded per worker task (and logged as one block)
READ_CHUNK = 256       # images a worker decodes between writes


def cache_dir_setting(cache_dir: str | None, no_cache: bool) -> str | None:
    """A job's ``cache_dir`` setting from ``--cache-dir`` / ``--no-cache``: None (the default
    place), a directory, or "" (no cache)."""
    if no_cache and cache_dir:
        raise ConfigError("give --cache-dir or --no-cache, not both")
    return "" if no_cache else cache_dir


@dataclass
class CacheConfig:
    """Where decoded images are kept and how many processes decode them."""

    root: str | Path                 # entries go below this directory
    workers: int | None = None       # decoding processes; None: the CPUs this process may use
    progress: bool = False           # a progress bar while building

    def worker_count(self) -> int:
        if self.workers is not None:
            return max(1, int(self.workers))
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class BadRecord:
    part: str      # "train" | "test"
    record: int    # id in that part
    where: str     # file path, or shard:member
    reason: str


@dataclass
class CacheStatus:
    """One entry after :func:`ensure_cache`: where it is, what it holds, what this call did."""

    path: Path
    records: dict[str, int]          # part -> records
    bad: list[BadRecord]
    decoded: int = 0                 # records decoded by this call (0: reused as it was)
    seconds: float = 0.0             # wall time of the decoding
    workers: int = 0                 # processes that decoded
    resumed_blocks: int = 0          # blocks an earlier, interrupted build had finished

    @property
    def built(self) -> bool:
        return self.decoded > 0

    def bad_of(self, part: str) -> dict[int, BadRecord]:
        return {b.record: b for b in self.bad if b.part == part}


class _Recording(BadImages):
    """Skips every bad image, keeping its reason (for the manifest's per-record status)."""

    def __init__(self):
        super().__init__(skip=True)
        self.reasons: dict[str, str] = {}

    def handle(self, where: str, err: BaseException) -> None:
        self.reasons.setdefault(where, one_line(err))
        super().handle(where, err)


@dataclass
class _Block:
    """One worker task: decode ``part`` (a few records, ids 0..n-1) into rows start.. of ``path``."""

    path: str
    part_name: str
    index: int
    start: int
    part: Part


def _decode_block(block: _Block) -> list[list]:
    """Decode one block into the array (flushed before returning); its bad records."""
    bad = _Recording()
    local = np.arange(len(block.part.labels), dtype=np.int64)
    out = np.load(block.path, mmap_mode="r+")
    got_all = np.zeros(len(local), dtype=bool)
    for got, images in block.part.read(local, READ_CHUNK, bad):
        out[block.start + got] = images
        got_all[got] = True
    out.flush()
    del out
    rows = []
    for j in np.flatnonzero(~got_all).tolist():
        where = block.part.where(j)
        rows.append([block.start + j, where, bad.reasons.get(where, "unreadable")])
    return rows


# --- the entry on disk ---

def entry_name(kind: str, location: str, channels: int, side: int) -> str:
    """``imagefolder-imagenet-1a2b3c4d5e-3x64x64``: readable, unique per location and shape."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(location.rstrip("/")).name)[:40].strip("_.") or "source"
    digest = hashlib.blake2b(f"{kind}:{location}".encode(), digest_size=5).hexdigest()
    return f"{kind}-{label}-{digest}-{channels}x{side}x{side}"


def _source_parts(parts: SourceParts) -> dict[str, Part]:
    return {"train": parts.train, **({"test": parts.test} if parts.test is not None else {})}


def _plan(parts: SourceParts) -> dict:
    return {"format": CACHE_FORMAT, "kind": parts.kind, "content_hash": parts.content_hash,
            "stamp": parts.cache_stamp or parts.content_hash,
            "channels": parts.channels, "side": parts.side, "block_records": BLOCK_RECORDS,
            "records": {name: len(p.labels) for name, p in _source_parts(parts).items()}}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    """Atomic: a reader sees the old file, or the whole new one."""
    atomic_write(path, json.dumps(value).encode("utf-8"))


def _logged_blocks(entry: Path) -> dict[tuple[str, int], list]:
    """(part, block) -> bad rows, from the lines of blocks.jsonl that were written whole."""
    done: dict[tuple[str, int], list] = {}
    try:
        lines = (entry / "blocks.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            row = json.loads(line)
            done[(str(row["part"]), int(row["block"]))] = list(row["bad"])
        except (ValueError, KeyError, TypeError):
            continue   # a line cut short by a crash: that block is decoded again
    return done


def _array_ok(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.dtype == np.uint8 and tuple(arr.shape) == shape


@contextmanager
def _locked(entry: Path, progress: bool):
    """Hold the entry's lock: one process checks or builds it at a time."""
    with open(entry / "lock", "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process building the image cache {entry}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reusable(entry: Path, plan: dict, class_names: list[str]) -> bool:
    """True when the manifest says complete for exactly this plan; prints why not when
    an existing entry is given up."""
    manifest = _read_json(entry / "manifest.json")
    if manifest is None or not manifest.get("complete"):
        return False
    old = manifest.get("content_hash")
    if old != plan["content_hash"]:
        print(f"image cache {entry} was built from different data (content hash {str(old)[:12]} != "
              f"{plan['content_hash'][:12]}): the source changed; rebuilding it", file=sys.stderr)
        return False
    if manifest.get("stamp") != plan["stamp"]:
        print(f"image cache {entry}: the source's files changed since it was built (names, sizes or "
              f"modification times); rebuilding it", file=sys.stderr)
        return False
    same = all(manifest.get(k) == plan[k] for k in ("format", "kind", "channels", "side", "records")) \
        and manifest.get("class_names") == class_names
    c, s = plan["channels"], plan["side"]
    arrays = all(_array_ok(entry / f"{name}.npy", (n, c, s, s)) for name, n in plan["records"].items())
    if not (same and arrays):
        print(f"image cache {entry} does not match the source or is damaged; rebuilding it", file=sys.stderr)
    return same and arrays


def _start(entry: Path, plan: dict) -> dict[tuple[str, int], list]:
    """Blocks already done by an interrupted build of the same plan; else a fresh entry."""
    c, s = plan["channels"], plan["side"]
    if _read_json(entry / "build.json") == plan and all(
            _array_ok(entry / f"{name}.npy", (n, c, s, s)) for name, n in plan["records"].items()):
        return _logged_blocks(entry)
    for name in ("manifest.json", "blocks.jsonl", "build.json", "train.npy", "test.npy"):
        (entry / name).unlink(missing_ok=True)
    for name, n in plan["records"].items():
        np.lib.format.open_memmap(entry / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(n, c, s, s)).flush()
    _write_json(entry / "build.json", plan)
    return {}


def _todo(parts: SourceParts, done: dict) -> list[tuple[str, int, int, int]]:
    """(part, block, start, stop) of every block not done yet."""
    todo = []
    for name, part in _source_parts(parts).items():
        n = len(part.labels)
        todo += [(name, index, start, min(n, start + BLOCK_RECORDS))
                 for index, start in enumerate(range(0, n, BLOCK_RECORDS)) if (name, index) not in done]
    return todo


def _blocks(parts: SourceParts, entry: Path, todo: list) -> Iterator[_Block]:
    """The worker tasks, made one at a time (a block's part holds only its own records)."""
    by_name = _source_parts(parts)
    for name, index, start, stop in todo:
        ids = np.arange(start, stop, dtype=np.int64)
        yield _Block(str(entry / f"{name}.npy"), name, index, start, by_name[name].select(ids))


def _run_blocks(blocks: Iterator[_Block], workers: int, on_done) -> None:
    """Decode every block, in this process (workers == 1) or in a pool, calling
    ``on_done(block, bad_rows)`` as each one finishes. At most 2 x workers in flight."""
    if workers <= 1:
        for block in blocks:
            on_done(block, _decode_block(block))
        return
    pending = iter(blocks)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        running = {}
        try:
            while True:
                for block in pending:
                    running[pool.submit(_decode_block, block)] = block
                    if len(running) >= 2 * workers:
                        break
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_done(running.pop(future), future.result())
        except BaseException:
            for future in running:
                future.cancel()
            raise


def _build(parts: SourceParts, entry: Path, plan: dict, cfg: CacheConfig) -> CacheStatus:
    from d3fmt.progress import bar

    done = _start(entry, plan)
    resumed = len(done)
    todo = _todo(parts, done)
    records = sum(stop - start for _, _, start, stop in todo)
    workers = min(cfg.worker_count(), len(todo)) or 1
    started = time.perf_counter()
    with open(entry / "blocks.jsonl", "a", encoding="utf-8") as log, \
            bar(not cfg.progress, total=records, desc=f"decoding into {entry.name}", unit="img") as pbar:
        def on_done(block: _Block, bad_rows: list) -> None:
            log.write(json.dumps({"part": block.part_name, "block": block.index, "bad": bad_rows}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            done[(block.part_name, block.index)] = bad_rows
            pbar.update(len(block.part.labels))

        _run_blocks(_blocks(parts, entry, todo), workers, on_done)
    seconds = time.perf_counter() - started
    order = list(plan["records"])   # train first, then test; blocks in order
    bad = [BadRecord(name, int(r), str(w), str(why))
           for (name, _), rows in sorted(done.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))
           for r, w, why in rows]
    _write_json(entry / "manifest.json", {
        **plan, "complete": True, "source": parts.name, "class_names": list(parts.class_names),
        "bad": [[b.part, b.record, b.where, b.reason] for b in bad],
        "built_seconds": round(seconds, 3), "workers": workers})
    return CacheStatus(entry, dict(plan["records"]), bad, records, seconds, workers, resumed)


def _status(entry: Path, plan: dict) -> CacheStatus:
    manifest = _read_json(entry / "manifest.json") or {}
    bad = [BadRecord(str(p), int(r), str(w), str(why)) for p, r, w, why in manifest.get("bad", [])]
    return CacheStatus(entry, dict(plan["records"]), bad)


def ensure_cache(parts: SourceParts, location: str, cfg: CacheConfig) -> CacheStatus:
    """The complete cache entry of an opened file source: reused, resumed or built."""
    entry = Path(cfg.root) / entry_name(parts.kind, location, parts.channels, parts.side)
    plan = _plan(parts)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        with _locked(entry, cfg.progress):
            if _reusable(entry, plan, list(parts.class_names)):
                return _status(entry, plan)
            return _build(parts, entry, plan, cfg)
    except OSError as exc:
        raise D3IOError(f"cannot write the image cache {entry} ({one_line(exc)}); free space there "
                        "or pass another --cache-dir (or --no-cache)") from None


class CachedPart(Part):
    """A part read from its cache array: the same records, labels and bad images."""

    def __init__(self, path: Path, labels: np.ndarray, bad: dict[int, BadRecord]):
        self.path = path
        self.labels = labels
        mm = np.load(path, mmap_mode="r")   # [N, C, S, S], header checked
        self.shape = tuple(mm.shape)
        self.offset = int(mm.offset)
        del mm
        self.row_bytes = int(np.prod(self.shape[1:]))
        self.bad = bad
        self.bad_ids = np.asarray(sorted(bad), dtype=np.int64)

    random_access = True   # any records are one pread per run: Source.view streams from here

    def drop_bad(self, ids: np.ndarray, bad: BadImages) -> np.ndarray:
        """``ids`` without the unreadable records, each handled by the policy ``bad``
        (strict: a SourceError naming the first)."""
        if not self.bad_ids.size:
            return ids
        hit = np.isin(ids, self.bad_ids)
        for i in ids[hit].tolist():
            bad.handle(self.bad[i].where, ImageDecodeError(self.bad[i].reason))
        return ids[~hit]

    def where(self, i: int) -> str:
        return self.bad[i].where if i in self.bad else f"{self.path}[{i}]"

    def read(self, ids: np.ndarray, chunk: int, bad: BadImages
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ids = self.drop_bad(ids, bad)
        try:
            with open(self.path, "rb", buffering=0) as f:
                for lo in range(0, len(ids), chunk):
                    part = ids[lo:lo + chunk]
                    yield part, self._rows(f, part)
        except OSError as exc:
            raise SourceError(f"cannot read the image cache {self.path} ({one_line(exc)}); delete "
                              "its directory to rebuild it") from None

    def _rows(self, f, ids: np.ndarray) -> np.ndarray:
        """uint8 [len(ids), C, S, S], one pread per run of consecutive ids."""
        out = np.empty((len(ids), *self.shape[1:]), dtype=np.uint8)
        flat = memoryview(out.reshape(-1))
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        n = 0
        for run in np.split(ids, breaks):
            want = len(run) * self.row_bytes
            f.seek(self.offset + int(run[0]) * self.row_bytes)
            got = 0
            while got < want:
                k = f.readinto(flat[n + got:n + want])
                if not k:
                    raise SourceError(f"the image cache {self.path} is truncated; delete its directory "
                                      "to rebuild it")
                got += k
            n += want
        return out


def use_cache(parts: SourceParts, location: str, cfg: CacheConfig) -> tuple[SourceParts, CacheStatus]:
    """``parts`` reading from its (ensured) cache entry instead of decoding files."""
    status = ensure_cache(parts, location, cfg)
    cached = {name: CachedPart(status.path / f"{name}.npy", part.labels, status.bad_of(name))
              for name, part in _source_parts(parts).items()}
    return replace(parts, train=cached["train"], test=cached.get("test")), status
