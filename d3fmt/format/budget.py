"""The byte budget of a .d3 file, in one place (torch-free).

A budget of B images per class is ``B * K * C * H * W * 4`` bytes for the *whole* file
(one "image" is C*H*W float32 values, the literature's convention); an explicit byte cap
is the other way to give it, and exactly one of the two is given. :class:`Budget` knows
the formula, the rule and the header's budget fields (``ipc``, ``max_bytes`` and the
size in images-per-class equivalents, derived from ``bytes_used``). Its errors name the
arguments (``budget``, ``max_bytes``), which are also the names of `d3 pack`'s options.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from d3fmt.errors import ConfigError


def check_budget_args(budget: float | None, max_bytes: int | None) -> None:
    """ConfigError unless exactly one of ``budget`` (images per class, > 0, finite) and
    ``max_bytes`` (a positive byte count) is given."""
    if (budget is None) == (max_bytes is None):
        raise ConfigError("give exactly one of budget B (images per class) or max_bytes N (a byte cap for the file)")
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ConfigError(f"budget must be > 0 images per class, got {budget}")
    if max_bytes is not None and not (isinstance(max_bytes, numbers.Integral) and max_bytes > 0):
        raise ConfigError(f"max_bytes must be a positive byte count, got {max_bytes}")


def image_bytes(image_shape) -> int:
    """Bytes of one image in the budget's convention: C * H * W float32 values."""
    return math.prod(int(v) for v in image_shape) * 4


def usage_fields(num_classes: int, image_shape, bytes_used: int) -> dict:
    """``bytes_used`` and the file size in images-per-class equivalents: float32 (the
    budget's convention) and uint8 (one byte per pixel value)."""
    per_ipc_uint8 = num_classes * math.prod(int(v) for v in image_shape)
    return {
        "bytes_used": int(bytes_used),
        "ipc_equivalent_fp32": round(bytes_used / (per_ipc_uint8 * 4), 6),
        "ipc_equivalent_uint8": round(bytes_used / per_ipc_uint8, 6),
    }


@dataclass(frozen=True)
class Budget:
    """A whole file's byte cap for ``num_classes`` classes of ``image_shape`` images.

    ``ipc`` is the images per class that were asked for, or what an explicit byte cap
    amounts to; ``max_bytes`` the cap. Build it with :meth:`of`."""

    ipc: float
    max_bytes: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)

    @classmethod
    def of(cls, num_classes: int, image_shape, budget: float | None = None, max_bytes: int | None = None) -> Budget:
        """From images per class (``budget``, kept as given: the header's ``ipc``) or a byte
        cap (``max_bytes``): exactly one."""
        check_budget_args(budget, max_bytes)
        shape = tuple(int(v) for v in image_shape)
        if budget is not None:
            return cls(budget, int(budget * num_classes * math.prod(shape) * 4), num_classes, shape)
        return cls(max_bytes / (num_classes * image_bytes(shape)), int(max_bytes), num_classes, shape)

    @property
    def image_bytes(self) -> int:
        return image_bytes(self.image_shape)

    def ipc_of(self, size: int) -> float:
        """What ``size`` bytes amount to in images per class (float32 convention)."""
        return size / (self.num_classes * self.image_bytes)

    def fields(self, bytes_used: int = 0, choices: dict | None = None) -> dict:
        """The header's ``budget`` block for a file of ``bytes_used`` bytes."""
        out = {"ipc": self.ipc, "max_bytes": self.max_bytes,
               **usage_fields(self.num_classes, self.image_shape, bytes_used)}
        if choices is not None:
            out["choices"] = choices
        return out
