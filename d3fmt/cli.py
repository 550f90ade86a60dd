"""The ``d3`` command line: thin click commands over library functions.

Every command parses its options and calls into the library. A :class:`D3Error`
raised anywhere below becomes one ``Error: ...`` line on stderr and its class's exit code
(``D3Error.exit_code``, see :mod:`d3fmt.errors`), in one place (:class:`_Group`); so does
running out of (device) memory (a :class:`TrainingError`); a Ctrl-C becomes exit code 130
with no traceback.
"""

from __future__ import annotations

import sys

import click

from d3fmt import __version__
from d3fmt.distill.presets import DEFAULTS as D
from d3fmt.distill.presets import NAMES as PRESET_NAMES
from d3fmt.distill.presets import preset_values
from d3fmt.errors import ConfigError, D3Error, TrainingError, missing_extra


class _TeacherWidth(click.ParamType):
    """``auto`` (the fitter's choice) or a width >= 0."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        from d3fmt.teacher import AUTO_TEACHER

        if isinstance(value, int) or str(value).lstrip("-").isdigit():
            return int(value)
        if str(value) == "auto":
            return AUTO_TEACHER
        self.fail(f"{value!r} is neither auto nor a width", param, ctx)


TEACHER_WIDTH = _TeacherWidth()


class _Group(click.Group):
    """A click group that turns library errors into clean one-line CLI errors."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except D3Error as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
                raise
            click.echo(f"Error: out of memory ({str(exc).splitlines()[0] if str(exc) else 'MemoryError'}); "
                       "use a smaller --budget, --convnet-width or batch size, or another device", err=True)
            sys.exit(TrainingError.exit_code)
        except ModuleNotFoundError as exc:
            error = missing_extra(exc)
            if error is None:
                raise
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


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


# --- inspect (container) ---
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


# --- sample / export (loader) ---
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
    from d3fmt.export import parse_classes, sample_grid

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
    from d3fmt.export import export_samples, parse_classes

    info = export_samples(file, output, format=fmt, samples_per_class=per_class, seed=seed, epoch=epoch,
                          classes=parse_classes(classes), include_means=include_means,
                          soft=False if hard_labels else None, force=force, shard_size=shard_size,
                          progress=not quiet)  # fmt: skip
    labels = "hard + soft labels" if info.soft else "hard labels"
    click.echo(f"wrote {info.count} images ({labels}) as {info.format} to {info.out}")


# --- prepare (decoded-image cache) ---
DEFAULT_CACHE_DIR = ".d3cache/sources"  # = <pack's default --work-dir>/sources


def _cache_options(default_help: str):
    """--cache-dir / --no-cache / --workers: the decoded-image cache of ImageFolder and webdataset sources."""
    def decorate(fn):
        fn = click.option("--workers", type=click.IntRange(1), help="Processes decoding images into the cache "
                          "[the CPUs this process may use].")(fn)
        fn = click.option("--no-cache", is_flag=True, help="Decode the source's images at every read instead.")(fn)
        return click.option("--cache-dir", type=click.Path(file_okay=False),
                            help=f"Decoded-image cache of ImageFolder / webdataset sources [{default_help}]; "
                                 "built at the first read at an image size, reused after (see d3 prepare).")(fn)
    return decorate


def _cache_config(cache_dir, no_cache, workers, quiet, default=DEFAULT_CACHE_DIR):
    from d3fmt.sources.cache import CacheConfig

    where = _pack_cache_dir(cache_dir, no_cache)
    return None if where == "" else CacheConfig(where or default, workers=workers, progress=not quiet)


def _pack_cache_dir(cache_dir, no_cache):
    """A PackConfig's cache_dir: None (<work-dir>/sources), a directory, or "" (no cache)."""
    if no_cache and cache_dir:
        raise ConfigError("give --cache-dir or --no-cache, not both")
    return "" if no_cache else cache_dir


