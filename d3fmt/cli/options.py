"""Options shared by several commands; their defaults come from the library's dataclasses."""

from __future__ import annotations

import click

from d3fmt.distill.presets import DEFAULTS

# EvalConfig's defaults (d3fmt.evaluation.evaluate imports torch, and the CLI must start
# without it: `d3 inspect`); tests/test_cli.py checks that they are EvalConfig's.
EVAL_DEFAULTS = dict(model="convnet", epochs=300, runs=1, batch_size=256, seed=0,
                     dsa="color_crop_cutout_flip_scale_rotate")
MODELS = ("convnet", "resnet18")  # evaluate.MODELS
LABEL_CHOICES = ("auto", "hard", "soft", "teacher")  # evaluate.LABEL_CHOICES
RECIPE_CHOICES = ("plain", "dsa", "best")  # evaluate.RECIPE_CHOICES
DEFAULT_CACHE_DIR = f"{DEFAULTS['work_dir']}/sources"  # = <pack's default --work-dir>/sources


class _TeacherWidth(click.ParamType):
    """``auto`` (the fitter's choice) or a width >= 0."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        from d3fmt.models.teacher import AUTO_TEACHER

        if isinstance(value, int) or str(value).lstrip("-").isdigit():
            return int(value)
        if str(value) == "auto":
            return AUTO_TEACHER
        self.fail(f"{value!r} is neither auto nor a width", param, ctx)


TEACHER_WIDTH = _TeacherWidth()


def stack(*options):
    """One decorator from several click options (applied in the order given)."""
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def cache_options(default_help: str):
    """--cache-dir / --no-cache / --workers: the decoded-image cache of ImageFolder and webdataset sources."""
    return stack(
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help=f"Decoded-image cache of ImageFolder / webdataset sources [{default_help}]; "
                          "built at the first read at an image size, reused after (see d3 prepare)."),
        click.option("--no-cache", is_flag=True, help="Decode the source's images at every read instead."),
        click.option("--workers", type=click.IntRange(1),
                     help="Processes decoding images into the cache [the CPUs this process may use]."),
    )


def cache_config(cache_dir, no_cache, workers, quiet, default=DEFAULT_CACHE_DIR):
    """The CacheConfig of --cache-dir / --no-cache / --workers (None: no cache)."""
    from d3fmt.sources.cache import CacheConfig, cache_dir_setting

    where = cache_dir_setting(cache_dir, no_cache)
    return None if where == "" else CacheConfig(where or default, workers=workers, progress=not quiet)


eval_options = stack(  # training options shared by `d3 eval` and `d3 baseline`: one protocol for all
    click.option("--model", type=click.Choice(MODELS), default=EVAL_DEFAULTS["model"], show_default=True,
                 help="convnet: what D3 distils for; resnet18: transfer to an unseen architecture."),
    click.option("--epochs", default=EVAL_DEFAULTS["epochs"], show_default=True, help="Training epochs per run (lr / 10 at half)."),
    click.option("--steps", type=int,
                 help="Total SGD steps per run; overrides --epochs. The passes over the data follow from its "
                      "size at --batch-size (the last one cut short), so a .d3 stream and real subsets of any "
                      "size train for exactly the same steps; lr / 10 at half the steps."),
    click.option("--runs", default=EVAL_DEFAULTS["runs"], show_default=True, help="Independent runs; mean and std are reported."),
    click.option("--lr", type=float, help="SGD learning rate [d3 eval: the file's learned lr; baselines: 0.01]."),
    click.option("--batch-size", default=EVAL_DEFAULTS["batch_size"], show_default=True, help="Training batch size."),
    click.option("--width", type=int,
                 help="ConvNet width [d3 eval: the width the file was distilled with; else 128]; with "
                      "--model resnet18 its first-stage width [64, the standard ResNet-18; 16 is 16x cheaper]."),
    click.option("--dsa", default=EVAL_DEFAULTS["dsa"], show_default=True,
                 help="Differentiable augmentation families joined by '_'; 'none' disables it."),
    click.option("--recipe", type=click.Choice(RECIPE_CHOICES),
                 help="Training recipe, instead of --dsa: plain = random crop + flip, dsa = the reference "
                      "augmentation, best = train under both and report the better one (a strong augmentation "
                      "multiplies a small real subset, so methods are compared each at its better recipe; "
                      "evidence: benchmarks/fmnist-recipes.md)."),
    click.option("--seed", default=EVAL_DEFAULTS["seed"], show_default=True, help="Seed of model init, sampling and augmentation."),
    click.option("--device", default=DEFAULTS["device"], show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
)


def recipe_configs(recipe=None, **eval_kw) -> dict:
    """{recipe name: EvalConfig} of the options above: one config, or one per recipe
    (``--recipe best``); the key is None when no --recipe was given (--dsa decides)."""
    cfg = eval_config(**eval_kw)
    if recipe is None:
        return {None: cfg}
    from d3fmt.evaluation.evaluate import recipe_configs as configs

    return configs(cfg, recipe)


def eval_config(model, epochs, steps, runs, lr, batch_size, width, dsa, seed, device, **extra):
    """The EvalConfig of the options above (validated; the device resolved)."""
    from d3fmt.device import resolve_device
    from d3fmt.evaluation.evaluate import EvalConfig

    cfg = EvalConfig(model=model, epochs=epochs, steps=steps, runs=runs, lr=lr, batch_size=batch_size, width=width,
                     dsa="" if dsa in ("none", "") else dsa, seed=seed, device=str(resolve_device(device)), **extra)
    cfg.validate()
    return cfg
