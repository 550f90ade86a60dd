"""The one exception hierarchy of d3fmt.

Every error a user can cause (a bad file, a bad source, an impossible budget, a bad
option) is raised as a subclass of :class:`D3Error` whose message is a single line that
names the problem and, where there is one, the fix. The CLI turns these into a clean
``Error: ...`` line and the class's :attr:`~D3Error.exit_code` (in one place,
``d3fmt.cli``); anything else is a bug. Exit codes: 1 any other D3Error, 2 a bad option
(as click's own usage errors), 3 a malformed file, 4 a bad source, 5 an impossible
budget, 6 parts that do not merge, 7 a file that cannot be read or written, 8 training
that failed, 9 an optional dependency that is not installed; 130 an interrupt.
"""

from __future__ import annotations

import contextlib


class D3Error(Exception):
    """Base class of every error d3fmt raises on purpose."""

    exit_code = 1  # the `d3` command's exit status for this class of error


class FormatError(D3Error):
    """A .d3 file is malformed: truncated, inconsistent, or not a .d3 file at all."""

    exit_code = 3


class IntegrityError(FormatError):
    """A section's or the header's hash does not match its bytes."""


class UnsupportedVersionError(FormatError):
    """The file's major format version is unknown to this reader."""


class LimitError(FormatError):
    """A declared size exceeds one of the reader's hard caps."""


class SourceError(D3Error):
    """A dataset source is missing, unreadable, or holds corrupt images."""

    exit_code = 4


class BudgetError(D3Error):
    """No distiller configuration fits the requested byte budget."""

    exit_code = 5


class MergeError(D3Error):
    """Partial containers do not belong together and cannot be merged."""

    exit_code = 6


class ConfigError(D3Error):
    """An option or combination of options is invalid."""

    exit_code = 2


class D3IOError(D3Error):
    """A file cannot be written, or a cache / checkpoint file cannot be read back."""

    exit_code = 7


class TrainingError(D3Error):
    """Training failed: a loss diverged, or the device ran out of memory."""

    exit_code = 8


__all__ = [
    "D3Error",
    "FormatError",
    "IntegrityError",
    "UnsupportedVersionError",
    "LimitError",
    "SourceError",
    "BudgetError",
    "MergeError",
    "ConfigError",
    "D3IOError",
    "TrainingError",
    "MemoryPlanError",
]


class MissingExtraError(D3Error):
    """A command or API needs an optional dependency that is not installed."""

    exit_code = 9


# top-level module -> (pip package, d3fmt extra that installs it)
EXTRA_MODULES = {"torch": ("torch==2.13.0", "torch"), "safetensors": ("safetensors", "torch"),
                 "PIL": ("pillow", "torch"), "webdataset": ("webdataset", "torch"), "tqdm": ("tqdm", "torch"),
                 "sklearn": ("scikit-learn", "torch")}


def missing_extra(exc: ModuleNotFoundError) -> D3Error | None:
    """The one-line error for a missing optional dependency, or None when ``exc`` is not about one."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_MODULES:
        return None
    package, extra = EXTRA_MODULES[top]
    return MissingExtraError(f"this needs the {package} package (module {top!r}), which is not installed; install "
                             f"d3fmt's [{extra}] extra: pip install torch==2.13.0 'd3fmt[{extra}]'")


@contextlib.contextmanager
def training_errors(stage: str):
    """Inside: a RuntimeError from torch (a shape that does not fit, a bad kernel argument,
    a non-finite value) becomes one line, a :class:`TrainingError` naming the stage.
    Out-of-memory errors pass through (the CLI maps them, with their own advice)."""
    try:
        yield
    except RuntimeError as exc:
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingError(f"{stage} failed: {first[:300]}; check the settings of that stage (decoder family "
                            f"and width against --image-size, --z-dim), or report it as a bug") from exc


class MemoryPlanError(ConfigError):
    """The memory plan of a pack does not fit --max-memory with the settings given (checked before training)."""
