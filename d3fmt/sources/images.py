"""Decoding image files and resizing pixel arrays, the same way for every source kind.

Rules (summarised in the d3fmt.sources package docstring):
- Output is uint8 [C, S, S]: C = 1 (grey) or 3 (RGB); S = the source's square side.
- Colour conversion: to "L" for grey sources, to "RGB" otherwise (RGBA drops alpha,
  palette images are expanded). A colour file inside a grey source becomes grey.
- Resizing: Pillow's BILINEAR filter, which widens its support when shrinking (so a
  downscale is antialiased, not point-sampled). One filter both ways keeps it simple.
  Non-square images are squashed to S x S (no crop, nothing is cut away).
- Channels and default side of file sources come from a bounded look (LOOK_LIMIT files
  spread evenly over the train records, headers only): all grey -> C=1, else C=3; side =
  the shorter side of the most common size.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from d3fmt.errors import ConfigError, SourceError

RESAMPLE = Image.Resampling.BILINEAR
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm",
                              ".tif", ".tiff"})
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
LOOK_LIMIT = 64
MAX_SIDE = 4096

# What Pillow raises on a file that is not an image, is truncated, or lies about its size.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageDecodeError(Exception):
    """A file could not be decoded; carries Pillow's reason."""


@dataclass
class ImageLook:
    """What a bounded look at a file source decided."""

    channels: int
    side: int


def check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or not 1 <= int(image_size) <= MAX_SIDE:
        raise ConfigError(f"image_size must be an integer in 1..{MAX_SIDE}, got {image_size!r}")
    return int(image_size)


def default_side(height: int, width: int) -> int:
    """The square side used when no image_size is given: the shorter side."""
    return min(int(height), int(width))


def decode_image(src: str | bytes, channels: int, side: int) -> np.ndarray:
    """Decode one file (path or bytes) to uint8 [C, side, side]; ImageDecodeError if bad."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # palette-transparency notes, not errors
                im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (side, side):
                im = im.resize((side, side), RESAMPLE)
            pixels = np.asarray(im, dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)   # [C, S, S]


def peek_image(src: str | bytes) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) from the file header only; ImageDecodeError if bad."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            return im.mode, im.size
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from None


def look_at_images(count: int, fetch: Callable[[int], str | bytes], where: Callable[[int], str],
                   on_bad: Callable[[str, BaseException], None]) -> ImageLook:
    """Decide channels and default side from up to LOOK_LIMIT records spread over 0..count-1.

    ``fetch(i)`` gives a path or the bytes of record i; ``on_bad`` raises or records a
    bad one (the skip_bad policy)."""
    picks = np.unique(np.linspace(0, count - 1, num=min(count, LOOK_LIMIT)).round().astype(np.int64))
    modes: list[str] = []
    sizes: Counter = Counter()
    for i in picks.tolist():
        try:
            mode, size = peek_image(fetch(i))
        except ImageDecodeError as exc:
            on_bad(where(i), exc)
            continue
        modes.append(mode)
        sizes[size] += 1
    if not modes:
        raise SourceError(f"none of the {len(picks)} images looked at could be read "
                          f"(first: {where(int(picks[0]))}); check the source's files")
    (width, height), _ = sizes.most_common(1)[0]
    channels = 1 if all(m in GREY_MODES for m in modes) else 3
    return ImageLook(channels=channels, side=default_side(height, width))


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, channels, H, W]: grey is repeated, RGB uses Pillow's
    "L" weights (ITU-R 601-2 luma), so arrays and files convert alike."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        rgb = images.astype(np.float32)
        luma = (rgb[:, 0] * 299 + rgb[:, 1] * 587 + rgb[:, 2] * 114) / 1000.0   # [N, H, W]
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]
    raise SourceError(f"cannot convert {have}-channel images to {channels} channels")


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, C, side, side] with the same Pillow filter as files."""
    n, c, h, w = images.shape
    if (h, w) == (side, side):
        return images
    out = np.empty((n, c, side, side), dtype=np.uint8)
    for i in range(n):
        if c == 1:
            im = Image.fromarray(np.ascontiguousarray(images[i, 0]))
            out[i, 0] = np.asarray(im.resize((side, side), RESAMPLE))
        else:
            im = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)))
            out[i] = np.asarray(im.resize((side, side), RESAMPLE)).transpose(2, 0, 1)
    return out


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS
