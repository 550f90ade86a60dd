"""The decoded-image cache: built once, reused without decoding, rebuilt when the source
changes, resumed after an interruption, bad JPEGs recorded, and the same bytes as the raw tree."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from d3fmt.cli import main
from d3fmt.errors import SourceError
from d3fmt.sources import cache as cache_mod
from d3fmt.sources import imagefolder, open_source
from d3fmt.sources.cache import CacheConfig
from d3fmt.sources.images import decode_image
from d3fmt.sources.spec import prepare_cache
from d3fmt.sources.synthetic import make_shapes_folder, make_webdataset_shards


def _jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _jpeg_tree(root: Path, classes: int = 3, per_class: int = 7, val: int = 2) -> Path:
    """Full-size-ish JPEGs of varied sizes in train/ and val/."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i:03d}.jpg").write_bytes(_jpeg(rng, 40 + 3 * i, 30 + 2 * c))
    return root


def _truncate(path: Path) -> None:
    """A JPEG whose header is intact (opening works) but whose data stops early."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images decoded from ImageFolder files in this process."""
    count = {"n": 0}
    real = imagefolder.decode_image

    def counting(*args, **kw):
        count["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(imagefolder, "decode_image", counting)
    return count


def _all(src) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = src.load("train")
    tx, ty = src.load("test")
    return x, y, tx, ty


def _assert_same(a, b):
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and np.array_equal(u, v)


def test_second_open_decodes_nothing_and_gives_the_raw_bytes(tmp_path, decodes):
    root = _jpeg_tree(tmp_path / "tree")
    raw = _all(open_source(str(root), image_size=12))
    assert decodes["n"] == 27
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    first = _all(open_source(str(root), image_size=12, cache=cfg))
    assert decodes["n"] == 54                      # built: every record decoded once
    again = open_source(str(root), image_size=12, cache=cfg)
    decodes["n"] = 0
    second = _all(again)
    assert decodes["n"] == 0                       # reused: not one JPEG decoded
    _assert_same(raw, first)
    _assert_same(raw, second)
    # a class subset and streamed batches read from the cache like from the files
    cx, cy = again.load(classes=[1])
    assert np.array_equal(cx, raw[0][raw[1] == 1]) and set(cy.tolist()) == {1}
    assert sum(len(b[1]) for b in again.iter_batches(batch_size=4)) == 21
    entry, = (tmp_path / "cache").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["complete"] and manifest["records"] == {"train": 21, "test": 6}
    assert manifest["class_names"] == ["class0", "class1", "class2"] and manifest["bad"] == []
    assert manifest["content_hash"] == again.info.content_hash
    assert entry.name.startswith("imagefolder-tree-") and entry.name.endswith("-3x12x12")
    # another image size is another entry
    open_source(str(root), image_size=8, cache=cfg)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_changed_file_rebuilds_with_a_message(tmp_path, decodes, capsys):
    root = _jpeg_tree(tmp_path / "tree")
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    old = open_source(str(root), image_size=12, cache=cfg).load("train")[0]
    victim = root / "train" / "class1" / "002.jpg"
    victim.write_bytes(_jpeg(np.random.default_rng(9), 44, 32))
    capsys.readouterr()
    decodes["n"] = 0
    src = open_source(str(root), image_size=12, cache=cfg)
    err = capsys.readouterr().err
    assert "was built from different data" in err and "rebuilding" in err and err.count("\n") == 1
    assert decodes["n"] == 27
    x, y = src.load("train")
    fresh = open_source(str(root), image_size=12).load("train")[0]
    assert np.array_equal(x, fresh) and not np.array_equal(x, old)


def test_same_size_edit_of_a_big_tree_is_seen_by_its_mtime(tmp_path, decodes, capsys, monkeypatch):
    """Above FULL_BYTES_LIMIT the content hash is names + sizes only; the cache also compares
    modification times, so an image replaced by one of the same size is not served stale."""
    from d3fmt.sources import hashing

    monkeypatch.setattr(hashing, "FULL_BYTES_LIMIT", 0)  # every tree counts as big
    root = _jpeg_tree(tmp_path / "tree")
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    first = open_source(str(root), image_size=12, cache=cfg)
    old = first.load("train")[0]
    victim = root / "train" / "class1" / "002.jpg"
    size, stat = victim.stat().st_size, victim.stat()
    rng, data = np.random.default_rng(5), b""
    while len(data) != size:  # another image of exactly the same size
        data = _jpeg(rng, 46, 32)
        data = data[:size] if len(data) > size else data + b"\0" * (size - len(data))
    victim.write_bytes(data)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    decodes["n"] = 0
    src = open_source(str(root), image_size=12, cache=cfg)
    assert src.info.content_hash == first.info.content_hash  # the identity of the data did not see it...
    err = capsys.readouterr().err
    assert "files changed since it was built" in err and err.count("\n") == 1  # ...the cache did
    assert decodes["n"] == 27
    x = src.load("train")[0]
    assert np.array_equal(x, open_source(str(root), image_size=12).load("train")[0]) and not np.array_equal(x, old)
    decodes["n"] = 0  # unchanged since: reused
    open_source(str(root), image_size=12, cache=cfg).load("train")
    assert decodes["n"] == 0


def test_interrupted_build_resumes_and_never_looks_complete(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "tree")
    monkeypatch.setattr(cache_mod, "BLOCK_RECORDS", 4)
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    calls = {"n": 0, "die_after": 10}

    def dies(*args, **kw):
        calls["n"] += 1
        if calls["n"] > calls["die_after"]:
            raise KeyboardInterrupt
        return decode_image(*args, **kw)

    monkeypatch.setattr(imagefolder, "decode_image", dies)
    with pytest.raises(KeyboardInterrupt):
        open_source(str(root), image_size=12, cache=cfg)
    entry, = (tmp_path / "cache").iterdir()
    assert not (entry / "manifest.json").exists() and (entry / "build.json").exists()
    assert len((entry / "blocks.jsonl").read_text().splitlines()) == 2     # blocks of 4: two done

    calls.update(n=0, die_after=10**9)
    src = open_source(str(root), image_size=12, cache=cfg)
    assert calls["n"] == 27 - 8                    # only the blocks not logged
    assert json.loads((entry / "manifest.json").read_text())["complete"]
    _assert_same(_all(src), _all(open_source(str(root), image_size=12)))


def test_corrupt_jpegs_with_and_without_skip_bad(tmp_path, decodes):
    root = _jpeg_tree(tmp_path / "tree")
    bad_a, bad_b = root / "train" / "class0" / "003.jpg", root / "val" / "class2" / "001.jpg"
    _truncate(bad_a)
    _truncate(bad_b)
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    with pytest.raises(SourceError, match=r"2 unreadable image\(s\), first .*003\.jpg.*--skip-bad") as err:
        prepare_cache(str(root), cfg, image_size=12)
    assert "\n" not in str(err.value)
    entry, = (tmp_path / "cache").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["complete"]
    assert [(p, r, Path(w).name) for p, r, w, _ in manifest["bad"]] == [("train", 3, "003.jpg"), ("test", 5, "001.jpg")]
    assert all("truncated" in why for *_, why in manifest["bad"])

    decodes["n"] = 0
    strict = open_source(str(root), image_size=12, cache=cfg)
    with pytest.raises(SourceError, match=r"cannot decode image .*003\.jpg.*--skip-bad"):
        strict.load("train")
    x, y = strict.load("train", classes=[1, 2])    # the bad file's class is not read
    assert len(y) == 14
    skipping = open_source(str(root), image_size=12, cache=cfg, skip_bad=True)
    got = _all(skipping)
    assert decodes["n"] == 0 and skipping.skipped == 2
    assert sorted(Path(f).name for f in skipping.skipped_files) == ["001.jpg", "003.jpg"]
    raw = open_source(str(root), image_size=12, skip_bad=True)
    _assert_same(got, _all(raw))
    assert raw.skipped_files == skipping.skipped_files


def test_parallel_build_equals_serial_and_webdataset_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "BLOCK_RECORDS", 8)
    root = make_shapes_folder(tmp_path / "shapes", num_classes=3, per_class=10, image_size=16, val_per_class=2)
    serial = _all(open_source(str(root), image_size=10, cache=CacheConfig(tmp_path / "c1", workers=1)))
    status = prepare_cache(str(root), CacheConfig(tmp_path / "c2", workers=2), image_size=10)[0]
    assert status.workers == 2 and status.decoded == 36
    _assert_same(serial, _all(open_source(str(root), image_size=10, cache=CacheConfig(tmp_path / "c2"))))
    shards = make_webdataset_shards(tmp_path / "wds", num_classes=3, per_class=5, image_size=12)
    wcfg = CacheConfig(tmp_path / "c3", workers=1)
    cached = open_source(shards, cache=wcfg, holdout=0.2)
    assert prepare_cache(shards, wcfg)[0].decoded == 0
    _assert_same(_all(cached), _all(open_source(shards, holdout=0.2)))


