"""Per-channel pixel statistics, streamed: the header's normalization (mean, std).

The one implementation: :class:`PixelMoments` accumulates batches; :func:`pixel_stats`
streams a source, :func:`array_stats` takes images already in memory, and the distiller
streams the first images of every class (``d3fmt.distill.job.sample_stats``).
"""

from __future__ import annotations

import numpy as np

from d3fmt.sources.base import Source

MIN_STD = 1e-3  # floor of a normalisation std (a constant channel would divide by zero)


class PixelMoments:
    """Running per-channel sums of uint8 pixels [N, C, H, W], in float64.

    Sums are accumulated over integer pixel values, so the result does not depend on
    the batch size beyond float rounding and no batch is held twice."""

    def __init__(self, channels: int):
        self.total = np.zeros(channels, dtype=np.float64)
        self.squares = np.zeros(channels, dtype=np.float64)
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        channels = self.total.shape[0]
        flat = images.transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64)  # [C, N*H*W]
        self.total += flat.sum(axis=1)
        self.squares += np.square(flat).sum(axis=1)
        self.count += flat.shape[1]

    def mean_std(self, min_std: float = 0.0) -> tuple[list[float], list[float]]:
        """Mean and (population) std per channel of pixels scaled to [0, 1]; std at least
        ``min_std``. Zeros when nothing was added."""
        if self.count == 0:
            return [0.0] * len(self.total), [0.0] * len(self.total)
        mean = self.total / self.count
        var = np.maximum(self.squares / self.count - mean**2, 0.0)
        return (mean / 255.0).tolist(), np.maximum(np.sqrt(var) / 255.0, min_std).tolist()


def pixel_stats(source: Source, split: str = "train", classes=None,
                batch_size: int = 256) -> tuple[list[float], list[float]]:
    """Mean and (population) std per channel of a source's pixels, scaled to [0, 1]."""
    moments = PixelMoments(source.info.image_shape[0])
    for images, _ in source.iter_batches(split, classes=classes, batch_size=batch_size):
        moments.add(images)
    return moments.mean_std()


def array_stats(x_uint8: np.ndarray, min_std: float = MIN_STD) -> tuple[list[float], list[float]]:
    """Per-channel mean / std in [0, 1] units of uint8 images [N, C, H, W] (std floored)."""
    moments = PixelMoments(x_uint8.shape[1])
    moments.add(x_uint8)
    return moments.mean_std(min_std)
