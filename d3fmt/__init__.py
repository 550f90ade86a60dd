"""d3fmt: Distributional Dataset Distillation in a few-megabyte, safe, versioned file.

The format core (``d3fmt.format``, ``d3fmt.errors``) needs only numpy and zstandard;
the torch parts (``D3Dataset``, ``D3Stream``, ``pack``, the distiller) are imported on first use.
"""

from __future__ import annotations

from importlib import import_module

from d3fmt.errors import (  # noqa: F401
    BudgetError,
    ConfigError,
    D3Error,
    D3IOError,
    FormatError,
    IntegrityError,
    LimitError,
    MergeError,
    MissingExtraError,
    SourceError,
    TrainingError,
    UnsupportedVersionError,
    missing_extra,
)

__version__ = "0.1.0"

# name -> module that defines it; imported lazily so that `import d3fmt` stays torch-free.
_LAZY = {
    "D3Container": "d3fmt.format.container",
    "D3Reader": "d3fmt.format.container",
    "read_d3": "d3fmt.format.container",
    "write_d3": "d3fmt.format.container",
    "D3Dataset": "d3fmt.loader.dataset",
    "D3Stream": "d3fmt.loader.dataset",
    "pack": "d3fmt.packing",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'd3fmt' has no attribute {name!r}")
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc)
        if error is None:
            raise
        raise error from None


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
