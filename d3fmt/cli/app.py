"""The ``d3`` group: library errors become one ``Error: ...`` line and their exit code, here only."""

from __future__ import annotations

import sys

import click

from d3fmt import __version__
from d3fmt.errors import D3Error, TrainingError, missing_extra


class _Group(click.Group):
    """A click group that turns library errors into clean one-line CLI errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except D3Error as exc:
            _fail(str(exc), exc.exit_code)
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
                raise
            _fail(f"out of memory ({str(exc).splitlines()[0] if str(exc) else 'MemoryError'}); "
                  "use a smaller --budget, --convnet-width or batch size, or another device", TrainingError.exit_code)
        except ModuleNotFoundError as exc:
            error = missing_extra(exc)
            if error is None:
                raise
            _fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def _fail(message: str, code: int):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="d3fmt")
def main():
    """d3fmt: distil a labelled image dataset into a few-megabyte .d3 file, and use it.

    \b
    d3 prepare SRC --image-size N      decode a JPEG tree once (the decoded-image cache)
    d3 pack SRC -o out.d3 --budget B   distil a dataset into a .d3 file
    d3 inspect out.d3                  size, budget, classes, accuracy
    d3 sample out.d3 -o grid.png       look at decoded samples
    d3 export out.d3 --format folder   materialise samples as files
    d3 eval out.d3 --test SRC          honest accuracy on a real test set
    """
