"""Generated labelled images for tests, demos and scale benchmarks (no downloads).

The main generator draws coloured geometric shapes. A class is a (shape, colour family,
style) triple; a picture of it has a random position, scale and rotation, a random
low-saturation background with a gradient and pixel noise, a random hue/saturation/value
inside the class's colour family, and sometimes a small distractor blob of any colour.
That is enough variety that a small ConvNet must learn shape *and* colour, but no single
pixel statistic gives the class away.

Classes are laid out so that small class counts vary shape and colour first:
S = min(20, max(2, ceil(sqrt(K)))) shapes, F = min(10, ceil(K / S)) colour families and
ceil(K / (S * F)) <= 5 styles; class k is (shape k % S, colour (k // S) % F, style
k // (S * F)). Up to 20 * 10 * 5 = 1000 classes (an ImageNet-shaped benchmark).

Every image is drawn from a generator seeded with (seed, split, class), so the output
does not depend on how many worker processes write it.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from d3fmt.errors import ConfigError

MAX_CLASSES = 1000
SHAPES = ("circle", "triangle", "square", "star", "cross", "pentagon", "diamond", "ellipse",
          "arrow", "heart", "hexagon", "crescent", "star4", "trapezoid", "hourglass",
          "semicircle", "lshape", "tshape", "octagon", "star8")
STYLES = ("solid", "outline", "striped", "pair", "hollow")
_HUE_NAMES = ((0, "red"), (30, "orange"), (55, "yellow"), (90, "lime"), (120, "green"),
              (165, "teal"), (190, "cyan"), (220, "azure"), (250, "blue"), (280, "violet"),
              (310, "magenta"), (340, "rose"))
_SPLIT_IDS = {"train": 0, "val": 1, "test": 1}


@dataclass(frozen=True)
class ShapeClass:
    """One class of the shapes data: what every picture of it shares."""

    index: int
    shape: str
    hue: float          # centre of the colour family, in [0, 1)
    hue_width: float    # +- jitter of the hue inside the family
    colour: str
    style: str

    @property
    def name(self) -> str:
        """Directory name: the zero-padded index first, so sorted order is class order."""
        tail = "" if self.style == "solid" else f"-{self.style}"
        return f"{self.index:04d}-{self.colour}-{self.shape}{tail}"


def shape_classes(num_classes: int) -> list[ShapeClass]:
    """The first ``num_classes`` classes of the layout described in the module docstring."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    n_shapes = min(len(SHAPES), max(2, math.ceil(math.sqrt(num_classes))))
    n_colours = min(10, math.ceil(num_classes / n_shapes))
    out = []
    for k in range(num_classes):
        f = (k // n_shapes) % n_colours
        hue = f / n_colours
        degrees = hue * 360
        colour = min(_HUE_NAMES, key=lambda h: min(abs(h[0] - degrees), 360 - abs(h[0] - degrees)))[1]
        out.append(ShapeClass(index=k, shape=SHAPES[k % n_shapes], hue=hue,
                              hue_width=0.3 / n_colours, colour=colour,
                              style=STYLES[k // (n_shapes * n_colours)]))
    return out


# --- polygons in unit coordinates (radius about 1, centred on 0) ---

def _regular(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y - 2.5], axis=1) / 16.5


def _crescent() -> np.ndarray:
    # outer unit circle, then back along a circle of radius 0.8 centred at (0.5, 0)
    a = math.atan2(0.79, 0.61)
    outer = np.linspace(a, 2 * math.pi - a, 40)
    b = math.atan2(0.79, 0.11)
    inner = np.linspace(2 * math.pi - b, b, 30)
    pts = [np.stack([np.cos(outer), np.sin(outer)], 1),
           np.stack([0.5 + 0.8 * np.cos(inner), 0.8 * np.sin(inner)], 1)]
    return np.concatenate(pts) + np.array([0.25, 0.0])


def _semicircle() -> np.ndarray:
    t = np.linspace(0, math.pi, 30)
    return np.stack([np.cos(t), np.sin(t) - 0.45], axis=1) * 1.1


_POLYGONS = {
    "circle": _regular(48),
    "triangle": _regular(3),
    "square": _regular(4, math.pi / 4),
    "star": _star(5, 0.45),
    "cross": np.array([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1),
                       (-.3, 1), (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)]),
    "pentagon": _regular(5),
    "diamond": np.array([(0, -1), (.6, 0), (0, 1), (-.6, 0)]),
    "ellipse": _regular(48) * np.array([1.0, 0.55]),
    "arrow": np.array([(-1, -.25), (.2, -.25), (.2, -.6), (1, 0), (.2, .6), (.2, .25), (-1, .25)]),
    "heart": _heart(),
    "hexagon": _regular(6),
    "crescent": _crescent(),
    "star4": _star(4, 0.4),
    "trapezoid": np.array([(-1, .6), (1, .6), (.5, -.6), (-.5, -.6)]),
    "hourglass": np.array([(-.8, -1), (.8, -1), (.12, 0), (.8, 1), (-.8, 1), (-.12, 0)]),
    "semicircle": _semicircle(),
    "lshape": np.array([(-.7, -1), (-.2, -1), (-.2, .5), (.7, .5), (.7, 1), (-.7, 1)]),
    "tshape": np.array([(-1, -1), (1, -1), (1, -.5), (.25, -.5), (.25, 1), (-.25, 1),
                        (-.25, -.5), (-1, -.5)]),
    "octagon": _regular(8, math.pi / 8),
    "star8": _star(8, 0.55),
}


def _placed(unit: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> list:
    c, s = math.cos(angle), math.sin(angle)
    rot = unit @ np.array([[c, s], [-s, c]])
    return [(float(x), float(y)) for x, y in rot * radius + np.array([cx, cy])]


def _mask(cls: ShapeClass, rng: np.random.Generator, big: int) -> Image.Image:
    """The shape's coverage at 2x resolution (mode "L", 255 = inside)."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    unit = _POLYGONS[cls.shape]
    radius = rng.uniform(0.24, 0.40) * big
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(radius * 0.8, big - radius * 0.8, size=2)
    if cls.style == "pair":
        r2 = radius * 0.55
        for dx in (-1, 1):
            ox = cx + dx * r2 * math.cos(angle) * 1.05
            oy = cy + dx * r2 * math.sin(angle) * 1.05
            draw.polygon(_placed(unit, ox, oy, r2, angle + rng.uniform(-0.3, 0.3)), fill=255)
        return mask
    pts = _placed(unit, cx, cy, radius, angle)
    if cls.style == "outline":
        draw.polygon(pts, outline=255, width=max(2, int(radius * 0.16)))
    else:
        draw.polygon(pts, fill=255)
    if cls.style == "hollow":
        draw.polygon(_placed(unit, cx, cy, radius * 0.55, angle), fill=0)
    if cls.style == "striped":
        yy, xx = np.mgrid[0:big, 0:big]
        period = max(4.0, radius * 0.35)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        stripes = (np.floor(phase) % 2 == 0).astype(np.uint8) * 255
        mask = Image.fromarray(np.minimum(np.asarray(mask), stripes))
    return mask


def _family_colour(cls: ShapeClass, rng: np.random.Generator) -> np.ndarray:
    hue = (cls.hue + rng.uniform(-cls.hue_width, cls.hue_width)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [S, S, 3]: a low-saturation base, a linear gradient, nothing else yet."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.25), rng.uniform(0.1, 0.9))
    base = np.asarray(rgb, dtype=np.float32) * 255.0
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    grad = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]   # [S, S]
    return base + grad[..., None] * rng.uniform(0, 40)


def render_shape(cls: ShapeClass, rng: np.random.Generator, size: int) -> np.ndarray:
    """One picture of a class: uint8 [size, size, 3]."""
    big = 2 * size
    img = _background(rng, size)                                          # [S, S, 3]
    cover = np.asarray(_mask(cls, rng, big).resize((size, size), Image.Resampling.BOX),
                       dtype=np.float32)[..., None] / 255.0               # [S, S, 1]
    img = img * (1 - cover) + _family_colour(cls, rng) * cover
    if rng.uniform() < 0.5:   # a distractor blob of any colour
        yy, xx = np.mgrid[0:size, 0:size]
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(0.05, 0.1) * size
        blob = (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r)[..., None]
        img = np.where(blob, rng.uniform(0, 255, size=3).astype(np.float32), img)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(3, 14))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_class(cls: ShapeClass, count: int, size: int, seed: int, split: str,
                 rgb: bool = True) -> np.ndarray:
    """``count`` pictures of a class: uint8 [count, S, S, 3] (rgb) or [count, S, S] (grey,
    Pillow's luma of the colour picture: colour families become brightness bands)."""
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], cls.index])
    out = np.stack([render_shape(cls, rng, size) for _ in range(count)]) if count else \
        np.zeros((0, size, size, 3), np.uint8)
    if rgb:
        return out
    out = out.astype(np.int32)
    luma = (out[..., 0] * 299 + out[..., 1] * 587 + out[..., 2] * 114 + 500) // 1000
    return luma.astype(np.uint8)


def _write_class(task: tuple) -> int:
    root, cls, count, size, seed, split, rgb = task
    folder = Path(root) / split / cls.name
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(render_class(cls, count, size, seed, split, rgb)):
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", format="PNG", compress_level=1)
    return count


def make_shapes_folder(root, num_classes: int = 10, per_class: int = 30, image_size: int = 32,
                       val_per_class: int = 10, seed: int = 0, rgb: bool = True,
                       workers: int = 1) -> Path:
    """Write an ImageFolder ``root/train/<class>/NNNNN.png`` (+ ``root/val/...`` when
    val_per_class > 0) of shapes pictures; returns ``root``. ``workers`` > 1 writes
    classes in parallel processes (same bytes either way)."""
    if per_class < 1 or val_per_class < 0 or not 4 <= image_size <= 1024:
        raise ConfigError("need per_class >= 1, val_per_class >= 0 and image_size in 4..1024")
    root = Path(root)
    tasks = [(str(root), cls, n, image_size, seed, split, rgb)
             for split, n in (("train", per_class), ("val", val_per_class)) if n > 0
             for cls in shape_classes(num_classes)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_class, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    else:
        for task in tasks:
            _write_class(task)
    return root


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def make_webdataset_shards(root, num_classes: int = 4, per_class: int = 8, image_size: int = 16,
                           samples_per_shard: int = 10, seed: int = 0, rgb: bool = True,
                           classes_json: bool = True, text_labels: bool = False) -> str:
    """Write webdataset shards ``root/shard-NNN.tar`` (samples ``kNNNNNN.png`` +
    ``kNNNNNN.cls``, classes interleaved in a seeded shuffle) and, when classes_json,
    ``root/classes.json``. ``.cls`` holds the integer label, or the class name when
    text_labels. Returns the brace pattern of the shards, ready for open_source."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    classes = shape_classes(num_classes)
    images = np.concatenate([render_class(c, per_class, image_size, seed, "train", rgb)
                             for c in classes])
    labels = np.repeat(np.arange(num_classes), per_class)
    order = np.random.default_rng([int(seed), 7]).permutation(len(labels))
    n_shards = math.ceil(len(order) / samples_per_shard)
    width = max(3, len(str(n_shards - 1)))
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:0{width}d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in order[s * samples_per_shard:(s + 1) * samples_per_shard].tolist():
                label = classes[labels[j]].name if text_labels else str(labels[j])
                _add(tar, f"k{j:06d}.png", _png(images[j]))
                _add(tar, f"k{j:06d}.cls", label.encode())
    if classes_json:
        (root / "classes.json").write_text(json.dumps([c.name for c in classes]))
    return str(root / f"shard-{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar")


def make_npz(path, num_classes: int = 4, per_class: int = 8, image_size: int = 16,
             test_per_class: int = 0, seed: int = 0, rgb: bool = False,
             class_names: bool = True, layout: str = "NHWC", compressed: bool = False) -> Path:
    """Write an ``.npz`` with ``x`` (uint8, layout "NHWC"/"NCHW"; grey gives [N, H, W]),
    ``y``, optional ``x_test``/``y_test`` and ``class_names``; returns the path."""
    classes = shape_classes(num_classes)
    arrays = {}
    for key, split, count in (("", "train", per_class), ("_test", "test", test_per_class)):
        if count == 0:
            continue
        x = np.concatenate([render_class(c, count, image_size, seed, split, rgb) for c in classes])
        if rgb and layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        arrays["x" + key] = x
        arrays["y" + key] = np.repeat(np.arange(num_classes, dtype=np.int64), count)
    if class_names:
        arrays["class_names"] = np.asarray([c.name for c in classes])
    path = Path(path)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def make_idx_dir(root, num_classes: int = 10, per_class: int = 6, test_per_class: int = 2,
                 image_size: int = 28, seed: int = 0, gz: bool = True) -> Path:
    """Write MNIST-style IDX files (grey shapes) into ``root``: train-* and t10k-*
    images/labels, gzip-compressed when gz; returns ``root``."""
    import gzip
    import struct

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    classes = shape_classes(num_classes)
    for prefix, split, count in (("train", "train", per_class), ("t10k", "test", test_per_class)):
        if count == 0:
            continue
        x = np.concatenate([render_class(c, count, image_size, seed, split, rgb=False) for c in classes])
        y = np.repeat(np.arange(num_classes, dtype=np.uint8), count)
        order = np.random.default_rng([int(seed), 11]).permutation(len(y))
        x, y = x[order], y[order]
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">4B3I", 0, 0, 8, 3, *x.shape) + x.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">4BI", 0, 0, 8, 1, len(y)) + y.tobytes()}
        for name, data in files.items():
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / name).write_bytes(data)
    return root
