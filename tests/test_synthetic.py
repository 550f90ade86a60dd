"""Generated data: the shapes ImageFolder, its CLI, and the small shard/npz/IDX helpers."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d3fmt.errors import ConfigError
from d3fmt.sources.synthetic import (
    MAX_CLASSES,
    make_idx_dir,
    make_npz,
    make_shapes_folder,
    make_webdataset_shards,
    render_class,
    shape_classes,
)

REPO = Path(__file__).resolve().parents[1]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_shapes_folder_layout(tmp_path):
    root = make_shapes_folder(tmp_path / "s", num_classes=5, per_class=4, image_size=20,
                              val_per_class=2)
    names = [c.name for c in shape_classes(5)]
    assert sorted(p.name for p in (root / "train").iterdir()) == names
    assert sorted(p.name for p in (root / "val").iterdir()) == names
    assert len(list((root / "train" / names[3]).glob("*.png"))) == 4
    assert len(list((root / "val" / names[3]).glob("*.png"))) == 2
    with Image.open(root / "train" / names[0] / "00000.png") as im:
        assert im.mode == "RGB" and im.size == (20, 20)
    grey = make_shapes_folder(tmp_path / "g", num_classes=2, per_class=1, image_size=8,
                              val_per_class=0, rgb=False)
    assert not (grey / "val").exists()
    with Image.open(next((grey / "train").rglob("*.png"))) as im:
        assert im.mode == "L"


def test_shapes_are_deterministic_and_worker_independent(tmp_path):
    kw = dict(num_classes=4, per_class=3, image_size=16, val_per_class=1)
    one = _tree_bytes(make_shapes_folder(tmp_path / "a", seed=5, **kw))
    two = _tree_bytes(make_shapes_folder(tmp_path / "b", seed=5, workers=2, **kw))
    other = _tree_bytes(make_shapes_folder(tmp_path / "c", seed=6, **kw))
    assert one == two
    assert one.keys() == other.keys() and one != other
    assert len(set(one.values())) == len(one)          # no two pictures alike


def test_class_layout_varies_shape_and_colour():
    small = shape_classes(10)
    assert len({c.shape for c in small}) >= 3 and len({c.colour for c in small}) >= 3
    assert {c.style for c in small} == {"solid"}
    big = shape_classes(MAX_CLASSES)
    assert len({c.name for c in big}) == MAX_CLASSES
    assert len({(c.shape, c.colour, c.style) for c in big}) == MAX_CLASSES
    names = [c.name for c in big]
    assert names == sorted(names)                      # directory order is class order
    for bad in (1, MAX_CLASSES + 1):
        with pytest.raises(ConfigError):
            shape_classes(bad)


def test_shapes_are_learnable_but_not_trivial():
    """1-NN on raw pixels beats chance clearly but is far from perfect; the mean colour
    alone does not give the class away (it cannot separate shapes)."""
    from sklearn.neighbors import KNeighborsClassifier

    classes = shape_classes(10)

    def data(split, n):
        x = np.concatenate([render_class(c, n, 16, 0, split) for c in classes]).astype(np.float32)
        return x, np.repeat(np.arange(10), n)

    xt, yt = data("train", 40)
    xv, yv = data("val", 15)
    pixels = KNeighborsClassifier(1).fit(xt.reshape(len(xt), -1), yt).score(xv.reshape(len(xv), -1), yv)
    colour = KNeighborsClassifier(5).fit(xt.mean((1, 2)), yt).score(xv.mean((1, 2)), yv)
    assert 0.2 < pixels < 0.85
    assert colour < 0.6


def test_make_shapes_cli(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, str(REPO / "tools" / "make_shapes.py"), str(out),
                          "--classes", "3", "--per-class", "2", "--val-per-class", "1",
                          "--size", "12", "--workers", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote 9 images" in run.stdout
    assert len(list(out.rglob("*.png"))) == 9
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "make_shapes.py"), str(out),
                          "--classes", "5000"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("Error:") and "Traceback" not in bad.stderr


def test_webdataset_helper_writes_shards(tmp_path):
    pattern = make_webdataset_shards(tmp_path, num_classes=2, per_class=5, image_size=8,
                                     samples_per_shard=4)
    assert pattern == str(tmp_path / "shard-{000..002}.tar")
    names = []
    for s in range(3):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar") as tar:
            names += tar.getnames()
    assert len(names) == 20 and sum(n.endswith(".cls") for n in names) == 10
    assert (tmp_path / "classes.json").is_file()


def test_npz_and_idx_helpers(tmp_path):
    path = make_npz(tmp_path / "x.npz", num_classes=3, per_class=2, image_size=6,
                    test_per_class=1, rgb=True, layout="NCHW")
    with np.load(path, allow_pickle=False) as data:
        assert data["x"].shape == (6, 3, 6, 6) and data["x_test"].shape == (3, 3, 6, 6)
        assert data["y"].tolist() == [0, 0, 1, 1, 2, 2] and data["class_names"].dtype.kind == "U"
    root = make_idx_dir(tmp_path / "idx", num_classes=3, per_class=2, test_per_class=1,
                        image_size=5)
    raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">4B3I", raw[:16]) == (0, 0, 8, 3, 6, 5, 5) and len(raw) == 16 + 150
    labels = gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert sorted(labels[8:]) == [0, 1, 2]
