"""Dataset sources: every kind round-trips on generated data; bad sources fail cleanly."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import tarfile
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3fmt.errors import ConfigError, SourceError
from d3fmt.sources import DEFAULT_HOLDOUT, open_source, pixel_stats
from d3fmt.sources.idx import FASHION_MNIST_DIR, FASHION_MNIST_NAMES
from d3fmt.sources.shards import expand_braces
from d3fmt.sources.spec import stratified_holdout
from d3fmt.sources.synthetic import (
    make_idx_dir,
    make_npz,
    make_shapes_folder,
    make_webdataset_shards,
    render_class,
    shape_classes,
)

BILINEAR = Image.Resampling.BILINEAR
MUTANTS, SEED_SHIFT = 12, 0   # raise these locally for a longer fuzz run (200+ passed)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x (6 train + 2 val) RGB 16x16 PNGs; treat as read-only (copy to modify)."""
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"), num_classes=3, per_class=6,
                              image_size=16, val_per_class=2, seed=1)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _png_chw(path: Path, mode: str = "RGB", size: int | None = None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size, size), BILINEAR)
        a = np.asarray(im)
    return a[None] if mode == "L" else a.transpose(2, 0, 1)


def _rows(x: np.ndarray) -> Counter:
    return Counter(row.tobytes() for row in x)


def _batches(src, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(src.iter_batches(**kw))


# --- ImageFolder ---

def test_imagefolder_train_val_round_trip(shapes):
    src = open_source(str(shapes))
    names = [c.name for c in shape_classes(3)]
    info = src.info
    assert info.class_names == names and info.num_classes == 3
    assert info.image_shape == (3, 16, 16)
    assert (info.num_train, info.num_test) == (18, 6)
    assert "train/" in info.name and "val/" in info.name
    x, y = src.load()
    assert x.dtype == np.uint8 and x.shape == (18, 3, 16, 16)
    assert y.dtype == np.int64 and y.tolist() == np.repeat(np.arange(3), 6).tolist()
    assert np.array_equal(x[7], _png_chw(shapes / "train" / names[1] / "00001.png"))
    xt, yt = src.load("test")
    assert yt.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(xt[5], _png_chw(shapes / "val" / names[2] / "00001.png"))
    assert src.class_counts("test").tolist() == [2, 2, 2]
    assert src.skipped == 0


def test_imagefolder_batches_are_fixed_size_and_match_load(shapes):
    src = open_source(str(shapes))
    batches = _batches(src, batch_size=5)
    assert [len(b[1]) for b in batches] == [5, 5, 5, 3]
    x, y = src.load()
    assert np.array_equal(np.concatenate([b[0] for b in batches]), x)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), y)


def test_flat_folder_default_holdout_is_disjoint_stratified(shapes):
    src = open_source(str(shapes / "train"))            # no train/ level: no own test split
    assert src.info.num_test == 3 and src.info.num_train == 15   # round(0.2 * 6) per class
    assert DEFAULT_HOLDOUT == 0.2 and "holdout" in src.info.name
    train, test = src.load()[0], src.load("test")[0]
    everything = open_source(str(shapes / "train"), holdout=0).load()[0]
    assert not set(_rows(train)) & set(_rows(test))
    assert _rows(train) + _rows(test) == _rows(everything)
    assert src.class_counts("test").tolist() == [1, 1, 1]
    again = open_source(str(shapes / "train")).load("test")[0]
    assert np.array_equal(again, test)                   # deterministic
    other = open_source(str(shapes / "train"), holdout=0.5, seed=3)
    assert other.info.num_test == 9


def test_holdout_zero_means_no_test_split(shapes):
    src = open_source(str(shapes / "train"), holdout=0)
    assert src.info.num_test is None and src.info.num_train == 18
    with pytest.raises(ConfigError, match="no test split"):
        next(src.iter_batches("test"))


def test_stratified_holdout_keeps_one_per_class_and_depends_on_seed():
    labels = np.repeat(np.arange(4), [1, 2, 10, 50])
    mask = stratified_holdout(labels, 0.5, seed=0)
    assert np.bincount(labels[mask], minlength=4).tolist() == [0, 1, 5, 25]
    assert not np.array_equal(mask, stratified_holdout(labels, 0.5, seed=1))
    assert np.array_equal(mask, stratified_holdout(labels, 0.5, seed=0))


