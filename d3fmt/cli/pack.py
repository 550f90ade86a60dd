"""Commands that write .d3 files: prepare (the decoded-image cache), pack and merge."""

from __future__ import annotations

import click

from d3fmt.cli.app import main
from d3fmt.cli.options import DEFAULT_CACHE_DIR, TEACHER_WIDTH, cache_options
from d3fmt.cli.render import echo, merge_lines, pack_lines
from d3fmt.distill.presets import DEFAULTS as D
from d3fmt.distill.presets import NAMES as PRESET_NAMES
from d3fmt.distill.presets import REPRESENTATIONS, preset_values
from d3fmt.format.decoders import FAMILIES
from d3fmt.format.encoding import FLOAT_ENCODINGS as ENCODINGS

PRIOR_MODES = ("kmeans", "images")  # d3fmt.distill.autoencoder.PRIOR_MODES (a torch module; tests/test_cli.py)


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


@main.command("pack", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .d3 file to write.")
@click.option("--budget", type=float, help="Images per class: the file is at most B*K*C*H*W*4 bytes.")
@click.option("--max-bytes", type=int, help="An explicit byte cap for the whole file (instead of --budget).")
@click.option("--image-size", type=int, help="Resize images to this square side [default: the source's].")
@click.option("--test", help="A separate held-out source for the final evaluation.")
@click.option("--holdout", type=float, help="Fraction held out for evaluation when SRC has no test split [0.2].")
@click.option("--skip-bad", is_flag=True, default=D["skip_bad"], help="Skip (and count) unreadable images instead of failing.")
@click.option("--subtasks", type=click.IntRange(1), help=f"Class subsets distilled separately, each with its own experts and decoder [{D['subtasks']}, more when the memory plan needs them].")
@click.option("--max-memory", help="Memory the pack may use (8G, 512M, bytes): the plan printed before training chooses batch_syn, mmd_classes and --subtasks (when not given) to fit it, and refuses settings that cannot [the device's memory minus 10%, at least 1 GiB].")
@click.option("--subtask", type=int, help="Distil only this subtask (0..S-1) into a partial file for `d3 merge` (job arrays).")
@click.option("--label-sample", default=D["label_sample"], show_default=True, help="With --soft-labels: real images per class (the first ones) the all-class soft-label expert trains on.")
@click.option("--representation", type=click.Choice(REPRESENTATIONS), default=D["representation"], show_default=True,
              help="What the file holds. latent: per-class Gaussian priors + decoders, distilled (the paper's D3; "
                   "the options below). anchors: as many real training images per class as fit, reduced to "
                   "2^--anchor-bits grey levels and context-coded, plus the --teacher-width teacher; every "
                   "anchor is one component of its class's mixture. Evidence: benchmarks/fmnist-recipes.md.")
@click.option("--anchor-bits", default=D["anchor_bits"], show_default=True, type=click.IntRange(1, 4),
              help="With --representation anchors: bits per pixel value (2^bits levels).")
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
              "matching + MMD run for the rest. Evidence for the default: benchmarks/.")
@click.option("--pretrain-steps", default=D["pretrain_steps"], show_default=True,
              help="Steps of the autoencoder stage: the decoder first learns to draw the real images (a VAE "
              "whose encoder is not stored) and each class's priors start on its encoded images; distillation "
              "then fine-tunes from there. 0 = method.md's random start. Evidence: benchmarks/.")
@click.option("--convnet-width", type=int, help=f"Width of the expert, student and evaluation ConvNets [{preset_values('convnet_width')}].")
@click.option("--decoder", "family", type=click.Choice(FAMILIES), help="Decoder family [fitter's choice].")
@click.option("--z-dim", type=int, help="Latent size [fitter's choice].")
@click.option("--latents", "latents_per_class", type=int, help="Latent priors per class [fitter's choice].")
@click.option("--decoder-width", type=int, help="Decoder base width [fitter's choice: the widest that fits].")
@click.option("--encoding", type=click.Choice(ENCODINGS), help="Decoder weight encoding [fitter's choice].")
@click.option("--max-decode-mflop", type=float,
              help="Decode cost cap: MFLOP per decoded image the fitter's decoder may take [20 kFLOP per "
                   "pixel, so that a CPU DataLoader decodes faster than a small model trains; evidence: "
                   "benchmarks/]; 0 = no cap. Ignored with --decoder-width.")
@click.option("--teacher-width", type=TEACHER_WIDTH, default=str(D["teacher_width"]), show_default=True,
              help="Width of a labelling teacher stored in the file: a ConvNet trained on SRC's training images "
                   "that labels every decoded sample on the fly (softmax of its logits); its bytes count against "
                   "the budget. auto = the fitter's choice (the widest up to 64 within a quarter of the budget); "
                   "0 = none (labels are the priors' classes). Evidence for the default: benchmarks/.")
@click.option("--teacher-epochs", default=D["teacher_epochs"], show_default=True, type=click.IntRange(1),
              help="Passes of the teacher over the real training images.")
@click.option("--priors", type=click.Choice(PRIOR_MODES), default=D["priors"], show_default=True,
              help="Where the autoencoder stage puts each class's L priors: kmeans = centres of L groups of its "
                   "encoded images; images = L of its images' own codes (with the class's mean variance).")
@click.option("--soft-labels/--hard-labels", default=D["soft_labels"], show_default=True,
              help="Also store one soft-label vector per prior (an all-class teacher's softmax on the decoded "
                   "prior mean) and train with it. Evidence for the default: benchmarks/.")
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
@cache_options("<--work-dir>/sources")
@click.option("--checkpoint-every", default=D["checkpoint_every"], show_default=True, help="Iterations between checkpoints.")
@click.option("--resume", is_flag=True, default=D["resume"], help="Continue an interrupted run from its last checkpoint.")
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
    from d3fmt.packing import pack

    result = pack(src, output, **settings)
    echo(pack_lines(result, output, settings["subtask"], settings["subtasks"] or D["subtasks"]), err=result.path is None)


@main.command("merge", context_settings={"max_content_width": 100})
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The merged .d3 file to write.")
@click.option("--source", "source_src", help="The source the parts were packed from [the spec they recorded].")
@click.option("--test", "test_src", help="A separate held-out source for the evaluation [the one the parts recorded].")
@click.option("--work-dir", default=D["work_dir"], show_default=True, type=click.Path(file_okay=False),
              help="Reuses a cached all-class soft-label expert.")
@cache_options("<--work-dir>/sources")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation of the merged file.")
@click.option("--eval-epochs", type=int, help="Epochs of the evaluation training [what the parts recorded, else 300].")
@click.option("--eval-runs", type=int, help="Independent evaluation runs [what the parts recorded].")
@click.option("--device", default=D["device"], show_default=True, help="auto, cpu, cuda or cuda:N.")
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
    from d3fmt.sources.cache import cache_dir_setting

    result = merge(list(parts), MergeConfig(output=output, source=source_src, test=test_src, work_dir=work_dir,
                                            device=device, evaluate=not no_eval, eval_epochs=eval_epochs,
                                            eval_runs=eval_runs, quiet=quiet, workers=workers,
                                            cache_dir=cache_dir_setting(cache_dir, no_cache)))
    echo(merge_lines(result, len(parts)))
