"""The one exception hierarchy of d3fmt.

Every error a user can cause (a bad file, a bad source, an impossible budget, a bad
option) is raised as a subclass of :class:`D3Error` whose message is a single line that
names the problem and, where there is one, the fix. The CLI turns these into a clean
``Error: ...`` line and a non-zero exit code; anything else is a bug.
"""

from __future__ import annotations


class D3Error(Exception):
    """Base class of every error d3fmt raises on purpose."""


class FormatError(D3Error):
    """A .d3 file is malformed: truncated, inconsistent, or not a .d3 file at all."""


class IntegrityError(FormatError):
    """A section's or the header's hash does not match its bytes."""


class UnsupportedVersionError(FormatError):
    """The file's major format version is unknown to this reader."""


class LimitError(FormatError):
    """A declared size exceeds one of the reader's hard caps."""


class SourceError(D3Error):
    """A dataset source is missing, unreadable, or holds corrupt images."""


class BudgetError(D3Error):
    """No distiller configuration fits the requested byte budget."""


class MergeError(D3Error):
    """Partial containers do not belong together and cannot be merged."""


class ConfigError(D3Error):
    """An option or combination of options is invalid."""


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
]
