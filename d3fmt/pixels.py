"""Real images kept as uint8 and normalised one batch at a time, on the batch's device.

A float32 copy of a subset is four times its uint8 bytes: ImageNet-1K at 64x64 is
16 GB as uint8 and 63 GB as float32. :class:`Pixels` holds the uint8 images (a tensor,
possibly sharing memory with a memory-mapped cache file) and hands out normalised float32
batches only when indexed, so training code written for a float tensor

    x[idx]            -> float32 (x / 255 - mean) / std   [n, C, H, W]
    x[a:b]            -> the same for a slice
    x.to(device)      -> Pixels whose uint8 images live on ``device``
    x.shape, x.dim(), x.device, len(x)

works unchanged while peak memory follows one batch plus the uint8 images. The float
values are bit for bit those of normalising the whole array at once (the same float32
operations in the same order: ``/ 255``, ``- mean``, ``/ std``).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

from d3fmt.errors import ConfigError

TANH = 0.5  # mean = std = 0.5 maps [0, 1] pixels to [-1, 1], the decoder's output space


class Pixels:
    """uint8 images [N, C, H, W] with a per-channel normalisation (``mean``, ``std`` in
    [0, 1] pixel units), normalised on indexing."""

    def __init__(self, data: torch.Tensor, mean, std):
        if data.dtype != torch.uint8 or data.dim() != 4:
            raise ConfigError(f"Pixels needs uint8 images [N, C, H, W], got {data.dtype} {list(data.shape)}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != data.shape[1] or len(std) != data.shape[1]:
            raise ConfigError(f"mean/std have {len(mean)}/{len(std)} channels, the images {data.shape[1]}; "
                              "pass one value per channel")
        self.data, self.mean, self.std = data, mean, std
        self._mean = torch.tensor(mean, dtype=torch.float32, device=data.device).reshape(-1, 1, 1)  # [C, 1, 1]
        self._std = torch.tensor(std, dtype=torch.float32, device=data.device).reshape(-1, 1, 1)  # [C, 1, 1]

    @classmethod
    def from_numpy(cls, x: np.ndarray, mean, std) -> Pixels:
        """Wrap uint8 [N, C, H, W] without copying (a read-only memory map stays read-only:
        nothing here writes to the images)."""
        with warnings.catch_warnings():  # torch warns that it could write to a read-only map
            warnings.simplefilter("ignore", UserWarning)
            return cls(torch.from_numpy(np.asarray(x)), mean, std)

    # -- what training code reads -------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        """Normalised float32 images ``idx`` (an index tensor on this device, or a slice)."""
        t = self.data[idx].float().div_(255)  # [n, C, H, W]
        return t.sub_(self._mean).div_(self._std)

    def to(self, device) -> Pixels:
        return self if torch.device(device) == self.device else Pixels(self.data.to(device), self.mean, self.std)

    def cpu(self) -> Pixels:
        return self.to("cpu")

    # -- subsets and views ----------------------------------------------------------------

    def select(self, idx) -> Pixels:
        """The images ``idx``, still uint8."""
        return Pixels(self.data[idx], self.mean, self.std)

    def normalized(self, mean, std) -> Pixels:
        """The same uint8 images under another normalisation (no copy)."""
        return Pixels(self.data, mean, std)

    def tanh(self) -> Pixels:
        """The same images in [-1, 1] (the decoder's output space)."""
        c = self.data.shape[1]
        return self.normalized((TANH,) * c, (TANH,) * c)

    def fingerprint(self) -> bytes:
        """SHA-256 of the uint8 bytes, shape and normalisation."""
        h = hashlib.sha256(f"pixels{tuple(self.shape)}{self.mean}{self.std}".encode())
        h.update(self.data.detach().cpu().contiguous().numpy())  # the buffer, not a bytes copy
        return h.digest()


def select(x, idx):
    """Rows ``idx`` of a float tensor or of :class:`Pixels` (kept uint8)."""
    return x.select(idx) if isinstance(x, Pixels) else x[idx]
