"""The ``d3`` command line: thin click commands over library functions.

Every command parses its options and calls into the library. A :class:`D3Error`
raised anywhere below becomes one ``Error: ...`` line on stderr and exit code 1, in one
place (:class:`_Group`); a Ctrl-C becomes exit code 130 with no traceback.
"""

from __future__ import annotations

import sys

import click

from d3fmt import __version__
from d3fmt.errors import D3Error


class _Group(click.Group):
    """A click group that turns library errors into clean one-line CLI errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except D3Error as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="d3fmt")
def main():
    """d3fmt: distil a labelled image dataset into a few-megabyte .d3 file, and use it.

    \b
    d3 pack SRC -o out.d3 --budget B   distil a dataset into a .d3 file
    d3 inspect out.d3                  size, budget, classes, accuracy
    d3 sample out.d3 -o grid.png       look at decoded samples
    d3 export out.d3 --format folder   materialise samples as files
    d3 eval out.d3 --test SRC          honest accuracy on a real test set
    """


# --- inspect (container) ---

# --- sample / export (loader) ---

# --- pack (distiller) ---

# --- eval / baseline ---

# --- merge (federated) ---
