"""Commands that measure: eval (a file on real test data) and baseline (what a file must beat)."""

from __future__ import annotations

import json

import click

from d3fmt.cli.app import main
from d3fmt.cli.options import (
    DEFAULT_CACHE_DIR,
    LABEL_CHOICES,
    cache_config,
    cache_options,
    eval_options,
    recipe_configs,
)
from d3fmt.cli.render import (
    baseline_lines,
    best_recipe_lines,
    codecs_lines,
    compare_lines,
    echo,
    eval_lines,
    recipe_header,
)
from d3fmt.errors import ConfigError


def _progress(pbar):
    def tick(run, epoch, loss):
        pbar.update(1)
        pbar.set_postfix(run=run + 1, loss=f"{loss:.3f}")

    return tick


def _train_bar(quiet, cfg, desc):
    """A bar over passes: runs x epochs, or (step-based: passes follow from the data size) open-ended."""
    from d3fmt.progress import bar

    total = cfg.runs * cfg.epochs if cfg.steps is None else None
    return bar(quiet, total=total, desc=desc, unit="epoch" if cfg.steps is None else "pass")


@main.command("eval", context_settings={"max_content_width": 100})
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--test", "test_src", required=True,
              help="Real test data: SRC's test split if it has one; else, if SRC is the data the file was "
                   "distilled from, the split d3 pack held out; else all of SRC. Resized to the file's size.")
@click.option("--samples-per-class", type=int, help="Fresh decoded samples per class and epoch [the file's default].")
@click.option("--labels", type=click.Choice(LABEL_CHOICES), default="auto", show_default=True,
              help="auto: the stored teacher's labels when the file has a teacher, else its soft labels when it "
                   "has them, else the priors' classes (hard).")
@click.option("--no-record", is_flag=True, help="Do not append the evaluation record to FILE.")
@click.option("--compare", is_flag=True,
              help="Also train the codec family (see `d3 baseline codecs`) at FILE's exact bytes on the real "
                   "training images it was distilled from, with the same settings, and record the best codec "
                   "with the evaluation; `d3 inspect` then shows the margin. Give --steps so that the file's "
                   "stream and every subset get the same SGD steps (with --epochs, larger subsets get more).")
@click.option("--compare-codecs", help="Comma-separated codecs for --compare [png,post3,webp-q50,jpeg-q75,down2-4bit].")
@click.option("--source", "source_src",
              help="With --compare: the real training data [the source FILE's provenance names, which must "
                   "still have the same content hash].")
@cache_options(DEFAULT_CACHE_DIR)
@eval_options
def eval_cmd(file, test_src, samples_per_class, labels, no_record, compare, compare_codecs, source_src, cache_dir,
             no_cache, workers, as_json, quiet, **eval_kw):
    """Train fresh models on FILE's decoded stream only; test each final model on real data.

    \b
    Every epoch draws fresh samples (prior means too with soft labels), applies
    differentiable augmentation and trains with SGD (momentum 0.9, weight decay 5e-4,
    the learned learning rate, lr / 10 at half). The *final* model of each run is tested
    once on the real test set; mean and std over runs are printed and appended to FILE
    as an evaluation record (atomic rewrite, hashes updated) that `d3 inspect` shows.
    With --compare the record also holds the best same-bytes codec and its accuracy.
    """
    from d3fmt.evaluation.evaluate import evaluate_file, file_convnet_width

    if (compare_codecs or source_src) and not compare:
        raise ConfigError("--compare-codecs and --source only apply with --compare")
    if eval_kw["width"] is None and eval_kw["model"] == "convnet":
        eval_kw["width"] = file_convnet_width(file)
    cache = cache_config(cache_dir, no_cache, workers, quiet)
    results = {}
    for recipe, cfg in recipe_configs(**eval_kw, samples_per_class=samples_per_class, labels=labels).items():
        if compare:
            results[recipe] = _eval_compare(file, test_src, cfg, compare_codecs, source_src, no_record, as_json,
                                            quiet, cache, recipe).evaluation
            continue
        with _train_bar(quiet, cfg, "eval" if recipe is None else f"eval ({recipe})") as pbar:
            ev, test = evaluate_file(file, test_src, cfg, progress=_progress(pbar), record=not no_record, cache=cache)
        results[recipe] = ev
        if as_json:
            click.echo(json.dumps({"file": file, "test_set": test.name, "recorded": not no_record, "recipe": recipe,
                                   **ev.to_json()}))
        else:
            echo(recipe_header(recipe) + eval_lines(file, ev, test.name, not no_record))
    _echo_best(results, as_json)