def test_array_sources_are_not_cached(tmp_path):
    src = open_source("digits", cache=CacheConfig(tmp_path / "cache"))
    assert src.load()[0].shape[1:] == (1, 8, 8) and not (tmp_path / "cache").exists()
    with pytest.raises(Exception, match="only ImageFolder and webdataset sources are cached"):
        prepare_cache("digits", CacheConfig(tmp_path / "cache"))


def test_prepare_cli(tmp_path):
    root = _jpeg_tree(tmp_path / "tree")
    args = ["prepare", str(root), "--image-size", "12", "--cache-dir", str(tmp_path / "c"), "--workers", "1", "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "decoded 27 images" in first.output and "21 train + 6 test" in first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and "complete, nothing decoded" in second.output
    _truncate(root / "train" / "class1" / "000.jpg")
    bad = CliRunner().invoke(main, args)
    first_line, error = bad.output.splitlines()            # the rebuild notice, then one error line
    assert bad.exit_code == 4 and "rebuilding" in first_line
    assert error.startswith("Error: 1 unreadable image(s), first") and "000.jpg" in error
    skip = CliRunner().invoke(main, [*args, "--skip-bad"])
    assert skip.exit_code == 0 and "1 unreadable image skipped" in skip.output
    shutil.rmtree(tmp_path / "c")
    missing = CliRunner().invoke(main, ["prepare", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c")])
    assert missing.exit_code == 4 and "not found" in missing.output


TINY_PACK = ["--budget", "10", "--iterations", "2", "--experts", "1", "--expert-epochs", "2", "--syn-steps", "1",
             "--match-epochs", "1", "--convnet-width", "8", "--eval-epochs", "1", "--pretrain-steps", "5",
             "--device", "cpu", "-q"]


def _tensors(path):
    from d3fmt.format import read_d3

    return read_d3(path).tensors


@pytest.mark.slow
def test_pack_from_the_cache_equals_pack_from_the_tree_and_decodes_nothing(tmp_path, decodes):
    root = _jpeg_tree(tmp_path / "tree", classes=3, per_class=8, val=2)
    pack = ["pack", str(root), "--image-size", "8", *TINY_PACK]
    raw = CliRunner().invoke(main, [*pack, "-o", str(tmp_path / "raw.d3"), "--work-dir", str(tmp_path / "w1"),
                                    "--no-cache"])
    assert raw.exit_code == 0, raw.output
    assert not (tmp_path / "w1" / "sources").exists()
    first = CliRunner().invoke(main, [*pack, "-o", str(tmp_path / "c1.d3"), "--work-dir", str(tmp_path / "w2")])
    assert first.exit_code == 0, first.output
    assert len(list((tmp_path / "w2" / "sources").iterdir())) == 1      # default: <work-dir>/sources
    decodes["n"] = 0
    second = CliRunner().invoke(main, [*pack, "-o", str(tmp_path / "c2.d3"), "--work-dir", str(tmp_path / "w3"),
                                       "--cache-dir", str(tmp_path / "w2" / "sources")])
    assert second.exit_code == 0, second.output
    assert decodes["n"] == 0
    a, b, c = (_tensors(tmp_path / n) for n in ("raw.d3", "c1.d3", "c2.d3"))
    assert sorted(a) == sorted(b) == sorted(c)
    for name in a:
        assert np.array_equal(a[name], b[name]) and np.array_equal(a[name], c[name]), name
    # d3 eval on the same source and size reuses the pack's cache
    ev = CliRunner().invoke(main, ["eval", str(tmp_path / "c2.d3"), "--test", str(root), "--epochs", "1",
                                   "--width", "8", "--device", "cpu", "--no-record", "-q",
                                   "--cache-dir", str(tmp_path / "w2" / "sources")])
    assert ev.exit_code == 0, ev.output
    assert decodes["n"] == 0


def test_cached_split_view_streams_slices_equal_to_load(tmp_path, decodes):
    from d3fmt.evaluation.evaluate import test_accuracy
    from d3fmt.models.convnet import ConvNet, ConvNetConfig
    from d3fmt.sources.base import SplitView

    root = _jpeg_tree(tmp_path / "tree", classes=3, per_class=5, val=4)
    _truncate(root / "val" / "class1" / "002.jpg")
    cfg = CacheConfig(tmp_path / "cache", workers=1)
    skipping = open_source(str(root), image_size=12, cache=cfg, skip_bad=True)
    view, vy = skipping.view("test")
    x, y = skipping.load("test")
    assert isinstance(view, SplitView) and view.shape == x.shape == (11, 3, 12, 12) and len(view) == 11
    assert np.array_equal(vy, y) and np.array_equal(view[0:11], x) and np.array_equal(view[3:7], x[3:7])
    assert view[20:30].shape == (0, 3, 12, 12)
    assert np.array_equal(view[2], x[2]) and np.array_equal(view[np.array([5, 1])], x[[5, 1]])
    with pytest.raises(TypeError, match="slices"):
        view[np.zeros(11, bool)]
    net = ConvNet(ConvNetConfig(channels=3, num_classes=3, image_size=12, width=4, depth=1))
    assert test_accuracy(net, view, vy, (0.5,) * 3, (0.5,) * 3, "cpu", batch_size=4) == \
        test_accuracy(net, x, y, (0.5,) * 3, (0.5,) * 3, "cpu", batch_size=11)
    with pytest.raises(SourceError, match=r"cannot decode image .*002\.jpg"):
        open_source(str(root), image_size=12, cache=cfg).view("test")   # strict: at once, not mid-evaluation
    plain = open_source(str(root / "train"), image_size=12)   # not cached: load()'s arrays
    tx, ty = plain.view("train")
    assert isinstance(tx, np.ndarray) and np.array_equal(ty, plain.load("train")[1])


def test_cached_train_split_view_reads_picked_records_in_the_order_asked(tmp_path, monkeypatch):
    """`--compare`, `d3 baseline codecs` and `d3 eval --compare` read the train split as a view:
    the codecs' picks (integer index arrays) come from the cache, never the whole split."""
    root = _jpeg_tree(tmp_path / "tree")
    src = open_source(str(root), image_size=12, cache=CacheConfig(tmp_path / "cache", workers=1))
    x, y = src.load("train")
    view, vy = src.view("train")
    assert not isinstance(view, np.ndarray) and np.array_equal(vy, y)
    reads = []
    real_read = cache_mod.CachedPart.read

    def counting(part, ids, *args, **kw):
        reads.append(len(ids))
        return real_read(part, ids, *args, **kw)

    monkeypatch.setattr(cache_mod.CachedPart, "read", counting)
    pick = np.array([17, 2, 9, 2])
    assert np.array_equal(view[pick], x[pick]) and np.array_equal(view[5], x[5])
    assert np.array_equal(view[3:8], x[3:8])
    assert sum(reads) == len(pick) + 1 + 5  # only what was asked for
    with pytest.raises(TypeError):
        view[y == 1]
