"""One subtask's distillation: experts, autoencoder start, distillation, its part file.

Every subtask (class subset) is distilled on its own -- its own experts, priors and
decoder -- with randomness seeded by (seed, subtask index) only, never by which
process or machine ran it, and written as a *partial container* (:func:`part_container`:
``partial: true``, hard labels, the tensors already in their stored encodings).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from d3fmt.distill.assemble import make_header, tensors_of
from d3fmt.distill.autoencoder import pretrain_cached
from d3fmt.distill.experts import Trajectories, train_experts
from d3fmt.distill.job import PackContext, load_subset, partition_hash
from d3fmt.distill.trainer import DistillResult, distill, initial_result
from d3fmt.errors import D3Error, training_errors
from d3fmt.format import D3Container, D3Reader, write_d3
from d3fmt.models.decoder import DecoderConfig
from d3fmt.progress import bar
from d3fmt.seeds import derive_seed


def distill_subtask(ctx: PackContext, i: int, device) -> tuple[DistillResult, Trajectories | None]:
    """Experts + autoencoder + distillation of subtask ``i``; randomness from (seed, i) only.

    With ``iterations == 0`` the autoencoder's decoder and priors are the result and no
    experts are trained (the trajectories returned are then None). A RuntimeError from
    torch (other than out of memory) becomes a one-line TrainingError naming the subtask.
    """
    with training_errors(f"distilling subtask {i}"):
        return _distill_subtask(ctx, i, device)


def _distill_subtask(ctx: PackContext, i: int, device) -> tuple[DistillResult, Trajectories | None]:
    cfg, classes, source = ctx.cfg, ctx.partition[i], ctx.source
    x, y = load_subset(source, classes, "train", ctx.mean, ctx.std)  # [N_i, C, H, W], [N_i]
    dcfg = replace(cfg.distill, mean=tuple(ctx.mean), std=tuple(ctx.std),
                   seed=derive_seed(cfg.distill.seed, "distill", i))
    traj = _subtask_experts(ctx, i, x, y, device) if dcfg.iterations else None
    decoder_cfg, run_dir = DecoderConfig.from_json(ctx.plan.decoders[i]), ctx.run_dir / f"subtask{i}"
    init = None
    if dcfg.autoencoder.steps:
        with bar(cfg.quiet, total=dcfg.autoencoder.steps, desc=f"autoencoder {i + 1}/{cfg.subtasks}",
                 unit="step") as pbar:
            init = pretrain_cached(run_dir, x.to(device), y, len(classes), decoder_cfg, ctx.plan.latents_per_class,
                                   dcfg.autoencoder, ctx.mean, ctx.std, derive_seed(dcfg.seed, "autoencoder"),
                                   progress=pbar)
    if not dcfg.iterations:
        return initial_result(init, dcfg), None
    with bar(cfg.quiet, total=dcfg.iterations, desc=f"distil {i + 1}/{cfg.subtasks}", unit="it") as pbar:
        result = distill(x, y, len(classes), decoder_cfg, ctx.plan.latents_per_class, traj, dcfg, device=device,
                         checkpoint_dir=run_dir, resume=cfg.resume, progress=pbar, init=init)
    return result, traj


def _subtask_experts(ctx: PackContext, i: int, x, y, device) -> Trajectories:
    cfg, classes, source = ctx.cfg, ctx.partition[i], ctx.source
    tx, ty = _test_subset(source, classes, ctx.mean, ctx.std)
    ecfg = replace(cfg.experts, seed=derive_seed(cfg.experts.seed, "experts", i))
    with bar(cfg.quiet, total=ecfg.num_experts * ecfg.epochs,
             desc=f"experts {i + 1}/{cfg.subtasks}", unit="epoch") as pbar:
        return train_experts(x, y, len(classes), ecfg, Path(cfg.work_dir) / "experts", device=device,
                             progress=pbar, data_id=f"{source.info.content_hash}:{source.info.image_shape}",
                             classes=classes, x_test=tx, y_test=ty)


def _test_subset(source, classes, mean, std):
    if not source.info.num_test:
        return None, None
    return load_subset(source, classes, "test", mean, std)


def part_path(run_dir: Path, i: int) -> Path:
    return Path(run_dir) / f"part-{i:04d}.d3"


def part_container(ctx: PackContext, i: int, result, trajectories) -> D3Container:
    """Subtask ``i`` as a partial container: its priors and decoder in the planned
    encodings, hard labels (soft labels come after the merge), the job's header fields
    and ``provenance.part`` (subtask count, partition digest, learned lr, expert accuracy)."""
    header = make_header(ctx.info, ctx.partition, ctx.plan, ctx.budget, ctx.mean, ctx.std,
                         ctx.cfg, result.lr)
    entry = header["subtasks"][i]
    entry["tensors"].pop("soft", None)
    header["subtasks"] = [entry]
    header["labels"] = "hard"
    header["partial"] = True
    accuracy = [float(a) for a in (getattr(trajectories, "test_accuracy", None) or []) if a is not None]
    header["provenance"]["part"] = {"of": len(ctx.partition), "partition": partition_hash(ctx.partition),
                                    "subtasks": [i], "lr": [float(result.lr)], "expert_accuracy": [accuracy]}
    tensors, encodings = tensors_of(header, ctx.plan, [result], None)
    return D3Container(header, tensors, encodings)


def _finished_part(path: Path, i: int) -> bool:
    """A part a previous run of the same job (same run directory) already wrote."""
    try:
        return D3Reader(path).header["provenance"]["part"]["subtasks"] == [i]
    except (D3Error, KeyError, TypeError):
        return False


def distill_parts(ctx: PackContext, ids: list[int], device) -> list[Path]:
    """Distil the subtasks ``ids`` one after another; each becomes a part file in the run
    directory (with ``resume``, parts finished by an earlier run are kept)."""
    paths = []
    for i in ids:
        path = part_path(ctx.run_dir, i)
        if not (ctx.cfg.resume and _finished_part(path, i)):
            result, trajectories = distill_subtask(ctx, i, device)
            write_d3(path, part_container(ctx, i, result, trajectories))
        paths.append(path)
    return paths