def _echo_best(results: dict, as_json: bool) -> None:
    """With --recipe best: which recipe won (each method is judged at its better recipe)."""
    if len(results) < 2 or as_json:
        return
    from d3fmt.evaluation.evaluate import best_recipe

    echo(best_recipe_lines(best_recipe(results), results))


def _eval_compare(file, test_src, cfg, codecs, source_src, no_record, as_json, quiet, cache, recipe=None):
    from d3fmt.evaluation.baseline import compare_file
    from d3fmt.progress import bar

    with bar(quiet, total=None, desc="eval", unit="pass") as pbar:  # the file, then each codec
        result = compare_file(file, test_src, cfg, codecs=codecs, source=source_src, record=not no_record,
                              progress=_progress(pbar), on_codec=lambda name: pbar.set_description(name),
                              cache=cache)
    if as_json:
        click.echo(json.dumps({"file": file, "test_set": result.test_set, "recorded": not no_record, "recipe": recipe,
                               **result.evaluation.to_json(), "compare": result.record["compare"],
                               "margin_points": result.margin, "codecs": result.codecs.to_json()["codecs"]}))
    else:
        echo(recipe_header(recipe) + compare_lines(file, result, not no_record))
    return result


@main.group("baseline")
def baseline_group():
    """What a .d3 file must beat, with the protocol of `d3 eval`.

    \b
    d3 baseline random SRC --budget B   a random real subset, as PNGs, in the same bytes
    d3 baseline codecs SRC --budget B   the same kept with each codec of a family (PNG, zstd,
                                        posterised, WebP/JPEG sheets, downsampled), and the best
    d3 baseline full SRC                 every training image (the ceiling)
    """


def _baseline_run(kind, src, test_src, budget, image_size, subset_seed, out, eval_kw, as_json, quiet, cache):
    from d3fmt.evaluation.baseline import BaselineConfig, run_full, run_random

    results = {}
    for recipe, ecfg in recipe_configs(**eval_kw).items():
        cfg = BaselineConfig(source=src, test=test_src, budget=budget, image_size=image_size, seed=subset_seed,
                             out=out, evaluation=ecfg, cache=cache)
        with _train_bar(quiet, cfg.evaluation, f"baseline {kind}") as pbar:
            result = (run_random if kind == "random" else run_full)(cfg, progress=_progress(pbar))
        results[recipe] = result.evaluation
        if as_json:
            click.echo(json.dumps({**result.to_json(), "recipe": recipe}))
        else:
            echo(recipe_header(recipe) + baseline_lines(kind, result, out))
    _echo_best(results, as_json)


_test_option = click.option("--test", "test_src",
                            help="Real test data [SRC's test split or holdout]; SRC itself means its held-out part.")
_size_option = click.option("--image-size", type=int, help="Resize images to this square side [the source's].")


