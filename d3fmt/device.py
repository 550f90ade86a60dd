"""Which torch device a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> torch.device.

Shared by the distiller, `d3 eval` and the baselines; it lives outside the distiller so
that evaluating a file does not import it. Also here: :func:`tune_cpu_allocator`, the
malloc settings that CPU training runs faster with.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

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


# ---------------------------------------------------------------------------------------
# CPU allocator: keep freed memory for reuse instead of returning it to the kernel.
# ---------------------------------------------------------------------------------------

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # keep up to 2 GiB of free memory at the top of the heap
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's own settings
_tuned: list[bool] = []  # set once tune_cpu_allocator() has run in this process


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc reuse freed memory for the large tensors of CPU training.

    glibc serves every allocation above 128 KiB to 32 MiB by a fresh ``mmap`` and gives
    it back on free, so each new activation tensor (the unrolled student's are ~100 MB at
    28 px and 1,000 samples) is zeroed page by page by the kernel on first touch: that
    page faulting was about a third of a CPU distillation iteration. With mmap off
    (``M_MMAP_MAX`` 0) and a high trim threshold, freed blocks stay in the heap and are
    reused, as a caching allocator (jemalloc, tcmalloc, CUDA's) would. Process-wide and
    for good: memory freed after the peak is kept by the process, and kept fragments add
    to later peaks, so `d3 pack` applies it only around the distillation loop
    (:func:`cpu_allocator_tuned`). Off unless ``D3FMT_MALLOC_TUNING=1``: on the 1000-class
    JPEG bench it raised a pack's peak RSS from 1.33 to 1.53 GB (benchmarks/scale-jpeg.md)
    for 1.3-1.5x faster CPU distillation iterations (benchmarks/distiller.md).
    Returns whether the settings were applied (False off glibc or when turned off).
    """
    if _tuned:
        return _tuned[0]
    _tuned.append(_apply_mallopt())
    return _tuned[0]


def _apply_mallopt() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("D3FMT_MALLOC_TUNING", "0") != "1":
        return False
    try:
        libc = _libc()
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(M_MMAP_MAX, 0))


def _libc():
    """glibc with ``mallopt`` and ``malloc_trim`` typed (AttributeError where they are missing)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


@contextlib.contextmanager
def cpu_allocator_tuned(device):
    """:func:`tune_cpu_allocator` for the block only (CPU devices), then glibc's defaults
    again and the kept memory handed back (``malloc_trim``). The distillation loop, whose
    same-sized activations it speeds up, runs inside; the other stages of a pack keep the
    ordinary allocator, so memory freed between stages is returned and a pack's peak
    stays that of its largest stage (measured: 1.56 GB process-wide against 1.33 GB
    without on the 1000-class JPEG bench, benchmarks/scale-jpeg.md)."""
    applied = torch.device(device).type == "cpu" and not _tuned and _apply_mallopt()
    try:
        yield applied
    finally:
        if applied:
            _restore_mallopt()


def _restore_mallopt() -> None:
    libc = _libc()
    libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.malloc_trim(0)
