"""Atomic on-disk writes for the distiller's caches and checkpoints (safetensors + JSON).

A crash or Ctrl-C in the middle of a write must never leave a half-written expert or
checkpoint that a later ``--resume`` would trust: every file is written to a temporary
name in the same directory, flushed, fsynced and renamed over the target
(:func:`d3fmt.format.container.atomic_write`, the one atomic writer). No pickle:
tensors go to safetensors, scalars to JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from d3fmt.errors import D3IOError
from d3fmt.format.container import atomic_replace, atomic_write


def _in_made_dir(path: Path) -> Path:
    """``path``, its directory created if missing (caches and checkpoints make their own)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write named tensors (contiguous CPU copies) as one safetensors file, atomically,
    straight from the tensors (a checkpoint of 359,000 priors is 0.5 GB: no copy of it in memory)."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_replace(_in_made_dir(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


def save_json(path: Path, obj) -> None:
    atomic_write(_in_made_dir(path), (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise D3IOError(f"cannot read {path}: {e}; delete the file to start this cache afresh") from e


def rng_state_tensor(generator: torch.Generator) -> torch.Tensor:
    """A generator's state as a uint8 tensor (safetensors-storable)."""
    return generator.get_state().clone()


def restore_rng(generator: torch.Generator, state: torch.Tensor) -> None:
    generator.set_state(state.to(torch.uint8).cpu().contiguous())
