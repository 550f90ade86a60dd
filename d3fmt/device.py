"""Which torch device a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> torch.device.

Shared by the distiller, `d3 eval` and the baselines; it lives outside the distiller so
that evaluating a file does not import it.
"""

from __future__ import annotations

import torch

from d3fmt.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; a clean ConfigError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device torch knows; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name} does not exist: {torch.cuda.device_count()} GPU(s) are visible "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use one of them or --device auto")
    return device
