"""Progress bars for long work (tqdm), silenced with ``quiet`` or when stderr is no terminal
only if the caller asks: CI logs still show where a long job is."""

from __future__ import annotations

import contextlib

from tqdm.auto import tqdm


class _Silent:
    """A do-nothing bar with tqdm's update/set_postfix/set_description interface."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def bar(quiet: bool, **kwargs):
    """A tqdm bar (loss in the postfix, ETA from tqdm) or a silent stand-in when quiet."""
    if quiet:
        yield _Silent()
        return
    with tqdm(dynamic_ncols=True, mininterval=0.5, **kwargs) as pbar:
        yield pbar