@baseline_group.command("random", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("--budget", type=float, required=True, help="Images per class: B*K*C*H*W*4 bytes of PNG files.")
@_test_option
@_size_option
@click.option("--subset-seed", default=0, show_default=True, help="Seed of the random choice of images.")
@click.option("--out", type=click.Path(file_okay=False), help="Save the chosen PNGs here (ImageFolder layout).")
@cache_options(DEFAULT_CACHE_DIR)
@eval_options
def baseline_random_cmd(src, budget, test_src, image_size, subset_seed, out, cache_dir, no_cache, workers, as_json,
                        quiet, **eval_kw):
    """A balanced random subset of SRC's training images that fits the budget as PNG files.

    As many images per class as fit in B*K*C*H*W*4 bytes (the PNG bytes Pillow writes plus
    a label list), the same count for every class, deterministic by --subset-seed; trained
    and tested like `d3 eval`. This is the honest competitor of a .d3 file of the same budget.
    """
    _baseline_run("random", src, test_src, budget, image_size, subset_seed, out, eval_kw, as_json, quiet,
                  cache_config(cache_dir, no_cache, workers, quiet))


@baseline_group.command("codecs", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("--budget", type=float, help="Images per class: the cap is B*K*C*H*W*4 bytes, as for a .d3 file.")
@click.option("--max-bytes", type=int, help="An explicit byte cap instead of --budget (e.g. a .d3 file's size).")
@click.option("--codecs", "codec_list",
              help="Comma-separated codecs [all: png, zstd, post2, post3, post4, webp-q30, webp-q50, webp-q75, "
                   "jpeg-q50, jpeg-q75, jpeg-q90, down2-4bit, down2-8bit].")
@_test_option
@_size_option
@click.option("--subset-seed", default=0, show_default=True, help="Seed of the random choice of images.")
@cache_options(DEFAULT_CACHE_DIR)
@eval_options
def baseline_codecs_cmd(src, budget, max_bytes, codec_list, test_src, image_size, subset_seed, cache_dir, no_cache,
                        workers, as_json, quiet, **eval_kw):
    """A balanced random subset of SRC kept with each codec of a family, in the same bytes.

    \b
    For each codec: the largest n images per class (the same random pick order as
    `d3 baseline random`, by --subset-seed) whose stored bytes fit the cap, decoded as
    a user would, trained and tested like `d3 eval`; then which codec is best. Bytes are
    exactly what would be stored: the image blobs plus a label list of one byte per image.
    \b
      png            one PNG per image (d3 baseline random)
      zstd           8-bit raw pixels, one block, zstd level 19
      post2..post4   k-bit posterised pixels, one block, zstd level 19
      webp-qQ        one lossy WebP sheet per class (images tiled), quality Q = 30, 50, 75
      jpeg-qQ        one JPEG sheet per class, quality Q = 50, 75, 90
      down2-4bit     half-side images (Pillow bilinear), 4-bit or 8-bit, one block, zstd 19,
      down2-8bit     upsampled back (bilinear) to train on
    """
    from d3fmt.evaluation.baseline import BaselineConfig

    results = {}
    for recipe, ecfg in recipe_configs(**eval_kw).items():
        cfg = BaselineConfig(source=src, test=test_src, budget=budget, image_size=image_size, seed=subset_seed,
                             evaluation=ecfg, cache=cache_config(cache_dir, no_cache, workers, quiet))
        result = _run_codecs(cfg, codec_list, max_bytes, quiet)
        results[recipe] = result.best.evaluation
        if as_json:
            click.echo(json.dumps({**result.to_json(), "recipe": recipe}))
        else:
            echo(recipe_header(recipe) + codecs_lines(result))
    _echo_best(results, as_json)


def _run_codecs(cfg, codec_list, max_bytes, quiet):
    """run_codecs under one progress bar: a step per codec, the run and loss as its postfix."""
    from d3fmt.evaluation.baseline import run_codecs
    from d3fmt.evaluation.codecs import parse_codecs
    from d3fmt.progress import bar

    names = parse_codecs(codec_list)
    started: list[str] = []
    with bar(quiet, total=len(names), desc="codecs", unit="codec") as pbar:
        def on_codec(name):
            if started:
                pbar.update(1)  # the previous codec is done
            started.append(name)
            pbar.set_description(name)

        def tick(run, epoch, loss):
            pbar.set_postfix(run=run + 1, loss=f"{loss:.3f}")

        result = run_codecs(cfg, names, max_bytes=max_bytes, progress=tick, on_codec=on_codec)
        pbar.update(1)
    return result


@baseline_group.command("full", context_settings={"max_content_width": 100})
@click.argument("src")
@_test_option
@_size_option
@cache_options(DEFAULT_CACHE_DIR)
@eval_options
def baseline_full_cmd(src, test_src, image_size, cache_dir, no_cache, workers, as_json, quiet, **eval_kw):
    """Every training image of SRC, trained and tested like `d3 eval`: the ceiling."""
    _baseline_run("full", src, test_src, None, image_size, 0, None, eval_kw, as_json, quiet,
                  cache_config(cache_dir, no_cache, workers, quiet))
