#!/usr/bin/env python
"""Scale benchmark of `d3 pack`: wall time and peak memory against classes and subtasks.

    python tools/bench_scale.py --classes 10 100 1000 --subtasks 1 10 100 --per-class 50 \
        --data /tmp/d3scale --out benchmarks/scale.json

Generates ImageNet-shaped sources (64x64 RGB shapes, up to 1000 classes, an ImageFolder
with train/ and val/ on disk; reused when present) and packs each (classes, subtasks)
pair in a fresh child process at tiny distillation settings (the same for every run), so
its peak resident memory (``ru_maxrss``) belongs to that run alone. The point is how time
and memory *scale*, not accuracy: no evaluation, 2 iterations, 1 expert of 1 epoch,
ConvNet width 8, budget 10 with decoder width 32 and one latent per class fixed (the
fitter would pick decoders of width 2048 for 1000 classes, or fill the bytes with latents:
far too slow on a CPU), soft-label sample 5 per class. Files are therefore under their cap. Writes ``--out`` (JSON) and the same rows as a markdown table next to it.

``--jpeg``: the decoded-image cache on a generated ImageFolder of full-size JPEGs shaped
like ImageNet (``tools/bench_jpeg.py``, which takes the rest of the options; it writes
``benchmarks/scale-jpeg.{json,md}`` by default):

    python tools/bench_scale.py --jpeg --classes 1000 --per-class 25 --subtasks 1 10 100 \
        --data /tmp/d3jpeg --out benchmarks/scale-jpeg.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from scale_settings import SETTINGS  # tools/ is on sys.path when this file runs as a script


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child(spec: dict) -> dict:
    """One pack run (in a fresh process); returns its measurements."""
    import torch

    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rss_start = peak_rss_mib()
    start = time.perf_counter()
    result = pack(pack_config(spec["source"], spec["output"], subtasks=spec["subtasks"], work_dir=spec["work_dir"],
                              device="cpu", quiet=True, evaluate=False, **SETTINGS))
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_after_imports_mib": round(rss_start, 1), "file_bytes": result.file_bytes,
            "max_bytes": result.max_bytes, "decoder_width": result.plan.width,
            "latents_per_class": result.plan.latents_per_class}


def make_source(root: Path, classes: int, per_class: int, val: int, size: int, workers: int) -> tuple[Path, float]:
    """The shapes ImageFolder for ``classes`` (reused when a finished one is there)."""
    from d3fmt.sources.synthetic import make_shapes_folder

    folder = root / f"shapes{size}-c{classes}-n{per_class}"
    done = folder / ".complete"
    start = time.perf_counter()
    if not done.exists():
        make_shapes_folder(folder, num_classes=classes, per_class=per_class, image_size=size, val_per_class=val,
                           workers=workers)
        done.write_text("ok\n")
    return folder, time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.png"))


def run_child(spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"run {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = [
        "# `d3 pack` at scale: time and memory against classes and subtasks",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; device: {report['device']}; d3fmt {report['d3fmt_version']}, "
        f"torch {report['torch_version']}, Python {report['python']}.",
        "",
        f"Source: generated shapes ImageFolder, {report['image_size']}x{report['image_size']} RGB, "
        f"{report['per_class']} train + {report['val_per_class']} val images per class (PNG on disk).",
        f"Settings (the same for every run): {json.dumps(report['settings'])}; no evaluation; "
        f"torch threads: {report['threads'] or 'default'}.",
        "",
        "| classes | subtasks | train images | source on disk | wall (s) | peak RSS (MiB) | RSS after imports (MiB) "
        "| file bytes / cap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['classes']} | {r['subtasks']} | {r['train_images']:,} | {r['source_mib']:.0f} MiB | "
                     f"{r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['rss_after_imports_mib']:.0f} | "
                     f"{r['file_bytes']:,} / {r['max_bytes']:,} |")
    lines += ["", "Notes:", "", *[f"- {line}" for line in NOTES + observations(report["runs"])], ""]
    return "\n".join(lines)


NOTES = [
    "Reduced to fit about 20 minutes on a shared 2-core CPU: 50 train images per class (ImageNet has about "
    "1,300), the tiny settings above, one torch thread per run, no evaluation.",
    "Peak RSS is the whole process; Python + torch alone take the 'after imports' column.",
    "The machine was shared with other jobs (load average about 6 on 2 cores): wall times are inflated and "
    "noisy; compare rows, not absolute seconds.",
]


def observations(runs: list[dict]) -> list[str]:
    """One line per class count measured with several subtask counts."""
    lines = []
    for classes in sorted({r["classes"] for r in runs}):
        rows = sorted((r for r in runs if r["classes"] == classes), key=lambda r: r["subtasks"])
        if len(rows) < 2:
            continue
        parts = ", ".join(f"S={r['subtasks']}: {r['peak_rss_mib']:.0f} MiB in {r['wall_s']:.0f} s" for r in rows)
        lines.append(f"{classes} classes: {parts}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--jpeg" in argv:
        from bench_jpeg import jpeg_main  # tools/ is on sys.path when this file runs as a script

        return jpeg_main([a for a in argv if a != "--jpeg"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--jpeg", action="store_true", help="the decoded-image cache on a JPEG tree (tools/bench_jpeg.py)")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--subtasks", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--per-class", type=int, default=50, help="train images per class")
    parser.add_argument("--val-per-class", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--data", default="/tmp/d3scale", help="where sources and work dirs go")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the source")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: stable timings on a shared machine; 0: torch's default)")
    parser.add_argument("--out", default="benchmarks/scale.json")
    parser.add_argument("--markdown-only", action="store_true", help="only re-render the .md from --out")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.markdown_only:
        out = Path(args.out)
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
        return 0

    import torch

    import d3fmt

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    runs = []
    for classes in args.classes:
        folder, gen_s = make_source(data, classes, args.per_class, args.val_per_class, args.size, args.workers)
        mib = folder_bytes(folder) / 2**20
        print(f"source {folder}: {mib:.0f} MiB ({gen_s:.0f} s)", file=sys.stderr)
        for subtasks in args.subtasks:
            if subtasks > classes:
                continue
            tag = f"c{classes}-s{subtasks}"
            spec = {"source": str(folder), "output": str(data / f"{tag}.d3"), "subtasks": subtasks,
                    "work_dir": str(data / f"work-{tag}"), "threads": args.threads}
            row = {"classes": classes, "subtasks": subtasks, "train_images": classes * args.per_class,
                   "source_mib": round(mib, 1), **run_child(spec, args.timeout)}
            print(json.dumps(row), file=sys.stderr)
            runs.append(row)
    report = {
        "benchmark": "pack_scale",
        "command": "python tools/bench_scale.py " + " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), no GPU",
        "d3fmt_version": d3fmt.__version__, "torch_version": torch.__version__, "python": platform.python_version(),
        "image_size": args.size, "per_class": args.per_class, "val_per_class": args.val_per_class,
        "settings": SETTINGS, "threads": args.threads, "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
