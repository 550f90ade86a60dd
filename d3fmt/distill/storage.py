"""Atomic on-disk writes for the distiller's caches and checkpoints (safetensors + JSON).

A crash or Ctrl-C in the middle of a write must never leave a half-written expert or
checkpoint that a later ``--resume`` would trust: every file is written to a temporary
name in the same directory, flushed, and renamed over the target (``os.replace`` is
atomic on POSIX and Windows). No pickle: tensors go to safetensors, scalars to JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

from d3fmt.errors import ConfigError


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write named tensors (contiguous CPU copies) as one safetensors file, atomically."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    _atomic_write_bytes(path, save(cpu, metadata=metadata))


def save_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; delete the file to start this cache afresh") from e


def rng_state_tensor(generator: torch.Generator) -> torch.Tensor:
    """A generator's state as a uint8 tensor (safetensors-storable)."""
    return generator.get_state().clone()


def restore_rng(generator: torch.Generator, state: torch.Tensor) -> None:
    generator.set_state(state.to(torch.uint8).cpu().contiguous())