@main.command("prepare", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("--image-size", type=int, help="Square side the images are resized to [the source's].")
@click.option("--test", help="A separate held-out source to cache as well (at SRC's size and channels).")
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where the cache goes: give d3 pack the same (its default is <--work-dir>/sources).")
@click.option("--workers", type=click.IntRange(1), help="Decoding processes [the CPUs this process may use].")
@click.option("--skip-bad", is_flag=True, help="Succeed although some images are unreadable (they are skipped).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def prepare_cmd(src, image_size, test, cache_dir, workers, skip_bad, quiet):
    """Decode every image of SRC once, at --image-size, into the decoded-image cache.

    \b
    For an ImageFolder or webdataset SRC: one uint8 array per part (train, val/) plus a
    manifest (content hash, size, classes, unreadable images), decoded in parallel worker
    processes. `d3 pack`, `d3 eval` and `d3 baseline` at the same size then read pixels
    from there and decode nothing. Run it once before a job array. An interrupted build
    resumes where it stopped; a changed source is rebuilt (with a message). Unreadable
    images are listed in the manifest; without --skip-bad they make this command fail.

    \b
    Identity: an entry is reused while the source has the same file names, sizes and
    modification times (as make and rsync compare files; a source of at most 64 MiB:
    the same bytes). An image replaced by another of the same size gets a new mtime and
    the entry is rebuilt; so does a copy made without keeping times (cp -a, rsync -a keep
    them). The content hash recorded in packed files leaves mtimes out: a copied dataset
    is still the same data.
    """
    from d3fmt.sources.cache import CacheConfig
    from d3fmt.sources.spec import prepare_cache

    cfg = CacheConfig(cache_dir, workers=workers, progress=not quiet)
    for status in prepare_cache(src, cfg, image_size=image_size, skip_bad=skip_bad, test=test):
        counts = " + ".join(f"{n:,} {part}" for part, n in status.records.items())
        if status.built:
            rate = status.decoded / max(status.seconds, 1e-9)
            resumed = f", {status.resumed_blocks} blocks kept from an interrupted build" if status.resumed_blocks else ""
            done = (f"decoded {status.decoded:,} images in {status.seconds:.1f} s ({rate:,.0f} images/s, "
                    f"{status.workers} worker(s){resumed})")
        else:
            done = "complete, nothing decoded"
        click.echo(f"{status.path}: {counts} images; {done}")
        if status.bad:
            s = "" if len(status.bad) == 1 else "s"
            click.echo(f"  {len(status.bad)} unreadable image{s} skipped (listed in {status.path / 'manifest.json'})")


# --- pack (distiller) ---
@main.command("pack", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .d3 file to write.")
@click.option("--budget", type=float, help="Images per class: the file is at most B*K*C*H*W*4 bytes.")
@click.option("--max-bytes", type=int, help="An explicit byte cap for the whole file (instead of --budget).")
@click.option("--image-size", type=int, help="Resize images to this square side [default: the source's].")
@click.option("--test", help="A separate held-out source for the final evaluation.")
@click.option("--holdout", type=float, help="Fraction held out for evaluation when SRC has no test split [0.2].")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) unreadable images instead of failing.")
@click.option("--subtasks", type=click.IntRange(1), help=f"Class subsets distilled separately, each with its own experts and decoder [{D['subtasks']}, more when the memory plan needs them].")
@click.option("--max-memory", help="Memory the pack may use (8G, 512M, bytes): the plan printed before training chooses batch_syn, mmd_classes and --subtasks (when not given) to fit it, and refuses settings that cannot [the device's memory minus 10%, at least 1 GiB].")
@click.option("--subtask", type=int, help="Distil only this subtask (0..S-1) into a partial file for `d3 merge` (job arrays).")
@click.option("--label-sample", default=D["label_sample"], show_default=True, help="With --soft-labels: real images per class (the first ones) the all-class soft-label expert trains on.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=D["preset"],
              show_default=True, help="Bundle of the settings below: fast (CPU, minutes), standard (GPU), "
              "reference (method.md); auto = standard on CUDA, fast on CPU. Options given explicitly win.")
@click.option("--iterations", type=int, help=f"Distillation iterations per subtask [{preset_values('iterations')}].")
@click.option("--experts", "num_experts", type=int, help=f"Expert ConvNets per subtask [{preset_values('num_experts')}].")
@click.option("--expert-epochs", type=int, help=f"Epochs each expert trains; every epoch is kept [{preset_values('expert_epochs')}].")
@click.option("--syn-steps", type=int, help=f"Unrolled student steps per iteration [{preset_values('syn_steps')}].")
@click.option("--match-epochs", default=D["match_epochs"], show_default=True, help="Expert epochs the student must cover (M).")
@click.option("--max-start-epoch", default=D["max_start_epoch"], show_default=True, help="Latest start epoch on the trajectory [0: as late as possible].")
@click.option("--mmd-weight", default=D["mmd_weight"], show_default=True, help="Weight of the MMD loss.")
@click.option("--warmup", type=float, default=D["warmup"], show_default=True,
              help="Share of the iterations that first train by MMD alone (student lr frozen); trajectory "
              "matching + MMD run for the rest. From a random start (--pretrain-steps 0) trajectory matching "
              "degraded short runs (digits: warm-up 0.2 -> 37%, 0.9 -> 70%), hence the high default.")
@click.option("--pretrain-steps", default=D["pretrain_steps"], show_default=True,
              help="Steps of the autoencoder stage: the decoder first learns to draw the real images (a VAE "
              "whose encoder is not stored) and each class's priors start on its encoded images (k-means). "
              "Distillation then fine-tunes from there. 0 = method.md's random start. Measured (digits, "
              "budget 10): 70% from a random start, 99% from this stage alone (--iterations 0).")
@click.option("--convnet-width", type=int, help=f"Width of the expert, student and evaluation ConvNets [{preset_values('convnet_width')}].")
@click.option("--decoder", "family", type=click.Choice(["small", "medium", "large"]), help="Decoder family [fitter's choice].")
@click.option("--z-dim", type=int, help="Latent size [fitter's choice].")
@click.option("--latents", "latents_per_class", type=int, help="Latent priors per class [fitter's choice].")
@click.option("--decoder-width", type=int, help="Decoder base width [fitter's choice: the widest that fits].")
@click.option("--encoding", type=click.Choice(["float32", "float16", "int8"]), help="Decoder weight encoding [fitter's choice].")
@click.option("--max-decode-mflop", type=float,
              help="Decode cost cap: MFLOP per decoded image the fitter's decoder may take [20 kFLOP per "
                   "pixel: 15.7 at 28x28, 81.9 at 64x64, so a CPU DataLoader decodes faster than a small model "
                   "trains; benchmarks/loader.md]; 0 = no cap. Ignored with --decoder-width.")
@click.option("--teacher-width", type=TEACHER_WIDTH, default=str(D["teacher_width"]), show_default=True,
              help="Width of a labelling teacher stored in the file: a ConvNet trained on SRC's training images "
                   "that labels every decoded sample on the fly (softmax of its logits); its bytes count against "
                   "the budget. auto = the fitter's choice (the widest up to 64 within a quarter of the budget); "
                   "0 = none (labels are the priors' classes). Measured on Fashion-MNIST it did not beat hard "
                   "labels reliably (benchmarks/fmnist-ablation.md, section 7), hence off.")
@click.option("--teacher-epochs", default=D["teacher_epochs"], show_default=True, type=click.IntRange(1),
              help="Passes of the teacher over the real training images.")
@click.option("--priors", type=click.Choice(["kmeans", "images"]), default=D["priors"], show_default=True,
              help="Where the autoencoder stage puts each class's L priors: kmeans = centres of L groups of its "
                   "encoded images; images = L of its images' own codes (with the class's mean variance).")
@click.option("--soft-labels/--hard-labels", default=D["soft_labels"], show_default=True,
              help="Also store one soft-label vector per prior (an all-class teacher's softmax on the decoded "
                   "prior mean) and train with it. Measured on Fashion-MNIST, budget 10: never better than hard "
                   "labels, and 7 points worse with a weak teacher (benchmarks/fmnist-ablation.md), hence off.")
@click.option("--no-eval", "evaluate", flag_value=False, default=D["evaluate"], help="Skip the final evaluation on the held-out real split.")
@click.option("--eval-epochs", type=int, help=f"Epochs of the final evaluation training [{preset_values('eval_epochs')}].")
@click.option("--eval-runs", default=D["eval_runs"], show_default=True, help="Independent evaluation runs (mean and std recorded).")
@click.option("--compare", is_flag=True, default=D["compare"],
              help="The final evaluation also trains the same-bytes codec family (d3 baseline codecs' default "
                   "shortlist at the file's exact bytes) and records the best codec beside the file's accuracy; "
                   "d3 inspect then shows the margin. Costs one evaluation per codec.")
@click.option("--device", default=D["device"], show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=D["seed"], show_default=True, help="Seed of everything random.")
@click.option("--work-dir", default=D["work_dir"], show_default=True, type=click.Path(file_okay=False), help="Expert cache and checkpoints.")
@_cache_options("<--work-dir>/sources")
@click.option("--checkpoint-every", default=D["checkpoint_every"], show_default=True, help="Iterations between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def pack_cmd(src, output, **settings):
    """Distil the labelled images of SRC into a .d3 file that fits the budget.

    \b
    SRC is one of:
      digits                      scikit-learn's bundled 8x8 digits (the demo)
      DIR/                        an ImageFolder (class sub-directories; train/ + val/ if present)
      DIR/ with IDX files         MNIST-style *-images-idx3-ubyte[.gz] + labels
      data.npz                    arrays x [N,H,W(,C)] uint8 and y [N] (x_test, y_test optional)
      shards-{000..009}.tar       webdataset shards

    \b
    Per subtask it trains expert ConvNets on the real data (cached in --work-dir), then
    learns latent Gaussian priors per class and a decoder by trajectory matching against
    the experts plus MMD on expert features (Distributional Dataset Distillation). The
    budget fitter picks latents per class, latent size, decoder width and tensor encoding
    before training so that the whole file uses 80-100% of the cap (less when the decode cost
    cap, --max-decode-mflop, stops the decoder's width first). The stored file is then
    evaluated on the held-out real split and the accuracy is recorded in it.

    \b
    Federated: with --subtasks S, all subtasks run here one after another (one worker
    process per GPU when several are visible); under `torchrun --nproc_per_node=N -m
    d3fmt pack ...` the ranks share them and rank 0 writes the file; with --subtask i
    (a job array) only subtask i is written, as a part for `d3 merge`.
    """
    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    cfg = pack_config(src, output, **settings)
    result = pack(cfg)
    if result.path is None:  # a torchrun rank other than 0
        click.echo(f"sent subtasks {result.subtasks} ({result.file_bytes} bytes) to rank 0, which writes {output}",
                   err=True)
        return
    if result.partial:
        click.echo(f"wrote part {result.path} (subtask {cfg.subtask} of {cfg.subtasks}): {result.file_bytes} bytes; "
                   f"merge all parts with `d3 merge PARTS... -o OUT --source SRC`")
        return
    click.echo(f"wrote {result.path}: {result.file_bytes} bytes = {result.file_bytes / result.max_bytes:.1%} "
               f"of the {result.max_bytes}-byte budget")
    p = result.plan
    click.echo(f"  decoder {p.family} width {p.width} ({p.weight_encoding}), z_dim {p.z_dim}, "
               f"{p.latents_per_class} latent(s) per class, {p.decode_mflop:g} MFLOP per decoded image")
    if result.evaluation is not None:
        ev = result.evaluation
        click.echo(f"  accuracy {ev.mean:.2%} +- {ev.std:.2%} ({ev.model}, {len(ev.accuracies)} run(s), "
                   f"{ev.epochs} epochs, final model on the held-out split)")

# --- eval / baseline ---
def _eval_options(fn):
    """Training options shared by `d3 eval` and `d3 baseline` (one protocol for all)."""
    options = [
        click.option("--model", type=click.Choice(["convnet", "resnet18"]), default="convnet", show_default=True,
                     help="convnet: what D3 distils for; resnet18: transfer to an unseen architecture."),
        click.option("--epochs", default=300, show_default=True, help="Training epochs per run (lr / 10 at half)."),
        click.option("--steps", type=int,
                     help="Total SGD steps per run; overrides --epochs. The passes over the data follow from its "
                          "size at --batch-size (the last one cut short), so a .d3 stream and real subsets of any "
                          "size train for exactly the same steps; lr / 10 at half the steps."),
        click.option("--runs", default=1, show_default=True, help="Independent runs; mean and std are reported."),
        click.option("--lr", type=float, help="SGD learning rate [d3 eval: the file's learned lr; baselines: 0.01]."),
        click.option("--batch-size", default=256, show_default=True, help="Training batch size."),
        click.option("--width", type=int,
                     help="ConvNet width [d3 eval: the width the file was distilled with; else 128]; with "
                          "--model resnet18 its first-stage width [64, the standard ResNet-18; 16 is 16x cheaper]."),
        click.option("--dsa", default="color_crop_cutout_flip_scale_rotate", show_default=True,
                     help="Differentiable augmentation families joined by '_'; 'none' disables it."),
        click.option("--seed", default=0, show_default=True, help="Seed of model init, sampling and augmentation."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _eval_config(model, epochs, steps, runs, lr, batch_size, width, dsa, seed, device, **extra):
    from d3fmt.device import resolve_device
    from d3fmt.evaluate import EvalConfig

    cfg = EvalConfig(model=model, epochs=epochs, steps=steps, runs=runs, lr=lr, batch_size=batch_size, width=width,
                     dsa="" if dsa in ("none", "") else dsa, seed=seed, device=str(resolve_device(device)), **extra)
    cfg.validate()
    return cfg


def _progress(pbar):
    def tick(run, epoch, loss):
        pbar.update(1)
        pbar.set_postfix(run=run + 1, loss=f"{loss:.3f}")

    return tick


def _schedule(ev) -> str:
    return f"{ev.epochs} epochs" if ev.steps is None else f"{ev.steps} steps ({ev.epochs} passes)"


def _accuracy_line(ev) -> str:
    return f"{ev.model}: {ev.mean:.2%} +- {ev.std:.2%} over {len(ev.accuracies)} run(s), {_schedule(ev)}, final model"


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
@click.option("--labels", type=click.Choice(["auto", "hard", "soft", "teacher"]), default="auto", show_default=True,
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
@_cache_options(DEFAULT_CACHE_DIR)
@_eval_options
def eval_cmd(file, test_src, samples_per_class, labels, no_record, compare, compare_codecs, source_src, cache_dir,
             no_cache, workers, model, epochs, steps, runs, lr, batch_size, width, dsa, seed, device, as_json, quiet):
    """Train fresh models on FILE's decoded stream only; test each final model on real data.

    \b
    Every epoch draws fresh samples (prior means too with soft labels), applies
    differentiable augmentation and trains with SGD (momentum 0.9, weight decay 5e-4,
    the learned learning rate, lr / 10 at half). The *final* model of each run is tested
    once on the real test set; mean and std over runs are printed and appended to FILE
    as an evaluation record (atomic rewrite, hashes updated) that `d3 inspect` shows.
    With --compare the record also holds the best same-bytes codec and its accuracy.
    """
    import json

    from d3fmt.evaluate import evaluate_file, file_convnet_width

    if (compare_codecs or source_src) and not compare:
        raise ConfigError("--compare-codecs and --source only apply with --compare")
    if width is None and model == "convnet":
        width = file_convnet_width(file)
    cfg = _eval_config(model, epochs, steps, runs, lr, batch_size, width, dsa, seed, device,
                       samples_per_class=samples_per_class, labels=labels)
    cache = _cache_config(cache_dir, no_cache, workers, quiet)
    if compare:
        return _eval_compare(file, test_src, cfg, compare_codecs, source_src, no_record, as_json, quiet, cache)
    with _train_bar(quiet, cfg, "eval") as pbar:
        ev, test = evaluate_file(file, test_src, cfg, progress=_progress(pbar), record=not no_record, cache=cache)
    if as_json:
        click.echo(json.dumps({"file": file, "test_set": test.name, "recorded": not no_record, **ev.to_json()}))
        return
    click.echo(f"{_accuracy_line(ev)} on {test.name}")
    click.echo(f"  {ev.protocol}")
    if not no_record:
        click.echo(f"  recorded in {file} (see `d3 inspect {file}`)")


def _eval_compare(file, test_src, cfg, codecs, source_src, no_record, as_json, quiet, cache):
    import json

    from d3fmt.baseline import compare_file
    from d3fmt.progress import bar

    with bar(quiet, total=None, desc="eval", unit="pass") as pbar:  # the file, then each codec
        result = compare_file(file, test_src, cfg, codecs=codecs, source=source_src, record=not no_record,
                              progress=_progress(pbar), on_codec=lambda name: pbar.set_description(name),
                              cache=cache)
    ev = result.evaluation
    if as_json:
        click.echo(json.dumps({"file": file, "test_set": result.test_set, "recorded": not no_record,
                               **ev.to_json(), "compare": result.record["compare"], "margin_points": result.margin,
                               "codecs": result.codecs.to_json()["codecs"]}))
        return
    click.echo(f"{_accuracy_line(ev)} on {result.test_set}")
    click.echo(f"  {ev.protocol}")
    click.echo(f"same {result.file_bytes:,} bytes as real images:")
    click.echo(_codec_table(result.codecs))
    best = result.codecs.best
    click.echo(f"{result.margin:+.1f} points over the best same-bytes codec, {best.codec}, "
               f"{best.images_per_class} images/class")
    if not no_record:
        click.echo(f"  recorded in {file} (see `d3 inspect {file}`)")


def _codec_table(family) -> str:
    """One line per codec: n per class, bytes, accuracy; the best marked."""
    best = family.best.codec
    lines = [f"  {'codec':<12} {'images/class':>12} {'bytes':>12}  {'accuracy':>17}  description"]
    for r in family.results:
        if r.evaluation is None:
            acc = "does not fit"
        else:
            acc = f"{r.evaluation.mean:.2%} +- {r.evaluation.std:.2%}"
        mark = "  <- best" if r.codec == best else ""
        lines.append(f"  {r.codec:<12} {r.images_per_class:>12,} {r.bytes:>12,}  {acc:>17}  {r.description}{mark}")
    return "\n".join(lines)


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
    import json

    from d3fmt.baseline import BaselineConfig, run_full, run_random

    cfg = BaselineConfig(source=src, test=test_src, budget=budget, image_size=image_size, seed=subset_seed,
                         out=out, evaluation=_eval_config(**eval_kw), cache=cache)
    with _train_bar(quiet, cfg.evaluation, f"baseline {kind}") as pbar:
        result = (run_random if kind == "random" else run_full)(cfg, progress=_progress(pbar))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    ev = result.evaluation
    if kind == "random":
        click.echo(f"random subset: {result.images_per_class} PNG images per class, {result.bytes:,} of "
                   f"{result.max_bytes:,} bytes (one more per class: {result.next_bytes or 'n/a'} bytes)")
    else:
        click.echo(f"full training set: {result.train_images:,} images ({result.bytes:,} bytes as PNG)")
    click.echo(f"{_accuracy_line(ev)} on {result.test_set}")
    click.echo(f"  {ev.protocol}")
    if out:
        click.echo(f"  chosen PNGs saved under {out}/")


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
@_cache_options(DEFAULT_CACHE_DIR)
@_eval_options
def baseline_random_cmd(src, budget, test_src, image_size, subset_seed, out, cache_dir, no_cache, workers, as_json,
                        quiet, **eval_kw):
    """A balanced random subset of SRC's training images that fits the budget as PNG files.

    As many images per class as fit in B*K*C*H*W*4 bytes (the PNG bytes Pillow writes),
    the same count for every class, deterministic by --subset-seed; trained and tested
    like `d3 eval`. This is the honest competitor of a .d3 file of the same budget.
    """
    _baseline_run("random", src, test_src, budget, image_size, subset_seed, out, eval_kw, as_json, quiet,
                  _cache_config(cache_dir, no_cache, workers, quiet))


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
@_cache_options(DEFAULT_CACHE_DIR)
@_eval_options
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
    import json

    from d3fmt.baseline import BaselineConfig, run_codecs
    from d3fmt.codecs import parse_codecs
    from d3fmt.progress import bar

    names = parse_codecs(codec_list)
    cfg = BaselineConfig(source=src, test=test_src, budget=budget, image_size=image_size, seed=subset_seed,
                         evaluation=_eval_config(**eval_kw), cache=_cache_config(cache_dir, no_cache, workers, quiet))
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
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    ev = result.best.evaluation
    click.echo(f"codecs at {result.max_bytes:,} bytes, {ev.model}, {_schedule(ev)}, {len(ev.accuracies)} run(s), "
               f"final model on {result.test_set}:")
    click.echo(_codec_table(result))
    best = result.best
    click.echo(f"best: {best.codec} ({best.images_per_class} images/class, {best.bytes:,} bytes), "
               f"{best.evaluation.mean:.2%} +- {best.evaluation.std:.2%}")
    click.echo(f"  {ev.protocol}")


@baseline_group.command("full", context_settings={"max_content_width": 100})
@click.argument("src")
@_test_option
@_size_option
@_cache_options(DEFAULT_CACHE_DIR)
@_eval_options
def baseline_full_cmd(src, test_src, image_size, cache_dir, no_cache, workers, as_json, quiet, **eval_kw):
    """Every training image of SRC, trained and tested like `d3 eval`: the ceiling."""
    _baseline_run("full", src, test_src, None, image_size, 0, None, eval_kw, as_json, quiet,
                  _cache_config(cache_dir, no_cache, workers, quiet))

# --- merge (federated) ---
@main.command("merge", context_settings={"max_content_width": 100})
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The merged .d3 file to write.")
@click.option("--source", "source_src", help="The source the parts were packed from [the spec they recorded].")
@click.option("--test", "test_src", help="A separate held-out source for the evaluation [the one the parts recorded].")
@click.option("--work-dir", default=".d3cache", show_default=True, type=click.Path(file_okay=False),
              help="Reuses a cached all-class soft-label expert.")
@_cache_options("<--work-dir>/sources")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation of the merged file.")
@click.option("--eval-epochs", type=int, help="Epochs of the evaluation training [what the parts recorded, else 300].")
@click.option("--eval-runs", type=int, help="Independent evaluation runs [what the parts recorded].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def merge_cmd(parts, output, source_src, test_src, work_dir, cache_dir, no_cache, workers, no_eval, eval_epochs,
              eval_runs, device, quiet):
    """Merge the parts of a federated job (`d3 pack ... --subtasks S --subtask i`) into one file.

    \b
    The parts must belong together: same source hash, settings, budget plan and class
    partition, every subtask exactly once. Soft labels over all classes are then
    assigned by one expert trained on all classes (a bounded sample per class; cached in
    --work-dir), so merging needs the source (--source; not with --hard-labels parts and
    --no-eval). The merged file is checked against the byte cap and evaluated.
    """
    from d3fmt.distill.merge import MergeConfig, merge

    result = merge(list(parts), MergeConfig(output=output, source=source_src, test=test_src, work_dir=work_dir,
                                            device=device, evaluate=not no_eval, eval_epochs=eval_epochs,
                                            eval_runs=eval_runs, quiet=quiet, workers=workers,
                                            cache_dir=_pack_cache_dir(cache_dir, no_cache)))
    click.echo(f"merged {len(parts)} part(s), {len(result.subtasks)} subtasks, into {result.path}: "
               f"{result.file_bytes} bytes = {result.file_bytes / result.max_bytes:.1%} of the "
               f"{result.max_bytes}-byte budget")
    if result.evaluation is not None:
        ev = result.evaluation
        click.echo(f"  accuracy {ev.mean:.2%} +- {ev.std:.2%} ({ev.model}, {len(ev.accuracies)} run(s), "
                   f"{ev.epochs} epochs, final model on the held-out split)")
