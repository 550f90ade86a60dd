"""The ``d3`` command line: thin click commands over library functions.

Every command parses its options and calls into the library. A :class:`D3Error`
raised anywhere below becomes one ``Error: ...`` line on stderr and its class's exit code
(``D3Error.exit_code``, see :mod:`d3fmt.errors`), in one place (:class:`app._Group`); so
does running out of (device) memory (a :class:`TrainingError`); a Ctrl-C becomes exit
code 130 with no traceback.

- ``app``: the ``d3`` group and that error mapping
- ``files``: inspect, sample, export (a .d3 file)
- ``pack``: prepare, pack, merge (writing .d3 files)
- ``evaluation``: eval, baseline random / codecs / full
- ``options``: options several commands share; ``render``: what they print
"""

from __future__ import annotations

from d3fmt.cli import evaluation, files, pack  # noqa: F401  (they register their commands on main)
from d3fmt.cli.app import main

__all__ = ["main"]
