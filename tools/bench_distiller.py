"""Distiller speed: seconds per distillation iteration and expert epochs/s, before vs after.

    python tools/bench_distiller.py --before /path/to/old/checkout     # ~15 min on 2 cores
    python tools/bench_distiller.py --before /work/main --rounds 1 --sources fmnist

Writes benchmarks/distiller.json + benchmarks/distiller.md. Each code path (``before``:
the d3fmt of another checkout, put first on PYTHONPATH; ``after``: this working tree)
runs in its own subprocess, alternately, ``--rounds`` times, so both see the same load.

What one measurement does, as `d3 pack SRC --budget B --preset fast --device cpu` would
for its first subtask (the budget fitter's decoder and latents per class, the fast
preset's ConvNet width, DistillConfig defaults otherwise):

- experts: ``train_experts`` of one expert for ``--expert-epochs`` epochs on the first
  ``--expert-images`` images of the subtask -> epochs/s and images/s;
- distillation: ``distill`` from those trajectories, ``--mmd-iterations`` warm-up
  iterations (MMD only; `d3 pack` runs 90% of its iterations like this) then
  ``--mtt-iterations`` full ones (trajectory matching + MMD) -> seconds per iteration of
  each kind (the first iteration is left out), wall clock and process CPU time.
  ``pack_it_s`` is what `d3 pack`'s distillation runs at: the fast preset's 300
  iterations, 270 of them warm-up, divided by their estimated time.

Sources (``--sources NAME:BUDGET,...``): ``fmnist`` (Fashion-MNIST from
/usr/share/datasets/fashion-mnist, 28x28 grey) at budget 10, and ``shapes64`` (a
generated 64x64 RGB ImageFolder, tools/make_shapes.py's data, 10 classes x 300 images)
at budget 1: at budget 10 the fitter gives it 100 latents per class, and the unrolled
student's 10 steps over 1,000 decoded 64x64 samples need more than this machine's 24 GiB
(killed for memory, before and after this change alike). The machine is shared: the load average is recorded beside
every measurement, and CPU seconds (which other processes inflate less than wall time)
beside the wall clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = "/usr/share/datasets/fashion-mnist"
PACK_ITERATIONS, PACK_WARMUP = 300, 270  # the fast preset's iterations and its 0.9 warm-up share
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- worker


def _shapes_source(work: Path) -> str:
    from d3fmt.sources.synthetic import make_shapes_folder

    root = work / "shapes64"
    if not (root / "train").exists():
        make_shapes_folder(root, num_classes=10, per_class=300, image_size=64, val_per_class=10, seed=0)
    return str(root)


def _source(name: str, work: Path) -> str:
    return FASHION if name == "fmnist" else _shapes_source(work)


class _Clock:
    """Wall and CPU time of every distillation iteration (the trainer's progress callback)."""

    def __init__(self):
        self.marks = [(time.perf_counter(), time.process_time())]

    def __call__(self, iteration, losses):
        self.marks.append((time.perf_counter(), time.process_time()))

    def per_iteration(self, first: int, last: int) -> dict:
        """Mean wall / CPU seconds of iterations first..last-1 (0-based)."""
        (w0, c0), (w1, c1) = self.marks[first], self.marks[last]
        n = max(1, last - first)
        return {"wall_s": (w1 - w0) / n, "cpu_s": (c1 - c0) / n, "iterations": n}


def measure(args) -> dict:
    """One measurement with whatever d3fmt is first on sys.path (see the module doc)."""
    from dataclasses import replace

    import torch

    import d3fmt
    import d3fmt.device
    from d3fmt.distill.experts import ExpertConfig, train_experts
    from d3fmt.distill.job import load_subset, prepare
    from d3fmt.distill.settings import pack_config
    from d3fmt.distill.trainer import distill
    from d3fmt.models.decoder import DecoderConfig

    # `d3 pack` tunes the allocator inside distill() only (d3fmt.device.cpu_allocator_tuned), which
    # distill() below does by itself; older code tuned the whole process first
    scoped = hasattr(d3fmt.device, "cpu_allocator_tuned")
    tune = None if scoped else getattr(d3fmt.device, "tune_cpu_allocator", None)
    tuned = "distill loop" if scoped else bool(tune and tune())
    work = Path(args.work)
    name, budget = args.source.split(":")
    cfg = pack_config(_source(name, work), str(work / "out.d3"), budget=float(budget), preset="fast", device="cpu",
                      work_dir=str(work / "cache"))
    ctx = prepare(cfg)
    classes = ctx.partition[0]
    x, y = load_subset(ctx.source, classes, "train", ctx.mean, ctx.std)
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[: args.expert_images]
    ecfg = ExpertConfig(**{**cfg.experts.to_json(), "num_experts": 1, "epochs": args.expert_epochs})
    with tempfile.TemporaryDirectory(dir=work) as cache:
        t0, c0 = time.perf_counter(), time.process_time()
        traj = train_experts(x[keep], y[keep], len(classes), ecfg, Path(cache))
        t1, c1 = time.perf_counter(), time.process_time()
        traj = type(traj).from_tensors(traj.convnet, [traj.trajectory(0)])
    dcfg = DecoderConfig.from_json(ctx.plan.decoders[0])
    n = args.mmd_iterations + args.mtt_iterations
    d = replace(cfg.distill, iterations=n, warmup=args.mmd_iterations, expert_epochs=min(2, args.expert_epochs),
                mean=tuple(ctx.mean), std=tuple(ctx.std), checkpoint_every=0)
    clock = _Clock()
    distill(x, y, len(classes), dcfg, ctx.plan.latents_per_class, traj, d, progress=clock)
    mmd = clock.per_iteration(1, args.mmd_iterations)
    mtt = clock.per_iteration(args.mmd_iterations, n)
    pack_s = PACK_WARMUP * mmd["wall_s"] + (PACK_ITERATIONS - PACK_WARMUP) * mtt["wall_s"]
    pack_cpu = PACK_WARMUP * mmd["cpu_s"] + (PACK_ITERATIONS - PACK_WARMUP) * mtt["cpu_s"]
    return {
        "version": d3fmt.__version__, "d3fmt_path": str(Path(d3fmt.__file__).parent.parent),
        "source": args.source, "image_shape": list(x.shape[1:]), "train_images": int(x.shape[0]),
        "latents_per_class": ctx.plan.latents_per_class, "decoder": dcfg.to_json(), "convnet_width": ecfg.width,
        "expert": {"images": int(keep.numel()), "epochs": args.expert_epochs,
                   "epochs_per_s": args.expert_epochs / (t1 - t0), "cpu_s_per_epoch": (c1 - c0) / args.expert_epochs,
                   "images_per_s": keep.numel() * args.expert_epochs / (t1 - t0)},
        "mmd_iteration": mmd, "mtt_iteration": mtt,
        "pack_it_s": PACK_ITERATIONS / pack_s, "pack_it_per_cpu_s": PACK_ITERATIONS / pack_cpu,
        "allocator_tuned": tuned, "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- driver


def _run(path: Path, source: str, args, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--source", source, "--work", str(work),
           "--expert-images", str(args.expert_images), "--expert-epochs", str(args.expert_epochs),
           "--mmd-iterations", str(args.mmd_iterations), "--mtt-iterations", str(args.mtt_iterations)]
    env = {**os.environ, "PYTHONPATH": str(path)}
    load = list(os.getloadavg())
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed ({path}, {source}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_avg_before"] = load
    return result


def _median(runs: list[dict], *keys) -> float:
    values = []
    for r in runs:
        v = r
        for k in keys:
            v = v[k]
        values.append(v)
    return statistics.median(values)


def _summary(runs: dict[str, list[dict]]) -> dict:
    rows = {}
    for label, rs in runs.items():
        if not rs:
            continue
        rows[label] = {
            "mmd_s": _median(rs, "mmd_iteration", "wall_s"), "mmd_cpu_s": _median(rs, "mmd_iteration", "cpu_s"),
            "mtt_s": _median(rs, "mtt_iteration", "wall_s"), "mtt_cpu_s": _median(rs, "mtt_iteration", "cpu_s"),
            "pack_it_s": _median(rs, "pack_it_s"), "pack_it_per_cpu_s": _median(rs, "pack_it_per_cpu_s"),
            "expert_epochs_per_s": _median(rs, "expert", "epochs_per_s"),
            "expert_cpu_s_per_epoch": _median(rs, "expert", "cpu_s_per_epoch"),
        }
    if "before" in rows and "after" in rows:
        b, a = rows["before"], rows["after"]
        rows["speedup"] = {"pack_it_s": a["pack_it_s"] / b["pack_it_s"],
                           "pack_it_per_cpu_s": a["pack_it_per_cpu_s"] / b["pack_it_per_cpu_s"],
                           "mtt_wall": b["mtt_s"] / a["mtt_s"], "mmd_wall": b["mmd_s"] / a["mmd_s"],
                           "expert_epochs_per_s": a["expert_epochs_per_s"] / b["expert_epochs_per_s"]}
    return rows


def _markdown(report: dict) -> str:
    lines = [f"# Distiller speed (CPU), {report['date']}", "", f"Command: `{report['command']}`  ",
             f"Device: {report['device']}; d3fmt {report['version']}; torch {report['torch']}  ",
             f"Before: d3fmt at `{report['before']}`; after: `{report['after']}`.", "",
             "Per source, medians over the rounds. `pack it/s`: the fast preset's 300 iterations (270 MMD-only "
             "warm-up + 30 MTT+MMD) divided by their time, wall clock and per CPU second.", ""]
    lines += ["| source | code | MMD-only s/it (cpu s) | MTT+MMD s/it (cpu s) | pack it/s (per cpu s) "
              "| expert epochs/s (cpu s/epoch) |", "|---|---|---|---|---|---|"]
    for source, summary in report["summary"].items():
        for label in ("before", "after"):
            if label not in summary:
                continue
            r = summary[label]
            lines.append(f"| {source} | {label} | {r['mmd_s']:.3f} ({r['mmd_cpu_s']:.3f}) | {r['mtt_s']:.2f} "
                         f"({r['mtt_cpu_s']:.2f}) | {r['pack_it_s']:.4f} ({r['pack_it_per_cpu_s']:.4f}) "
                         f"| {r['expert_epochs_per_s']:.3f} ({r['expert_cpu_s_per_epoch']:.2f}) |")
        if "speedup" in summary:
            s = summary["speedup"]
            lines.append(f"| {source} | **after / before** | x{s['mmd_wall']:.2f} | x{s['mtt_wall']:.2f} "
                         f"| **x{s['pack_it_s']:.2f}** (x{s['pack_it_per_cpu_s']:.2f}) "
                         f"| x{s['expert_epochs_per_s']:.2f} |")
    lines += ["", "Every measurement (load averages included) is in distiller.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a checkout whose d3fmt is the 'before' code (omit: after only)")
    parser.add_argument("--sources", default="fmnist:10,shapes64:1", help="SOURCE:BUDGET,...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--expert-images", type=int, default=3000)
    parser.add_argument("--expert-epochs", type=int, default=2)
    parser.add_argument("--mmd-iterations", type=int, default=8)
    parser.add_argument("--mtt-iterations", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "distiller"))
    parser.add_argument("--work", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args)))
        return 0
    import torch
    from machine import cpu_model

    import d3fmt

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-distiller-"))
    paths = {"after": ROOT} if not args.before else {"before": Path(args.before).resolve(), "after": ROOT}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python tools/bench_distiller.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": f"CPU: {cpu_model()} ({os.cpu_count()} cores, {platform.machine()})",
              "version": d3fmt.__version__, "torch": torch.__version__, "before": str(paths.get("before")),
              "after": str(ROOT), "runs": {}, "summary": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for source in args.sources.split(","):
        runs = {label: [] for label in paths}
        report["runs"][source] = runs
        for r in range(args.rounds):
            for label, path in paths.items():
                runs[label].append(_run(path, source, args, work))
                print(f"{source} round {r} {label}: {json.dumps(runs[label][-1]['mtt_iteration'])}", file=sys.stderr)
                report["summary"][source] = _summary(runs)
                out.with_suffix(".json").write_text(json.dumps(report, indent=1))  # incremental
        out.with_suffix(".md").write_text(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
