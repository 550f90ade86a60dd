"""Per-channel pixel statistics, streamed: the header's normalization (mean, std)."""

from __future__ import annotations

import numpy as np

from d3fmt.sources.base import Source


def pixel_stats(source: Source, split: str = "train", classes=None,
                batch_size: int = 256) -> tuple[list[float], list[float]]:
    """Mean and (population) std per channel of pixels scaled to [0, 1].

    Sums are accumulated in float64 over integer pixel values, so the result does not
    depend on the batch size beyond float rounding and no batch is held twice."""
    channels = source.info.image_shape[0]
    total = np.zeros(channels, dtype=np.float64)
    squares = np.zeros(channels, dtype=np.float64)
    count = 0
    for images, _ in source.iter_batches(split, classes=classes, batch_size=batch_size):
        flat = images.transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64)   # [C, N*H*W]
        total += flat.sum(axis=1)
        squares += np.square(flat).sum(axis=1)
        count += flat.shape[1]
    if count == 0:
        return [0.0] * channels, [0.0] * channels
    mean = total / count
    var = np.maximum(squares / count - mean ** 2, 0.0)
    return (mean / 255.0).tolist(), (np.sqrt(var) / 255.0).tolist()
