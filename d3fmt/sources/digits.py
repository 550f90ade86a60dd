"""The built-in ``digits`` source: scikit-learn's bundled ``load_digits()``.

1,797 grey 8x8 digits, 10 classes, shipped inside the scikit-learn wheel (no download),
small enough to hold in memory: the embedded default for the README demo and fast tests.
Pixels are 0..16 in scikit-learn; d3fmt maps them to uint8 with round(v * 255 / 16).
It has no test split of its own: ``open_source`` holds out a stratified 20% (the default
``holdout``, seed 0 unless told otherwise), the same records on every machine.
"""

from __future__ import annotations

import numpy as np

from d3fmt.errors import SourceError
from d3fmt.sources.arrays import ArrayPart, MemoryRows
from d3fmt.sources.base import SourceParts
from d3fmt.sources.hashing import hash_arrays

NAME = "digits"


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [1797, 8, 8], labels int64 [1797]) in scikit-learn's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SourceError("the 'digits' source needs scikit-learn; pip install scikit-learn") from None
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)   # [N, 8, 8]
    return images, bunch.target.astype(np.int64)


def open_digits(*, image_size: int | None, channels: int | None, bad) -> SourceParts:
    images, labels = digits_arrays()
    channels = channels or 1
    side = image_size or images.shape[1]
    part = ArrayPart(MemoryRows(images, NAME), "NHW", labels, channels, side)
    return SourceParts(
        kind="digits", name="digits (scikit-learn load_digits, 8x8 grey)",
        class_names=[str(k) for k in range(10)], channels=channels, side=side,
        train=part, test=None, test_name=None,
        content_hash=hash_arrays("digits", images, labels))
