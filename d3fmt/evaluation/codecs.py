"""The competitor family: a balanced random real subset kept with ordinary codecs.

A .d3 file is worth having only if a model trained on it beats what a user could keep in
the same bytes without us. This module is that user: it picks ``n`` random real training
images per class (deterministic by seed), stores them with one of a family of codecs
(Pillow, zstandard; torch-free), counts exactly the bytes that would be stored, and
decodes them back to the uint8 images [N, C, H, W] a user would train on.

**What is counted.** The bytes of a codec are its image blobs plus one label list:

- the label list is one uint8 per image (``<u2`` little-endian when there are more than
  256 classes), uncompressed, in the stored image order (N or 2N bytes);
- the image shape (C, H, W) and the codec's settings are known to the user and not
  counted (as for a .d3 file's readers, which know the format).

The codecs (``CODECS``; names are what ``--codecs`` takes):

======================  ===================================================================
``png``                 one PNG file per image, Pillow's default settings (mode L or RGB);
                        what ``d3 baseline random`` stores
``zstd``                all images as one raw uint8 block [N, C, H, W], zstd level 19
``post2`` .. ``post4``  k-bit posterised (``round(v * (2^k - 1) / 255)``, decoded back to
                        ``round(q * 255 / (2^k - 1))`` so black and white stay exact), one
                        byte per value, one block, zstd level 19
``webp-q30/50/75``      one WebP image per class (Pillow, lossy, quality q; grey images
                        are stored as RGB and decoded to L), its images tiled row-major in
                        a ``ceil(sqrt(n))``-column sheet, unused tiles black
``jpeg-q50/75/90``      the same sheets as baseline JPEG (Pillow, quality q, mode L or RGB)
``down2-4bit``          every image downsampled to half its side (Pillow BOX: the mean of
``down2-8bit``          each 2 x 2 block), 4-bit posterised or kept 8-bit, one block,
                        zstd 19; decoded back to H x W with Pillow bilinear (on 200
                        Fashion-MNIST images the round trip's mean error is 17.6 grey
                        levels with BOX, 20.0 with a bilinear downsample)
======================  ===================================================================

Blocks are class-major (images sorted by label, stably), as the subset is chosen.
:func:`fit_subset` finds, for one codec and a byte cap, the largest n per class whose
bytes fit (a bracketing search over n that assumes bytes grow with n, and returns an n
with ``bytes(n) <= cap < bytes(n + 1)``, always; tested to be the largest on small data).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import zstandard
from PIL import Image

from d3fmt.errors import ConfigError
from d3fmt.png import png_bytes as encode_png

ZSTD_LEVEL = 19
SHEET_MAX_SIDE = 16383  # WebP's limit on a side (JPEG's is 65535)
# `d3 eval --compare`'s default: PNG (today's baseline) and, of each other kind, the variant that
# holds the most images per byte on Fashion-MNIST without the coarsest loss (issue 10's table).
# Chosen by images per byte, not yet by measured accuracy.
DEFAULT_COMPARE = ("png", "post3", "webp-q50", "jpeg-q75", "down2-4bit")


# ---------------------------------------------------------------------------------------
# Single-image PNG (also d3 baseline random's format) and the pick order
# ---------------------------------------------------------------------------------------


def _pil(image: np.ndarray, what: str) -> Image.Image:
    """uint8 [C, H, W] (C = 1 or 3) -> a Pillow image in mode L or RGB."""
    if image.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(image[0]), mode="L")
    if image.shape[0] == 3:
        return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
    raise ConfigError(f"{what} needs 1 or 3 channels, the source has {image.shape[0]}; use a block codec (zstd, post3)")


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image [C, H, W] (C = 1 or 3) as a PNG file (:func:`d3fmt.png.png_bytes`)."""
    if image.shape[0] not in (1, 3):
        raise ConfigError(f"PNG needs 1 or 3 channels, the source has {image.shape[0]}; use a block codec (zstd, post3)")
    return encode_png(image.transpose(1, 2, 0))


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """PNG bytes -> uint8 [C, H, W] (what a user of the saved files would train on)."""
    with Image.open(io.BytesIO(data)) as pil:
        return _from_pil(pil, channels)


