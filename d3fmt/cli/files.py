"""Commands on a .d3 file: inspect (the container), sample and export (the loader)."""

from __future__ import annotations

import click

from d3fmt.cli.app import main


@main.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--verify", is_flag=True, help="Check the whole file (hashes, every section decoded, decoders buildable); exit 1 if it would not load and sample.")
def inspect_cmd(file: str, as_json: bool, verify: bool):
    """Summarise a .d3 file: size, budget, classes, sections, subtasks, accuracy."""
    import json

    from d3fmt.format.inspect import render_text, summarize

    summary = summarize(file, verify=verify)
    click.echo(json.dumps(summary, ensure_ascii=False) if as_json else render_text(summary))


@main.command("sample")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The PNG grid to write.")
@click.option("-n", "--columns", default=8, show_default=True, help="Samples per class (columns of the grid).")
@click.option("--classes", help="Comma-separated class indices, one row each [all classes].")
@click.option("--seed", default=0, show_default=True, help="Noise seed.")
@click.option("--epoch", default=0, show_default=True, help="Noise epoch.")
@click.option("--no-means", is_flag=True, help="Draw noise in every cell (by default each row starts with up to half its cells of prior means, framed in red).")
@click.option("--scale", type=int, help="Pixel magnification [about 48 px per image].")
def sample_cmd(file, output, columns, classes, seed, epoch, no_means, scale):
    """Write a PNG grid of decoded samples: a row per class."""
    from d3fmt.loader.export import parse_classes, sample_grid

    info = sample_grid(file, output, columns=columns, classes=parse_classes(classes), seed=seed, epoch=epoch,
                       mark_means=not no_means, scale=scale)  # fmt: skip
    click.echo(f"wrote {info.path}: {len(info.classes)} classes x {info.columns} samples, {info.width}x{info.height} px")


@main.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--format", "fmt", type=click.Choice(["webdataset", "folder"]), required=True, help="webdataset tar shards or an ImageFolder tree of PNGs.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output directory (must be empty or new).")
@click.option("-n", "--per-class", type=int, help="Samples per class [the file's samples_per_class].")
@click.option("--classes", help="Comma-separated class indices [all classes].")
@click.option("--seed", default=0, show_default=True, help="Noise seed.")
@click.option("--epoch", default=0, show_default=True, help="Noise epoch.")
@click.option("--include-means", is_flag=True, help="The first L samples of each class are its prior means.")
@click.option("--hard-labels", is_flag=True, help="Do not write soft labels even when the file has them.")
@click.option("--shard-size", default=10000, show_default=True, help="Samples per webdataset shard.")
@click.option("--force", is_flag=True, help="Write into a non-empty output directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def export_cmd(file, fmt, output, per_class, classes, seed, epoch, include_means, hard_labels, shard_size, force, quiet):
    """Decode N samples per class into webdataset shards or a PNG ImageFolder."""
    from d3fmt.loader.export import export_samples, parse_classes

    info = export_samples(file, output, format=fmt, samples_per_class=per_class, seed=seed, epoch=epoch,
                          classes=parse_classes(classes), include_means=include_means,
                          soft=False if hard_labels else None, force=force, shard_size=shard_size,
                          progress=not quiet)  # fmt: skip
    labels = "hard + soft labels" if info.soft else "hard labels"
    click.echo(f"wrote {info.count} images ({labels}) as {info.format} to {info.out}")
