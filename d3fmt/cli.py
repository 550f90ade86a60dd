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
@main.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--verify", is_flag=True, help="Check every section hash; exit 1 on a mismatch.")
def inspect_cmd(file: str, as_json: bool, verify: bool):
    """Summarise a .d3 file: size, budget, classes, sections, subtasks, accuracy."""
    import json

    from d3fmt.format.inspect import render_text, summarize

    summary = summarize(file, verify=verify)
    click.echo(json.dumps(summary, ensure_ascii=False) if as_json else render_text(summary))


# --- sample / export (loader) ---

# --- pack (distiller) ---
@main.command("pack", context_settings={"max_content_width": 100})
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .d3 file to write.")
@click.option("--budget", type=float, help="Images per class: the file is at most B*K*C*H*W*4 bytes.")
@click.option("--max-bytes", type=int, help="An explicit byte cap for the whole file (instead of --budget).")
@click.option("--image-size", type=int, help="Resize images to this square side [default: the source's].")
@click.option("--test", "test_src", help="A separate held-out source for the final evaluation.")
@click.option("--holdout", type=float, help="Fraction held out for evaluation when SRC has no test split [0.2].")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) unreadable images instead of failing.")
@click.option("--subtasks", default=1, show_default=True, help="Class subsets distilled separately, each with its own experts and decoder.")
@click.option("--iterations", default=300, show_default=True, help="Distillation iterations per subtask (reference: 8000-10000).")
@click.option("--experts", "num_experts", default=5, show_default=True, help="Expert ConvNets per subtask (reference: 100).")
@click.option("--expert-epochs", default=15, show_default=True, help="Epochs each expert trains; its trajectory keeps every epoch.")
@click.option("--syn-steps", default=10, show_default=True, help="Unrolled student steps per iteration.")
@click.option("--match-epochs", default=2, show_default=True, help="Expert epochs the student must cover (M).")
@click.option("--max-start-epoch", default=0, show_default=True, help="Latest start epoch on the trajectory [0: as late as possible].")
@click.option("--mmd-weight", default=1.0, show_default=True, help="Weight of the MMD loss.")
@click.option("--convnet-width", default=128, show_default=True, help="Width of the expert, student and evaluation ConvNets.")
@click.option("--decoder", "family", type=click.Choice(["small", "medium", "large"]), help="Decoder family [fitter's choice].")
@click.option("--z-dim", type=int, help="Latent size [fitter's choice].")
@click.option("--latents", type=int, help="Latent priors per class [fitter's choice].")
@click.option("--decoder-width", type=int, help="Decoder base width [fitter's choice: the widest that fits].")
@click.option("--encoding", type=click.Choice(["float32", "float16", "int8"]), help="Decoder weight encoding [fitter's choice].")
@click.option("--hard-labels", is_flag=True, help="Store no soft labels.")
@click.option("--no-eval", is_flag=True, help="Skip the final evaluation on the held-out real split.")
@click.option("--eval-epochs", default=300, show_default=True, help="Epochs of the final evaluation training (reference: 1000).")
@click.option("--eval-runs", default=1, show_default=True, help="Independent evaluation runs (mean and std recorded).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of everything random.")
@click.option("--work-dir", default=".d3cache", show_default=True, type=click.Path(file_okay=False), help="Expert cache and checkpoints.")
@click.option("--checkpoint-every", default=50, show_default=True, help="Iterations between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def pack_cmd(src, output, budget, max_bytes, image_size, test_src, holdout, skip_bad, subtasks, iterations,
             num_experts, expert_epochs, syn_steps, match_epochs, max_start_epoch, mmd_weight, convnet_width,
             family, z_dim, latents, decoder_width, encoding, hard_labels, no_eval, eval_epochs, eval_runs,
             device, seed, work_dir, checkpoint_every, resume, quiet):
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
    before training so that the whole file uses 80-100% of the cap. The stored file is then
    evaluated on the held-out real split and the accuracy is recorded in it.
    """
    from d3fmt.augment import DSAParams
    from d3fmt.distill.experts import ExpertConfig
    from d3fmt.distill.pack import PackConfig, pack
    from d3fmt.distill.trainer import DistillConfig
    from d3fmt.evaluate import EvalConfig

    cfg = PackConfig(
        source=src, output=output, budget=budget, max_bytes=max_bytes, image_size=image_size, test=test_src,
        holdout=holdout, skip_bad=skip_bad, subtasks=subtasks, seed=seed, device=device, work_dir=work_dir,
        resume=resume, soft_labels=not hard_labels, family=family, z_dim=z_dim, latents_per_class=latents,
        decoder_width=decoder_width, encoding=encoding, quiet=quiet,
        experts=ExpertConfig(num_experts=num_experts, epochs=expert_epochs, width=convnet_width, seed=seed),
        distill=DistillConfig(iterations=iterations, syn_steps=syn_steps, expert_epochs=match_epochs,
                              max_start_epoch=max_start_epoch, mmd_weight=mmd_weight, seed=seed,
                              checkpoint_every=checkpoint_every, dsa=DSAParams()),
        evaluation=None if no_eval else EvalConfig(epochs=eval_epochs, runs=eval_runs, width=convnet_width,
                                                   seed=seed),
    )
    result = pack(cfg)
    click.echo(f"wrote {result.path}: {result.file_bytes} bytes = {result.file_bytes / result.max_bytes:.1%} "
               f"of the {result.max_bytes}-byte budget")
    p = result.plan
    click.echo(f"  decoder {p.family} width {p.width} ({p.weight_encoding}), z_dim {p.z_dim}, "
               f"{p.latents_per_class} latent(s) per class")
    if result.evaluation is not None:
        ev = result.evaluation
        click.echo(f"  accuracy {ev.mean:.2%} +- {ev.std:.2%} ({ev.model}, {len(ev.accuracies)} run(s), "
                   f"{ev.epochs} epochs, final model on the held-out split)")

# --- eval / baseline ---

# --- merge (federated) ---
