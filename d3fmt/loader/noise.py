"""Counter-based Gaussian noise: the same values alone or in any batch, on CPU or GPU.

A torch ``Generator`` produces a *stream*: what sample 7 gets depends on how many numbers
were drawn before it, so it changes with batch size, order, worker count and device.
D3 promises that sample i of epoch e with seed s is one fixed tensor, so its noise must be
a pure function of (seed, epoch, index, dimension). We hash those integers into 32-bit
words (a murmur3-style finaliser) and turn pairs of words into normals with Box-Muller.

Everything is vectorised integer arithmetic on int64 tensors holding 32-bit values. A
32x32-bit product would overflow int64, so multiplications by constants are split into
16-bit halves and masked (every intermediate stays below 2**49).
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / phi, a well-mixed odd constant
_M1 = 0x7FEB352D  # finaliser multipliers with good avalanche (hash-prospector "lowbias32")
_M2 = 0x846CA68B
_TAG_SEED, _TAG_EPOCH, _TAG_INDEX, _TAG_DIM = 0x51ED270B, 0x2545F491, 0x68E31DA4, 0xB5297A4D


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) and a 32-bit constant c, without int64 overflow."""
    lo = x * (c & 0xFFFF)  # < 2**48
    hi = ((x * (c >> 16)) & 0xFFFF) << 16  # only the low 16 bits survive the shift mod 2**32
    return (lo + hi) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit finaliser: every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def _absorb(h: torch.Tensor, word: torch.Tensor | int, tag: int) -> torch.Tensor:
    """Fold one 32-bit word into the running hash h (order-sensitive)."""
    return _mix32((_mul32(h, _GOLDEN) + _mix32(torch.as_tensor(word, device=h.device) ^ tag)) & MASK32)


def _words(value: int) -> tuple[int, int]:
    """A Python int (any sign, up to 64 bits) as two 32-bit words."""
    value &= (1 << 64) - 1
    return value & MASK32, value >> 32


def row_keys(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row, a function of (seed, epoch, index[n]) only. [N] int64."""
    index = index.to(torch.int64)
    h = torch.zeros_like(index)
    for word in _words(seed):
        h = _absorb(h, word, _TAG_SEED)
    for word in _words(epoch):
        h = _absorb(h, word, _TAG_EPOCH)
    h = _absorb(h, index & MASK32, _TAG_INDEX)
    return _absorb(h, (index >> 32) & MASK32, _TAG_INDEX)


def gaussian(
    seed: int,
    epoch: int,
    index: torch.Tensor,
    dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise [N, dim]; row n depends only on (seed, epoch, index[n]).

    ``index`` is a LongTensor [N] of non-negative sample counters (d3fmt uses
    ``class * 2**24 + slot``). The result is computed on ``device`` (default: index's
    device) in float32 and cast to ``dtype``; float64 is computed in float64.
    """
    device = torch.device(device) if device is not None else index.device
    index = torch.as_tensor(index, device=device).reshape(-1)  # [N]
    keys = row_keys(int(seed), int(epoch), index)  # [N]
    pairs = (dim + 1) // 2
    counter = torch.arange(2 * pairs, device=device, dtype=torch.int64)  # [2P]
    bits = _mix32((keys[:, None] + _mul32(counter + 1, _TAG_DIM)[None, :]) & MASK32)  # [N, 2P]
    bits = _mix32(bits ^ keys[:, None])  # second round: decorrelate neighbouring counters
    work = torch.float64 if dtype == torch.float64 else torch.float32
    # 24 high bits -> uniform in (0, 1), exactly representable in float32 (never 0).
    u = ((bits >> 8).to(work) + 0.5) * (1.0 / (1 << 24))  # [N, 2P]
    u1, u2 = u[:, 0::2], u[:, 1::2]  # [N, P] each
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)  # [N, P, 2]
    return z.reshape(index.shape[0], 2 * pairs)[:, :dim].to(dtype)