def test_grey_folder_gives_one_channel(tmp_path):
    root = make_shapes_folder(tmp_path / "g", num_classes=2, per_class=3, image_size=12,
                              val_per_class=0, rgb=False)
    src = open_source(str(root))
    assert src.info.image_shape == (1, 12, 12)
    x, _ = src.load()
    name = shape_classes(2)[0].name
    assert np.array_equal(x[0], _png_chw(root / "train" / name / "00000.png", "L"))


def test_rgba_and_palette_files_become_rgb(tmp_path, shapes):
    root = _copy(shapes / "train", tmp_path / "f")
    name = shape_classes(3)[0].name
    rgba = np.random.default_rng(0).integers(0, 255, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / name / "zz_rgba.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(root / name / "zz_pal.png")
    src = open_source(str(root), holdout=0)
    x, y = src.load(classes=[0])
    assert x.shape == (8, 3, 16, 16)
    assert np.array_equal(x[-1], rgba[..., :3].transpose(2, 0, 1))     # alpha dropped
    assert np.array_equal(x[-2], _png_chw(root / name / "zz_pal.png"))


def test_grey_source_with_a_colour_file_is_rgb(tmp_path):
    root = make_shapes_folder(tmp_path / "g", num_classes=2, per_class=3, image_size=12,
                              val_per_class=0, rgb=False)
    colour = np.full((12, 12, 3), (200, 10, 10), dtype=np.uint8)
    Image.fromarray(colour).save(root / "train" / shape_classes(2)[1].name / "zz.png")
    assert open_source(str(root)).info.image_shape == (3, 12, 12)


def test_resize_down_and_up_use_pillow_bilinear(shapes):
    name = shape_classes(3)[0].name
    for side in (8, 24):
        src = open_source(str(shapes), image_size=side)
        assert src.info.image_shape == (3, side, side)
        x, _ = src.load()
        assert np.array_equal(x[0], _png_chw(shapes / "train" / name / "00000.png", size=side))
        assert src.load("test")[0].shape == (6, 3, side, side)


def test_non_square_images_default_to_shorter_side(tmp_path):
    for k in range(2):
        folder = tmp_path / "ns" / f"c{k}"
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng([k, i]).integers(0, 255, (12, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")   # 20 wide, 12 high
    src = open_source(str(tmp_path / "ns"), holdout=0)
    assert src.info.image_shape == (3, 12, 12)
    x, _ = src.load()
    with Image.open(tmp_path / "ns" / "c0" / "0.png") as im:
        want = np.asarray(im.convert("RGB").resize((12, 12), BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(x[0], want)


# --- bad images: error naming the file, or skip and count ---

def _with_bad_files(tmp_path: Path, shapes: Path) -> Path:
    root = _copy(shapes, tmp_path / "bad")
    name = shape_classes(3)[1].name
    (root / "train" / name / "zz_garbage.png").write_bytes(b"not a png at all" * 10)
    good = (root / "train" / name / "00000.png").read_bytes()
    (root / "train" / name / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    return root


def test_corrupt_image_error_names_the_file(tmp_path, shapes):
    root = _with_bad_files(tmp_path, shapes)
    with pytest.raises(SourceError, match=r"zz_(garbage|truncated)\.png.*--skip-bad") as err:
        open_source(str(root)).load()
    assert "\n" not in str(err.value)


def test_skip_bad_counts_and_skips(tmp_path, shapes):
    root = _with_bad_files(tmp_path, shapes)
    src = open_source(str(root), skip_bad=True)
    x, y = src.load()
    assert x.shape[0] == 18 and src.skipped == 2
    assert sorted(Path(f).name for f in src.skipped_files) == ["zz_garbage.png", "zz_truncated.png"]
    assert sum(len(b[1]) for b in src.iter_batches(batch_size=4)) == 18
    assert src.skipped == 2                      # counted once per file, not per pass


def test_error_raised_while_iterating_names_the_file(tmp_path, shapes):
    root = _copy(shapes, tmp_path / "late")
    src = open_source(str(root))
    victim = root / "train" / shape_classes(3)[2].name / "00003.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)     # corrupted after opening
    x, y = src.load(classes=[0, 1])             # other classes' files are not read
    assert set(y.tolist()) == {0, 1} and len(y) == 12
    with pytest.raises(SourceError, match="00003.png"):
        src.load(classes=[2])


# --- class subsets ---

def test_class_subset_iteration(shapes):
    src = open_source(str(shapes))
    x_all, y_all = src.load()
    x, y = src.load(classes=[2, 0])
    keep = np.isin(y_all, [0, 2])
    assert np.array_equal(x, x_all[keep]) and np.array_equal(y, y_all[keep])
    batches = _batches(src, classes=[1], batch_size=4)
    assert [b[1].tolist() for b in batches] == [[1, 1, 1, 1], [1, 1]]
    assert np.array_equal(src.load(classes=1)[1], np.ones(6, np.int64))
    with pytest.raises(ConfigError):
        src.iter_batches(classes=[3])            # checked when called, before iterating
    with pytest.raises(ConfigError):
        src.load(classes=[])


# --- determinism and content hash ---

def test_order_and_hash_are_deterministic_and_hash_tracks_data(tmp_path, shapes):
    root = _copy(shapes, tmp_path / "h")
    a, b = open_source(str(root)), open_source(str(root))
    assert a.info.content_hash == b.info.content_hash and len(a.info.content_hash) == 64
    for (xa, ya), (xb, yb) in zip(a.iter_batches(batch_size=7), b.iter_batches(batch_size=7)):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert open_source(str(root), image_size=8).info.content_hash == a.info.content_hash
    f = root / "val" / shape_classes(3)[0].name / "00000.png"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF                              # same size, different bytes
    f.write_bytes(bytes(data))
    changed = open_source(str(root)).info.content_hash
    assert changed != a.info.content_hash
    (f.parent / "extra.png").write_bytes(bytes(data))
    assert open_source(str(root)).info.content_hash not in (changed, a.info.content_hash)


# --- a separate test source ---

def test_separate_test_source(tmp_path, shapes):
    src = open_source(str(shapes / "train"), test=str(shapes / "val"))
    assert src.info.num_test == 6 and src.info.num_train == 18
    xt, yt = src.load("test")
    assert yt.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(xt, open_source(str(shapes)).load("test")[0])
    big = make_shapes_folder(tmp_path / "big", num_classes=3, per_class=2, image_size=20,
                             val_per_class=0, rgb=False)
    mixed = open_source(str(shapes / "train"), test=str(big))
    assert mixed.load("test")[0].shape == (6, 3, 16, 16)      # resized and made RGB
    assert mixed.info.content_hash != src.info.content_hash


def test_test_source_needs_same_classes(tmp_path, shapes):
    other = make_shapes_folder(tmp_path / "o", num_classes=4, per_class=2, image_size=16,
                               val_per_class=0)
    with pytest.raises(SourceError, match="same classes"):
        open_source(str(shapes / "train"), test=str(other))
    with pytest.raises(ConfigError):
        open_source(str(shapes / "train"), test=str(shapes / "val"), holdout=0.3)
    with pytest.raises(ConfigError):
        open_source(str(shapes), holdout=0.3)    # has its own val/


# --- webdataset shards ---

def _expected_by_label(num_classes, per_class, size, rgb=True) -> dict[int, set]:
    return {c.index: {img.tobytes() for img in
                      render_class(c, per_class, size, 0, "train", rgb).transpose(0, 3, 1, 2)}
            for c in shape_classes(num_classes)}


def test_webdataset_round_trip(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "wds", num_classes=3, per_class=5,
                                     image_size=12, samples_per_shard=4)
    assert pattern.endswith("shard-{000..003}.tar")
    src = open_source(pattern, holdout=0)
    info = src.info
    assert info.class_names == [c.name for c in shape_classes(3)]
    assert info.image_shape == (3, 12, 12) and info.num_train == 15 and info.num_test is None
    assert "4 shards" in info.name
    x, y = src.load()
    expected = _expected_by_label(3, 5, 12)
    assert np.bincount(y).tolist() == [5, 5, 5]
    for img, label in zip(x, y.tolist()):
        assert img.tobytes() in expected[label]
    xs, ys = src.load(classes=[1])
    assert np.array_equal(xs, x[y == 1]) and set(ys.tolist()) == {1}
    # the same shards as a directory, and with the default holdout
    assert np.array_equal(open_source(str(tmp_path / "wds"), holdout=0).load()[0], x)
    held = open_source(pattern)
    assert held.info.num_test == 3 and held.info.num_train == 12


def test_webdataset_labels_without_classes_json_and_as_text(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "a", num_classes=3, per_class=2,
                                     image_size=8, classes_json=False)
    assert open_source(pattern).info.class_names == ["0", "1", "2"]
    text = make_webdataset_shards(tmp_path / "b", num_classes=3, per_class=2, image_size=8,
                                  classes_json=False, text_labels=True)
    src = open_source(text, holdout=0)
    assert src.info.class_names == sorted(c.name for c in shape_classes(3))
    assert np.bincount(src.load()[1]).tolist() == [2, 2, 2]


def test_webdataset_gzip_shard_and_single_path(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "w", num_classes=2, per_class=3, image_size=8,
                                     samples_per_shard=100)
    shard = Path(expand_braces(pattern)[0])
    plain = open_source(str(shard), holdout=0).load()
    gz = tmp_path / "w" / "one.tar.gz"
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    packed = open_source(str(gz), holdout=0).load()
    assert np.array_equal(plain[0], packed[0]) and np.array_equal(plain[1], packed[1])


def test_webdataset_bad_member_is_named_or_skipped(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "w", num_classes=2, per_class=3, image_size=8,
                                     samples_per_shard=100)
    shard = Path(expand_braces(pattern)[0])
    with tarfile.open(shard, "a") as tar:
        for name, data in (("zbad.png", b"garbage" * 9), ("zbad.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match=r"shard-000\.tar:zbad\.png"):
        open_source(pattern, holdout=0).load()
    src = open_source(pattern, holdout=0, skip_bad=True)
    assert len(src.load()[1]) == 6 and src.skipped == 1


def test_brace_expansion():
    assert expand_braces("d/s-{08..11}.tar") == ["d/s-08.tar", "d/s-09.tar", "d/s-10.tar", "d/s-11.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# --- IDX ---

def _idx_arrays(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def raw(name):
        for path in (root / name, root / (name + ".gz")):
            if path.exists():
                data = path.read_bytes()
                return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    images = raw(f"{prefix}-images-idx3-ubyte")
    n, h, w = struct.unpack(">3I", images[4:16])
    labels = raw(f"{prefix}-labels-idx1-ubyte")
    return (np.frombuffer(images[16:], np.uint8).reshape(n, 1, h, w),
            np.frombuffer(labels[8:], np.uint8).astype(np.int64))


def test_fashion_mnist_idx(tmp_path):
    """The real files when installed (60000/10000); else a small directory built here."""
    if FASHION_MNIST_DIR.is_dir():
        root, n_train, n_test = FASHION_MNIST_DIR, 60000, 10000
    else:
        root = make_idx_dir(tmp_path / "fashion-mnist", per_class=6, test_per_class=2)
        n_train, n_test = 60, 20
    src = open_source(str(root))
    info = src.info
    assert info.class_names == FASHION_MNIST_NAMES and info.image_shape == (1, 28, 28)
    assert (info.num_train, info.num_test) == (n_train, n_test)
    assert src.class_counts().sum() == n_train and src.class_counts("test").sum() == n_test
    x, y = next(src.iter_batches(batch_size=256))
    first_x, first_y = _idx_arrays(root, "train")
    assert x.shape == (min(256, n_train), 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x[:5], first_x[:5]) and np.array_equal(y, first_y[:len(y)])
    xt, yt = next(src.iter_batches("test", batch_size=10))
    assert np.array_equal(xt, _idx_arrays(root, "t10k")[0][:10])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    root = make_idx_dir(tmp_path / "digits-idx", num_classes=4, per_class=5, test_per_class=3,
                        image_size=12, gz=gz)
    src = open_source(str(root))
    assert src.info.class_names == ["0", "1", "2", "3"]
    assert (src.info.num_train, src.info.num_test) == (20, 12)
    x, y = src.load()
    want_x, want_y = _idx_arrays(root, "train")
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    xs, ys = src.load("test", classes=[3])
    tx, ty = _idx_arrays(root, "t10k")
    assert np.array_equal(xs, tx[ty == 3]) and ys.tolist() == [3, 3, 3]
    assert open_source(str(root), image_size=6).load()[0].shape == (20, 1, 6, 6)


# --- npz ---

@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_round_trip(tmp_path, layout):
    path = make_npz(tmp_path / "d.npz", num_classes=3, per_class=4, image_size=10,
                    test_per_class=2, rgb=True, layout=layout)
    src = open_source(str(path))
    info = src.info
    assert info.class_names == [c.name for c in shape_classes(3)]
    assert info.image_shape == (3, 10, 10) and (info.num_train, info.num_test) == (12, 6)
    with np.load(path, allow_pickle=False) as data:
        want = data["x"] if layout == "NCHW" else data["x"].transpose(0, 3, 1, 2)
        x, y = src.load()
        assert np.array_equal(x, want) and np.array_equal(y, data["y"])
        assert np.array_equal(src.load("test")[1], data["y_test"])


def test_npz_grey_compressed_float_and_aliases(tmp_path):
    path = make_npz(tmp_path / "g.npz", num_classes=2, per_class=3, image_size=8,
                    class_names=False, compressed=True)
    src = open_source(str(path), holdout=0)
    assert src.info.image_shape == (1, 8, 8) and src.info.class_names == ["0", "1"]
    with np.load(path, allow_pickle=False) as data:
        x = data["x"]
        assert np.array_equal(src.load()[0][:, 0], x)
        np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32) / 255.0, y_train=data["y"])
    floats = open_source(str(tmp_path / "f.npz"), holdout=0).load()[0]
    assert np.array_equal(floats[:, 0], x)
    resized = open_source(str(path), image_size=5, holdout=0).load()[0]
    want = np.asarray(Image.fromarray(x[0]).resize((5, 5), BILINEAR))
    assert np.array_equal(resized[0, 0], want)


# --- digits ---

def test_digits_builtin():
    from sklearn.datasets import load_digits

    src = open_source("digits")
    info = src.info
    assert info.num_classes == 10 and info.image_shape == (1, 8, 8)
    counts = np.bincount(load_digits().target)
    assert info.num_test == int(sum(round(0.2 * c) for c in counts))
    assert info.num_train + info.num_test == 1797
    assert info.content_hash == open_source("digits").info.content_hash
    train, test = src.load()[0], src.load("test")[0]
    full = open_source("digits", holdout=0).load()[0]
    assert _rows(train) + _rows(test) == _rows(full)      # a partition, no overlap
    assert full.max() == 255 and full.min() == 0
    assert open_source("digits", seed=1).load("test")[0].tobytes() != test.tobytes()
    assert open_source("digits", image_size=16).info.image_shape == (1, 16, 16)
    x, _ = next(src.iter_batches(batch_size=64))
    x[:] = 0                                  # batches are the caller's own arrays
    assert np.array_equal(src.load()[0], train)


def test_batches_are_writable_for_every_kind(tmp_path, shapes):
    specs = [str(shapes), "digits",
             str(make_npz(tmp_path / "n.npz", num_classes=2, per_class=3, image_size=8)),
             str(make_idx_dir(tmp_path / "i", num_classes=2, per_class=3, image_size=8)),
             make_webdataset_shards(tmp_path / "w", num_classes=2, per_class=3, image_size=8)]
    for spec in specs:
        src = open_source(spec, holdout=0)
        for batch_size in (1, 4, 1000):
            x, y = next(src.iter_batches(batch_size=batch_size))
            assert x.flags.writeable and x.flags.c_contiguous and y.flags.writeable, spec


# --- pixel statistics ---

def test_pixel_stats_match_numpy(shapes):
    src = open_source(str(shapes))
    x, y = src.load()
    mean, std = pixel_stats(src)
    pixels = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    assert np.allclose(mean, pixels.mean(1)) and np.allclose(std, pixels.std(1))
    sub_mean, _ = pixel_stats(src, classes=[1])
    assert np.allclose(sub_mean, (x[y == 1].transpose(1, 0, 2, 3).reshape(3, -1) / 255.0).mean(1))


# --- streaming memory bound ---

def _peak_while_iterating(src, batch_size: int) -> tuple[int, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        n = 0
        for x, _ in src.iter_batches(batch_size=batch_size):
            n += len(x)
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_iteration_streams_with_bounded_memory(tmp_path):
    """Decoded sizes ~2 MB each, batches 1/40 of that: iterating holds a few batches."""
    folder = make_shapes_folder(tmp_path / "f", num_classes=4, per_class=40, image_size=64,
                                val_per_class=0)
    npz = make_npz(tmp_path / "m.npz", num_classes=4, per_class=40, image_size=64, rgb=True)
    idx = make_idx_dir(tmp_path / "i", num_classes=4, per_class=600, test_per_class=0,
                       image_size=28)
    wds = make_webdataset_shards(tmp_path / "w", num_classes=4, per_class=40, image_size=64,
                                 samples_per_shard=40)
    for spec, batch_size in ((str(folder), 4), (str(npz), 4), (str(idx), 60), (wds, 4)):
        src = open_source(spec, holdout=0)
        decoded = src.info.num_train * int(np.prod(src.info.image_shape))
        batch_bytes = batch_size * int(np.prod(src.info.image_shape))
        assert decoded > 1_500_000 and decoded >= 40 * batch_bytes
        peak, n = _peak_while_iterating(src, batch_size)
        assert n == src.info.num_train
        assert peak < 6 * batch_bytes and peak < decoded / 6, (spec, peak, decoded)


# --- bad sources ---

def _one_class(tmp_path):
    make_shapes_folder(tmp_path / "one", num_classes=2, per_class=2, image_size=8,
                       val_per_class=0)
    shutil.rmtree(tmp_path / "one" / "train" / shape_classes(2)[1].name)
    return str(tmp_path / "one")


def _empty_class(tmp_path):
    make_shapes_folder(tmp_path / "e", num_classes=2, per_class=2, image_size=8, val_per_class=0)
    (tmp_path / "e" / "train" / "zz-empty" / "sub").mkdir(parents=True)
    (tmp_path / "e" / "train" / "zz-empty" / "notes.txt").write_text("no images here")
    return str(tmp_path / "e")


def _mismatched_xy(tmp_path):
    np.savez(tmp_path / "m.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(9) % 2)
    return str(tmp_path / "m.npz")


def _labels_out_of_range(tmp_path):
    np.savez(tmp_path / "r.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.array([0, 1, 2, 1]),
             class_names=np.array(["a", "b"]))
    return str(tmp_path / "r.npz")


def _idx_test_label_out_of_range(tmp_path):
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=2, test_per_class=1,
                        image_size=8, gz=False)
    path = root / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] = 7
    path.write_bytes(bytes(data))
    return str(root)


def _wrong_idx_magic(tmp_path):
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=2, image_size=8, gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])
    return str(root)


def _truncated_gz(tmp_path):
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=2, image_size=8, gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    return str(root)


def _unsupported(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    return str(tmp_path / "data.csv")


def _pickled_npz(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.array([object(), None], dtype=object), y=np.array([0, 1]))
    return str(tmp_path / "p.npz")


def _missing_shard(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "w", num_classes=2, per_class=2, image_size=8)
    return pattern.replace("{000..000}", "{000..003}")


def _not_a_tar(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"\x01" * 1000)
    return str(tmp_path / "x.tar")


def _sample_without_label(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        data = io.BytesIO()
        Image.new("RGB", (4, 4)).save(data, "PNG")
        info.size = len(data.getvalue())
        tar.addfile(info, io.BytesIO(data.getvalue()))
    return str(tmp_path / "s.tar")


def _half_idx_pair(tmp_path):
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=2, image_size=8)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    return str(root)


def _bad_classes_json(tmp_path):
    pattern = make_webdataset_shards(tmp_path / "w", num_classes=3, per_class=2, image_size=8)
    (tmp_path / "w" / "classes.json").write_text(json.dumps(["only", "two"]))
    return pattern


BAD_SOURCES = {
    "missing path": (lambda t: str(t / "nope"), "not found"),
    "empty directory": (lambda t: str(t), "no class sub-directories"),
    "empty class dir": (_empty_class, "zz-empty holds no"),
    "one class only": (_one_class, "only one class"),
    "mismatched x/y": (_mismatched_xy, "9 labels for 10 images"),
    "labels out of range": (_labels_out_of_range, "out of range"),
    "idx label out of range": (_idx_test_label_out_of_range, "out of range"),
    "wrong IDX magic": (_wrong_idx_magic, "wrong IDX magic"),
    "truncated gz": (_truncated_gz, "truncated"),
    "unsupported": (_unsupported, "unsupported source"),
    "pickled npz": (_pickled_npz, "never unpickles"),
    "missing shard": (_missing_shard, "not found"),
    "not a tar": (_not_a_tar, "cannot read shard"),
    "sample without label": (_sample_without_label, "has no .cls label"),
    "half an IDX pair": (_half_idx_pair, "without the labels"),
    "classes.json too short": (_bad_classes_json, "out of range"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_sources_fail_with_one_line_source_error(tmp_path, case):
    build, message = BAD_SOURCES[case]
    spec = build(tmp_path)
    with pytest.raises(SourceError) as err:
        open_source(spec).load()
    text = str(err.value)
    assert message in text and "\n" not in text


def test_truncated_gz_detected_while_streaming(tmp_path):
    """A gzip whose trailer still looks right but whose stream is cut short."""
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=4, image_size=8, gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-8:])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        open_source(str(root)).load()


def test_float_pixels_out_of_range_fail_when_read(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.full((4, 4, 4), 3.0, np.float32), y=np.array([0, 1, 0, 1]))
    src = open_source(str(tmp_path / "f.npz"))
    with pytest.raises(SourceError, match=r"outside \[0, 1\]"):
        src.load()


def test_bad_options_are_config_errors(shapes):
    for kwargs in ({"image_size": 0}, {"image_size": 2.5}, {"holdout": 1.0}, {"holdout": -0.1}):
        with pytest.raises(ConfigError):
            open_source(str(shapes), **kwargs)
    src = open_source(str(shapes))
    with pytest.raises(ConfigError):
        next(src.iter_batches("validation"))
    with pytest.raises(ConfigError):
        next(src.iter_batches(batch_size=0))


def _mutants(data: bytes, seed: int, count: int):
    """Copies of ``data`` with a few random bytes overwritten, or cut short."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        if k % 4 == 3:
            yield data[: int(rng.integers(1, len(data)))]
            continue
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 20))).tolist():
            buf[pos] = int(rng.integers(0, 256))
        yield bytes(buf)


@pytest.mark.parametrize("kind", ["npz-deflated", "idx-gz", "tar-gz", "png"])
def test_damaged_files_give_source_errors_only(tmp_path, kind):
    """Hostile bytes: opening and reading either works or raises SourceError, nothing else."""
    if kind == "npz-deflated":
        target = make_npz(tmp_path / "d.npz", num_classes=2, per_class=3, image_size=8,
                          compressed=True)
        spec = str(target)
    elif kind == "idx-gz":
        root = make_idx_dir(tmp_path / "idx", num_classes=2, per_class=3, image_size=8)
        target, spec = root / "train-images-idx3-ubyte.gz", str(root)
    elif kind == "tar-gz":
        pattern = make_webdataset_shards(tmp_path / "w", num_classes=2, per_class=3, image_size=8)
        shard = Path(expand_braces(pattern)[0])
        target = shard.with_suffix(".tar.gz")
        target.write_bytes(gzip.compress(shard.read_bytes()))
        shard.unlink()
        spec = str(target)
    else:
        root = make_shapes_folder(tmp_path / "s", num_classes=2, per_class=2, image_size=8,
                                  val_per_class=0)
        target, spec = next((root / "train").rglob("*.png")), str(root)
    original = target.read_bytes()
    outcomes = Counter()
    for mutant in _mutants(original, seed=len(kind) + SEED_SHIFT, count=MUTANTS):
        target.write_bytes(mutant)
        try:
            src = open_source(spec, holdout=0)
            src.load()
            outcomes["ok"] += 1
        except SourceError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] >= 1, outcomes