def class_orders(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class c, its positions shuffled by ``default_rng([seed, c])``: the subset with n per
    class takes the first n of each, so a class's pick does not depend on the others and the
    subset with n + 1 per class extends the one with n."""
    labels = np.asarray(labels, dtype=np.int64)
    return [np.random.default_rng([int(seed), c]).permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def subset_indices(orders: list[np.ndarray], n: int) -> np.ndarray:
    """The class-major positions of the subset with n images per class."""
    return np.concatenate([o[:n] for o in orders]).astype(np.int64)


# ---------------------------------------------------------------------------------------
# The codecs: uint8 [N, C, H, W] + labels [N] -> blobs -> uint8 [N, C, H, W] + labels
# ---------------------------------------------------------------------------------------


def label_bytes(labels: np.ndarray, num_classes: int) -> bytes:
    """The label list: one uint8 per image (``<u2`` with more than 256 classes)."""
    dtype = np.uint8 if num_classes <= 256 else np.dtype("<u2")
    return np.asarray(labels).astype(dtype).tobytes()


def read_labels(data: bytes, num_classes: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8 if num_classes <= 256 else np.dtype("<u2")).astype(np.int64)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


def _unzstd(data: bytes, size: int) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


def posterize(x: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values -> k-bit levels ``round(v * (2^k - 1) / 255)``."""
    top = (1 << bits) - 1
    return np.rint(x.astype(np.float32) * (top / 255.0)).astype(np.uint8)


def unposterize(q: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.rint(q.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def resize(x: np.ndarray, h: int, w: int, method=Image.BILINEAR) -> np.ndarray:
    """uint8 [N, C, H', W'] -> [N, C, h, w], Pillow ``method`` per channel plane."""
    out = np.empty((x.shape[0], x.shape[1], h, w), dtype=np.uint8)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(np.ascontiguousarray(x[i, c])).resize((w, h), method))
    return out


@dataclass(frozen=True)
class BlockCodec:
    """One zstd-19 block of (optionally downsampled, optionally posterised) pixel values."""

    bits: int = 8  # 8: raw values
    factor: int = 1  # downsampling factor of each side

    def small_shape(self, shape) -> tuple[int, int, int]:
        c, h, w = shape
        return c, max(1, h // self.factor), max(1, w // self.factor)

    def encode(self, x: np.ndarray) -> list[bytes]:
        _, c, h, w = x.shape
        if self.factor > 1:
            _, sh, sw = self.small_shape((c, h, w))
            x = resize(x, sh, sw, Image.BOX)  # area average of each 2 x 2 block
        q = x if self.bits == 8 else posterize(x, self.bits)
        return [_zstd(np.ascontiguousarray(q).tobytes())]

    def decode(self, blobs: list[bytes], n: int, shape) -> np.ndarray:
        c, h, w = shape
        small = self.small_shape(shape)
        raw = _unzstd(blobs[0], n * math.prod(small))
        q = np.frombuffer(raw, dtype=np.uint8).reshape(n, *small)
        x = q if self.bits == 8 else unposterize(q, self.bits)
        return resize(x, h, w) if small != (c, h, w) else x.copy()


@dataclass(frozen=True)
class PngCodec:
    """One PNG file per image."""

    def encode(self, x: np.ndarray) -> list[bytes]:
        return [png_bytes(img) for img in x]

    def decode(self, blobs: list[bytes], n: int, shape) -> np.ndarray:
        return np.stack([decode_png(b, shape[0]) for b in blobs]) if blobs else np.zeros((0, *shape), np.uint8)


def sheet_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of a class sheet of ``count`` tiles: ceil(sqrt(count)) columns."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


@dataclass(frozen=True)
class SheetCodec:
    """One lossy image per class: its images tiled row-major, unused tiles black."""

    format: str  # "WEBP" | "JPEG"
    quality: int

    def encode(self, x: np.ndarray, labels: np.ndarray, num_classes: int) -> list[bytes]:
        _, c, h, w = x.shape
        blobs = []
        for k in range(num_classes):
            tiles = x[labels == k]  # [n_k, C, H, W]
            if len(tiles) == 0:
                continue
            rows, cols = sheet_grid(len(tiles))
            if max(rows * h, cols * w) > SHEET_MAX_SIDE:
                raise ConfigError(f"a {self.format} sheet of {len(tiles)} images of {h}x{w} exceeds "
                                  f"{SHEET_MAX_SIDE} px a side; use a smaller budget or a block codec")
            sheet = np.zeros((c, rows * h, cols * w), dtype=np.uint8)
            for i, tile in enumerate(tiles):
                r, col = divmod(i, cols)
                sheet[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = tile
            pil = _pil(sheet, self.format)
            if self.format == "WEBP" and pil.mode == "L":
                pil = pil.convert("RGB")  # WebP stores colour; grey decodes back to L
            buf = io.BytesIO()
            pil.save(buf, format=self.format, quality=self.quality)
            blobs.append(buf.getvalue())
        return blobs

    def decode(self, blobs: list[bytes], labels: np.ndarray, num_classes: int, shape) -> np.ndarray:
        c, h, w = shape
        out = np.empty((len(labels), c, h, w), dtype=np.uint8)
        present = [k for k in range(num_classes) if np.any(labels == k)]
        for k, blob in zip(present, blobs, strict=True):
            where = np.flatnonzero(labels == k)
            _, cols = sheet_grid(len(where))
            with Image.open(io.BytesIO(blob)) as pil:
                sheet = _from_pil(pil, c)
            for i, pos in enumerate(where):
                r, col = divmod(i, cols)
                out[pos] = sheet[:, r * h : (r + 1) * h, col * w : (col + 1) * w]
        return out


@dataclass(frozen=True)
class Codec:
    name: str
    description: str
    impl: BlockCodec | PngCodec | SheetCodec


def _family() -> dict[str, Codec]:
    codecs = [Codec("png", "PNG per image", PngCodec()),
              Codec("zstd", "8-bit raw, one block, zstd-19", BlockCodec())]
    codecs += [Codec(f"post{k}", f"{k}-bit posterised, one block, zstd-19", BlockCodec(bits=k)) for k in (2, 3, 4)]
    codecs += [Codec(f"webp-q{q}", f"WebP q{q}, one sheet per class", SheetCodec("WEBP", q)) for q in (30, 50, 75)]
    codecs += [Codec(f"jpeg-q{q}", f"JPEG q{q}, one sheet per class", SheetCodec("JPEG", q)) for q in (50, 75, 90)]
    codecs += [Codec(f"down2-{b}bit", f"half side (2x2 means), {b}-bit, one block, zstd-19, bilinear up",
                     BlockCodec(bits=b, factor=2)) for b in (4, 8)]
    return {c.name: c for c in codecs}


CODECS: dict[str, Codec] = _family()


def parse_codecs(spec: str | list[str] | tuple[str, ...] | None, default=tuple(CODECS)) -> list[str]:
    """'png,post3' (or a list) -> validated codec names, in the order given; None: ``default``."""
    if spec is None:
        return list(default)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError(f"no codec given; choose from {', '.join(CODECS)}")
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise ConfigError(f"unknown codec {unknown[0]!r}; choose from {', '.join(CODECS)}")
    return list(dict.fromkeys(names))


def get_codec(name: str) -> Codec:
    return CODECS[parse_codecs([name])[0]]


@dataclass
class Encoded:
    """What a user stores: image blobs plus the label list, and how to read it back."""

    codec: str
    image_shape: tuple[int, int, int]  # (C, H, W): known to the user, not counted
    num_classes: int
    blobs: list[bytes]  # the image blobs
    labels: bytes  # the label list (see label_bytes)

    @property
    def bytes(self) -> int:
        """Exactly the bytes stored: every image blob plus the label list."""
        return sum(len(b) for b in self.blobs) + len(self.labels)


def encode(codec: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> Encoded:
    """Store uint8 images [N, C, H, W] with their labels [N] with ``codec`` (class-major)."""
    impl = get_codec(codec).impl
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ConfigError(f"codecs take uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}")
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    x, y = images[order], labels[order]
    blobs = impl.encode(x, y, num_classes) if isinstance(impl, SheetCodec) else impl.encode(x)
    return Encoded(codec, tuple(int(v) for v in images.shape[1:]), num_classes, blobs, label_bytes(y, num_classes))


def decode(enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """The stored images as a user would train on them: (uint8 [N, C, H, W], labels [N])."""
    impl = get_codec(enc.codec).impl
    y = read_labels(enc.labels, enc.num_classes)
    if isinstance(impl, SheetCodec):
        return impl.decode(enc.blobs, y, enc.num_classes, enc.image_shape), y
    return impl.decode(enc.blobs, len(y), enc.image_shape), y


# ---------------------------------------------------------------------------------------
# The largest balanced subset that fits a byte cap
# ---------------------------------------------------------------------------------------


@dataclass
class FittedSubset:
    """The largest balanced random subset whose encoding fits the cap, for one codec."""

    codec: str
    per_class: int  # n images per class (0: not even one per class fits)
    indices: np.ndarray  # [n * K] positions in the training images, class-major
    encoded: Encoded | None  # the stored form (None when n == 0)
    max_bytes: int  # the cap
    next_bytes: int | None  # the bytes with n + 1 per class (> max_bytes); None if a class ran out

    @property
    def bytes(self) -> int:
        return self.encoded.bytes if self.encoded is not None else 0


def largest_fitting(size, max_bytes: int, limit: int, probe: int = 4) -> tuple[int, int | None]:
    """The largest n in [0, limit] with ``size(n) <= max_bytes``, for a ``size`` that grows
    with n: returns (n, the smallest n known not to fit, or None when ``limit`` fits).

    From a small probe on, each next n is extrapolated from the bytes per class-round of
    the last one tried (at least 1% further, so it converges from either side), kept
    strictly between the largest n known to fit and the smallest known not to, until those
    are adjacent (or every n fits): a few encodings, not a bisection's many. ``limit`` is
    the smallest class's image count: 0 (a class with no image) is a ConfigError."""
    if limit < 1:
        raise ConfigError("a class has no training image; every class needs at least one")
    lo, hi = 0, None  # lo fits (n = 0 trivially); hi does not fit (None: none known yet)
    n = min(max(1, probe), limit)
    while hi is None or hi - lo > 1:
        if size(n) <= max_bytes:
            lo = n
        else:
            hi = n
        if hi is None and lo == limit:
            break  # every n fits
        # next: the n that the bytes per class-round at the nearest known point predict,
        # nudged past that point by 1% (bytes per image shrink as blocks grow), within (lo, hi)
        at = n if n else 1
        predicted = int(max_bytes * at / max(1, size(at)))
        nudge = max(1, at // 100)
        n = max(predicted, at + nudge) if n == lo else min(predicted, at - nudge)
        n = min(n, limit if hi is None else hi - 1)
        n = max(n, lo + 1)
        if hi is not None and (n <= lo or n >= hi):
            n = (lo + hi) // 2
    return lo, hi


def fit_subset(codec: str, images: np.ndarray, labels: np.ndarray, num_classes: int, max_bytes: int,
               seed: int = 0, probe: int = 4) -> FittedSubset:
    """The largest n such that n random images per class, stored with ``codec``, fit ``max_bytes``.

    Picks follow :func:`class_orders`; the search is :func:`largest_fitting`. The result
    always satisfies ``bytes(n) <= max_bytes < bytes(n + 1)``.
    """
    get_codec(codec)
    orders = class_orders(labels, num_classes, seed)
    limit = min(len(o) for o in orders)
    cache: dict[int, Encoded] = {}

    def size(n: int) -> int:
        if n not in cache:
            idx = subset_indices(orders, n)
            cache[n] = encode(codec, images[idx], np.asarray(labels)[idx], num_classes)
        return cache[n].bytes

    lo, hi = largest_fitting(size, max_bytes, limit, probe)
    next_bytes = size(hi) if hi is not None else None
    return FittedSubset(codec, lo, subset_indices(orders, lo), cache[lo] if lo else None, int(max_bytes), next_bytes)
