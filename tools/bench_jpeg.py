#!/usr/bin/env python
"""The decoded-image cache at ImageNet shape: cache build rate, first and second pack, peak RSS.

    python tools/bench_scale.py --jpeg --classes 1000 --per-class 25 --subtasks 1 10 100 \
        --data /tmp/d3jpeg --out benchmarks/scale-jpeg.json

Generates (once; reused when complete) an ImageFolder ``train/`` + ``val/`` of full-size
JPEGs: ``--classes`` class directories of ``--per-class`` images each, every image
``--min-side``..``--max-side`` px on each side (ImageNet's are about 400 x 350), a class's
shape picture (d3fmt.sources.synthetic) scaled up and mixed with one of a pool of
multi-octave noise textures, saved at JPEG quality 75-95. Then, each in a fresh child
process so that its peak RSS is its own (worker processes included):

1. ``d3 prepare SRC --image-size 64`` with 1 and with 2 workers (fresh caches): images/s,
   and images/s per worker.
2. A second pack for every S of ``--subtasks``, on the cache the prepare built: wall,
   peak RSS, images decoded (0 expected), and the data-loading share of the wall time
   (opening the source -- listing, content hash, cache check -- plus reading pixels).
3. The first ``d3 pack`` of the source (the first S, fresh cache: it builds the cache itself).

All packs use bench_scale's tiny settings (and a 2-step autoencoder stage) at --image-size 64 with no evaluation; the
markdown table extrapolates each figure linearly to ImageNet-1k's 1,281,167 + 50,000 images.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scale_settings import SETTINGS

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
# bench_scale's tiny settings, a 2-step autoencoder stage, and per-iteration batches bounded in classes
# (MMD over 32 random classes, 256 samples per inner step) so that a 1000-class subtask's compute
# does not grow with its class count: memory then follows its uint8 images.
PACK_SETTINGS = {**SETTINGS, "pretrain_steps": 2, "mmd_classes": 32, "batch_syn": 256}
TEXTURES = 48
SIZE = 64


# --- the JPEG tree ---

@functools.lru_cache(maxsize=1)
def _textures(seed: int) -> list[np.ndarray]:
    """float32 [512, 512, 3] noise textures: four octaves of bilinearly upsampled random grids."""
    from PIL import Image

    rng = np.random.default_rng([seed, 99])
    out = []
    for _ in range(TEXTURES):
        tex = np.zeros((512, 512, 3), np.float32)
        for cells, weight in ((4, 60.0), (16, 35.0), (64, 20.0), (256, 10.0)):
            grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
            tex += weight * (np.asarray(Image.fromarray(grid).resize((512, 512), Image.BILINEAR), np.float32) / 255 - 0.5)
        out.append(tex)
    return out


def _write_class(task: tuple) -> int:
    """Write one class's JPEGs; returns the bytes written."""
    from PIL import Image

    from d3fmt.sources.synthetic import render_shape, shape_classes

    root, split, k, count, classes, lo, hi, seed = task
    cls = shape_classes(classes)[k]
    textures = _textures(seed)
    rng = np.random.default_rng([seed, k, 0 if split == "train" else 1])
    folder = Path(root) / split / f"n{k:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
        shape = Image.fromarray(render_shape(cls, rng, 96)).resize((w, h), Image.BILINEAR)
        tex = textures[int(rng.integers(TEXTURES))]
        y0, x0 = int(rng.integers(0, 512 - h + 1)), int(rng.integers(0, 512 - w + 1))
        pixels = np.clip(np.asarray(shape, np.float32) + tex[y0:y0 + h, x0:x0 + w], 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
        (folder / f"n{k:08d}_{i:05d}.JPEG").write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def make_jpeg_tree(root: Path, classes: int, per_class: int, val: int, lo: int, hi: int, workers: int,
                   seed: int = 0) -> tuple[Path, float, int]:
    """The tree (reused when a complete one is there): (root, seconds, bytes)."""
    done = root / ".complete"
    if done.exists():
        return root, 0.0, int(done.read_text())
    start = time.perf_counter()
    tasks = [(str(root), split, k, n, classes, lo, hi, seed)
             for split, n in (("train", per_class), ("val", val)) if n for k in range(classes)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(_write_class, tasks, chunksize=8))
    done.write_text(str(total))
    return root, time.perf_counter() - start, total


# --- child processes ---

def _peak_mib() -> float:
    """Peak RSS of this process or of any worker process it waited for, in MiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


class LoadTimer:
    """Seconds spent opening sources and inside Part.read (decoding or cache reads), and decodes."""

    def __init__(self):
        self.open_s = self.read_s = 0.0
        self.decoded = 0

    def install(self) -> None:
        from d3fmt.distill import job
        from d3fmt.sources import cache, imagefolder

        real_open = job.open_source

        def timed_open(*args, **kw):
            start = time.perf_counter()
            try:
                return real_open(*args, **kw)
            finally:
                self.open_s += time.perf_counter() - start

        job.open_source = timed_open
        for cls in (imagefolder.FilesPart, cache.CachedPart):
            cls.read = self._timed_read(cls.read)
        real_decode, real_ensure = imagefolder.decode_image, cache.ensure_cache

        def counting_decode(*args, **kw):
            self.decoded += 1
            return real_decode(*args, **kw)

        def counting_ensure(*args, **kw):
            status = real_ensure(*args, **kw)
            self.decoded += status.decoded   # decoded by worker processes
            return status

        imagefolder.decode_image, cache.ensure_cache = counting_decode, counting_ensure

    def _timed_read(self, read):
        def timed(part, *args, **kw):
            inner = read(part, *args, **kw)
            while True:
                start = time.perf_counter()
                item = next(inner, None)
                self.read_s += time.perf_counter() - start
                if item is None:
                    return
                yield item
        return timed


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of the worker processes it waited for."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def child_pack(spec: dict) -> dict:
    import torch

    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    torch.set_num_threads(spec["threads"])
    timer = LoadTimer()
    timer.install()
    start = time.perf_counter()
    result = pack(pack_config(spec["source"], spec["output"], subtasks=spec["subtasks"], work_dir=spec["work_dir"],
                              cache_dir=spec["cache_dir"], image_size=SIZE, device="cpu", quiet=True,
                              evaluate=False, **PACK_SETTINGS))
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(_peak_mib(), 1), "open_s": round(timer.open_s, 2),
            "read_s": round(timer.read_s, 2), "loading_share": round((timer.open_s + timer.read_s) / wall, 4),
            "decoded": timer.decoded, "file_bytes": result.file_bytes}


# The headline row (issue 20): the README's ImageNet command as typed -- default settings, only the
# training shortened -- on the 1,000-class tree at 64x64 and budget 2, the memory plan choosing S,
# batch_syn and mmd_classes; peak RSS, wall time per stage and the plan's prediction beside it.
HEADLINE_SETTINGS = dict(budget=2.0, image_size=SIZE, iterations=3, num_experts=1, expert_epochs=2, match_epochs=1,
                         pretrain_steps=20, evaluate=False)
HEADLINE_COMMAND = ("d3 pack TREE -o in1k.d3 --budget 2 --image-size 64 --iterations 3 --experts 1 "
                    "--expert-epochs 2 --match-epochs 1 --pretrain-steps 20 --no-eval")


class StageTimer:
    """Wall seconds inside each stage of a pack (cache + source, experts, autoencoder, distillation, merge)."""

    STAGES = (("train_experts", "experts"), ("pretrain_cached", "autoencoder"), ("distill", "distillation"))

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_before: dict[str, float] = {}  # peak RSS (MiB) so far when each stage first starts
        self.peak_after: dict[str, float] = {}  # ... and when it last ends: the stage's peak if it grew
        self.memory = None

    def install(self) -> None:
        from d3fmt.distill import job, subtask

        for name, stage in self.STAGES:
            setattr(subtask, name, self._timed(getattr(subtask, name), stage))
        real_plan = job.plan_pack_memory

        def capture(*args, **kw):
            out = real_plan(*args, **kw)
            self.memory = out[1]
            return out

        job.plan_pack_memory = capture

    def _timed(self, fn, stage):
        def timed(*args, **kw):
            start = time.perf_counter()
            self.peak_before.setdefault(stage, round(_peak_mib(), 1))
            try:
                return fn(*args, **kw)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
                self.peak_after[stage] = round(_peak_mib(), 1)
        return timed


def child_headline(spec: dict) -> dict:
    import torch

    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    torch.set_num_threads(spec["threads"])
    timer = StageTimer()
    timer.install()
    start = time.perf_counter()
    result = pack(pack_config(spec["source"], spec["output"], work_dir=spec["work_dir"], device="cpu", quiet=True,
                              **HEADLINE_SETTINGS))
    wall = time.perf_counter() - start
    stages = {k: round(v, 1) for k, v in timer.seconds.items()}
    stages["other"] = round(wall - sum(timer.seconds.values()), 1)  # opening, cache build, budget fit, merge
    return {"wall_s": round(wall, 1), "stages_s": stages, "peak_rss_mib": round(_peak_mib(), 1),
            "peak_before_mib": timer.peak_before, "peak_after_mib": timer.peak_after,
            "plan": timer.memory.to_json(), "plan_line": timer.memory.line(), "file_bytes": result.file_bytes}


def child_prepare(spec: dict) -> dict:
    from d3fmt.sources.cache import CacheConfig
    from d3fmt.sources.spec import prepare_cache

    start, cpu_start = time.perf_counter(), _cpu_s()
    status = prepare_cache(spec["source"], CacheConfig(spec["cache_dir"], workers=spec["workers"]), image_size=SIZE)
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu_start
    decoded = sum(s.decoded for s in status)
    build = sum(s.seconds for s in status)
    return {"wall_s": round(wall, 1), "build_s": round(build, 1), "decoded": decoded,
            "images_per_s": round(decoded / build, 1), "peak_rss_mib": round(_peak_mib(), 1),
            "cpu_s": round(cpu, 1), "cores_busy": round(cpu / wall, 2), "images_per_cpu_s": round(decoded / cpu, 1),
            "cache_bytes": sum(f.stat().st_size for s in status for f in s.path.glob("*.npy"))}


def run_child(kind: str, spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {spec} failed:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"run": kind, **spec, **row}), file=sys.stderr)
    return row


# --- report ---

def extrapolate(report: dict) -> None:
    """Adds ImageNet-1k figures to every row (see NOTES for the rules)."""
    n = report["train_images"] + report["val_images"]
    for row in report["prepare"]:
        row["imagenet_hours"] = round((IMAGENET_TRAIN + IMAGENET_VAL) / row["images_per_s"] / 3600, 2)
    for row in report["packs"]:
        row["imagenet_loading_s"] = round((row["open_s"] + row["read_s"]) * (IMAGENET_TRAIN + IMAGENET_VAL) / n, 0)
        row["held_uint8_mib"] = round(report["train_images"] / row["subtasks"] * 3 * SIZE * SIZE / 2**20, 1)
        row["rss_target_mib"] = round(1.25 * row["held_uint8_mib"] + 1024, 0)
    slope = rss_slope(report["packs"])
    report["rss_per_held_byte"] = round(slope, 2)
    for row in report["packs"]:
        imagenet_held = IMAGENET_TRAIN / row["subtasks"] * 3 * SIZE * SIZE / 2**20
        row["imagenet_held_uint8_gib"] = round(imagenet_held / 1024, 1)
        row["imagenet_peak_rss_gib"] = round((row["peak_rss_mib"] + slope * (imagenet_held - row["held_uint8_mib"]))
                                             / 1024, 1)


def rss_slope(packs: list[dict]) -> float:
    """Peak RSS bytes per byte of one subtask's uint8 images, from the second packs with the
    most and the fewest images per subtask (1.25, the target's slope, when there is one S)."""
    second = sorted((r for r in packs if r["pack"] == "second"), key=lambda r: r["held_uint8_mib"])
    if len(second) < 2 or second[-1]["held_uint8_mib"] <= second[0]["held_uint8_mib"]:
        return 1.25
    d_rss = second[-1]["peak_rss_mib"] - second[0]["peak_rss_mib"]
    return max(0.0, d_rss / (second[-1]["held_uint8_mib"] - second[0]["held_uint8_mib"]))


def markdown(report: dict) -> str:
    lines = [
        "# The decoded-image cache on an ImageNet-shaped JPEG tree",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; device: {report['device']}; d3fmt {report['d3fmt_version']}, "
        f"Python {report['python']}; load average before the runs: {report['load_average']}.",
        "",
        f"Source: {report['classes']} classes x ({report['per_class']} train + {report['val_per_class']} val) "
        f"generated JPEGs of {report['min_side']}-{report['max_side']} px a side, {report['source_mib']:,.0f} MiB "
        f"({report['source_mib'] * 2**20 / (report['train_images'] + report['val_images']) / 1024:.0f} KiB "
        f"per image); packed at {SIZE}x{SIZE} with bench_scale's tiny settings (autoencoder stage 2 steps), no evaluation, "
        f"{report['threads']} torch thread(s).",
        "",
        "**Cache build** (`d3 prepare SRC --image-size 64 --workers W`, fresh cache):",
        "",
        "| workers | images | wall (s) | decode (s) | images/s | images/s per worker | CPU (s) | cores busy "
        "| images per CPU-s | peak RSS (MiB) | cache (MiB) | ImageNet-1k (1.33 M images), hours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["prepare"]:
        lines.append(f"| {r['workers']} | {r['decoded']:,} | {r['wall_s']} | {r['build_s']} | {r['images_per_s']:,.0f} "
                     f"| {r['images_per_s'] / r['workers']:,.0f} | {r.get('cpu_s', '-')} | {r.get('cores_busy', '-')} "
                     f"| {r.get('images_per_cpu_s', '-')} | {r['peak_rss_mib']:,.0f} "
                     f"| {r['cache_bytes'] / 2**20:,.0f} | {r['imagenet_hours']} |")
    lines += [
        "",
        "**Packs** (first: a fresh cache, built by the pack with every CPU; second: the prepared cache reused):",
        "",
        "| pack | S | wall (s) | decoded | data loading (s) | loading share | peak RSS (MiB) | uint8 per subtask "
        "(MiB) | RSS target (MiB) | ImageNet-1k: loading (s) | ImageNet-1k: uint8 per subtask (GiB) "
        "| ImageNet-1k: peak RSS (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["packs"]:
        lines.append(f"| {r['pack']} | {r['subtasks']} | {r['wall_s']} | {r['decoded']:,} | "
                     f"{r['open_s'] + r['read_s']:.1f} | {r['loading_share']:.1%} | {r['peak_rss_mib']:,.0f} | "
                     f"{r['held_uint8_mib']:,.0f} | {r['rss_target_mib']:,.0f} | {r['imagenet_loading_s']:,.0f} | "
                     f"{r['imagenet_held_uint8_gib']} | {r['imagenet_peak_rss_gib']} |")
    lines += ["", "Notes:", "", *[f"- {n}" for n in NOTES], ""]
    if report.get("headline"):
        lines += headline_markdown(report["headline"])
    return "\n".join(lines)


def _stage_peaks(h: dict) -> list[str]:
    """Peak RSS so far at each stage's start and end: which stage set the peak."""
    if not h.get("peak_after_mib"):
        return []
    cells = [f"{stage} {h['peak_before_mib'][stage]:,.0f} -> {h['peak_after_mib'][stage]:,.0f}"
             for stage in h["peak_after_mib"]]
    return ["Peak RSS so far (MiB) at the start -> end of each stage: " + "; ".join(cells) + ".", ""]


def _shared_note(load: str) -> str:
    return " (other jobs shared the cores: wall times are inflated)" if float(load.split()[0]) > 1.0 else ""


def headline_markdown(h: dict) -> list[str]:
    st, plan, gpu = h["stages_s"], h["plan"], h["imagenet"]
    mib = 2**20
    return [
        "## Headline: the README's ImageNet command with default settings (issue 20)", "",
        f"Command: `python tools/bench_jpeg.py --headline` = `{h['command']}` in a fresh work directory "
        f"(so the pack builds its cache). Date: {h['date']}; device: {h['device']}; d3fmt {h['d3fmt_version']}; "
        f"load average before: {h['load_average']}{_shared_note(h['load_average'])}.", "",
        f"Source: 1000 classes x (6 train + 1 val) generated JPEGs of 96-160 px ({h['source_mib']:.0f} MiB); "
        f"train images as uint8 at 64x64: {h['train_uint8_mib']:.0f} MiB.", "",
        "| S | batch_syn | mmd_classes | peak RSS (MiB) | plan (MiB) | plan error | target (MiB) | wall (s) "
        "| experts (s) | autoencoder (s) | distillation (s) | other (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {plan['subtasks']} | {plan['batch_syn'] or 'all'} | {plan['mmd_classes'] or 'all'} | "
        f"{h['peak_rss_mib']:,.0f} | {plan['peak'] / mib:,.0f} | {h['plan_error']:+.0%} | {h['rss_target_mib']:,} | "
        f"{h['wall_s']} | {st.get('experts', 0)} | {st.get('autoencoder', 0)} | {st.get('distillation', 0)} | "
        f"{st.get('other', 0)} |", "",
        f"The plan as printed: `{h['plan_line']}`", "",
        *_stage_peaks(h),
        f"Target (issue 20): peak RSS <= 1.25 x the uint8 train images + 2 GiB = {h['rss_target_mib']:,} MiB. "
        "`other` = opening the tree, building the cache, the budget fit and the memory plan, the merge and write.", "",
        f"**ImageNet-1k (1,281,167 images) on one 80 GB GPU**, the plan for the same command with the `standard` "
        f"preset `--device auto` picks there (width 128): `{gpu['line']}`. Arithmetic only, not measured (no GPU "
        f"here); the GPU per-iteration bound is {gpu['iteration_bound_gib']:.0f} GiB.", "",
    ]


NOTES = [
    "images/s per worker is the per-core decode rate (full-size JPEG -> 64x64 uint8, Pillow bilinear); "
    "ImageNet hours = 1,331,167 images / the measured rate (divide by the cores you give it beyond the "
    "workers measured, as long as images/s keeps scaling with workers).",
    "Data loading = opening the source (listing the tree, content hash of names + sizes, look at 64 headers, "
    "cache check) + time inside the part's reads (decoding, or reading the cache). Its ImageNet figure scales "
    "linearly in images.",
    "RSS target (the issue's): 1.25 x the uint8 bytes of one subtask's images + 1 GiB. ImageNet peak RSS: the "
    "measured peak plus (ImageNet's uint8 bytes per subtask - these) x the measured RSS bytes per held byte "
    "(the slope between the second packs with the most and the fewest images per subtask; rss_per_held_byte "
    "in the JSON).",
    "A 2-core machine shared with other jobs: wall times are noisy; the decode counts and the RSS are not. "
    "Python + torch + d3fmt alone take rss_after_imports_mib (JSON).",
]


def jpeg_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the decoded-image cache on an ImageNet-shaped JPEG tree")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=25, help="train JPEGs per class")
    p.add_argument("--val-per-class", type=int, default=2)
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--subtasks", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per pack")
    p.add_argument("--data", default="/tmp/d3jpeg")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--out", default="benchmarks/scale-jpeg.json")
    p.add_argument("--markdown-only", action="store_true", help="only re-render the .md from --out")
    p.add_argument("--headline", action="store_true",
                   help="only the headline row: the README's ImageNet command with default settings (training "
                        "shortened) on a 1000 x (6 + 1) tree of 96-160 px JPEGs; keeps the other rows of --out")
    p.add_argument("--prepare-only", action="store_true",
                   help="measure the cache builds again (the prepare rows of --out), keep its pack rows")
    args = p.parse_args(argv)
    if args.child:
        kind, spec = args.child
        child = {"pack": child_pack, "headline": child_headline}.get(kind, child_prepare)
        print(json.dumps(child(json.loads(spec))))
        return 0
    out = Path(args.out)
    if args.markdown_only:
        report = json.loads(out.read_text())
        extrapolate(report)
        out.with_suffix(".md").write_text(markdown(report))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:
        """Both files, after every run (a cut-short benchmark keeps what it measured). The
        headline row keeps the other rows' command and records its own."""
        if not args.headline:
            report["command"] = "python tools/bench_scale.py --jpeg " + " ".join(argv)
        extrapolate(report)
        out.write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    if args.headline:
        report = json.loads(out.read_text())
        report["headline"] = measure_headline(args)
        save(report)
        return 0
    if args.prepare_only:
        report = json.loads(out.read_text())
        report["prepare"] = []
        report["load_average_prepare"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
        tree = report.get("source") or str(Path(args.data) / f"jpeg-c{args.classes}-n{args.per_class}")
        measure_prepare(args, Path(args.data) / f"runs-{int(time.time())}", tree, report["prepare"],
                        lambda: save(report))
        return 0
    measure(args, save)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def measure(args, save) -> dict:
    import d3fmt

    data = Path(args.data)
    tree, gen_s, size = make_jpeg_tree(data / f"jpeg-c{args.classes}-n{args.per_class}", args.classes, args.per_class,
                                       args.val_per_class, args.min_side, args.max_side, os.cpu_count() or 1)
    print(f"source {tree}: {size / 2**20:,.0f} MiB ({gen_s:.0f} s to generate)", file=sys.stderr)
    report = {
        "benchmark": "pack_jpeg_cache", "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), no GPU",
        "load_average": " ".join(f"{v:.1f}" for v in os.getloadavg()), "d3fmt_version": d3fmt.__version__,
        "python": platform.python_version(), "classes": args.classes, "per_class": args.per_class,
        "val_per_class": args.val_per_class, "min_side": args.min_side, "max_side": args.max_side,
        "train_images": args.classes * args.per_class, "val_images": args.classes * args.val_per_class,
        "source_mib": round(size / 2**20, 1), "threads": args.threads, "settings": PACK_SETTINGS,
        "rss_after_imports_mib": round(_imports_rss(), 1), "prepare": [], "packs": [],
    }
    runs = data / f"runs-{int(time.time())}"
    report["source"] = str(tree)
    measure_prepare(args, runs, str(tree), report["prepare"], lambda: save(report))
    prepared = runs / f"cache-w{args.prepare_workers[-1]}"
    # the second packs first: the first pack repeats a cache build already measured above
    plan = [("second", s, prepared) for s in args.subtasks] + [("first", args.subtasks[0], runs / "cache-first")]
    for label, s, cache_dir in plan:
        spec = {"source": str(tree), "output": str(runs / f"{label}-s{s}.d3"), "subtasks": s,
                "work_dir": str(runs / f"work-{label}-s{s}"), "cache_dir": str(cache_dir), "threads": args.threads}
        report["packs"].append({"pack": label, "subtasks": s, **run_child("pack", spec, args.timeout)})
        save(report)
    return report


def measure_headline(args) -> dict:
    """The headline row: a fresh work directory (the pack builds its own cache), one child."""
    import d3fmt

    data = Path(args.data)
    tree, _, size = make_jpeg_tree(data / "jpeg-c1000-n6", 1000, 6, 1, 96, 160, os.cpu_count() or 1)
    runs = data / f"headline-{int(time.time())}"
    spec = {"source": str(tree), "output": str(runs / "in1k.d3"), "work_dir": str(runs / "work"),
            "threads": args.threads}
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    row = run_child("headline", spec, args.timeout)
    held = 1000 * 6 * 3 * SIZE * SIZE
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "d3fmt_version": d3fmt.__version__,
            "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), no GPU",
            "load_average": load, "command": HEADLINE_COMMAND, "settings": HEADLINE_SETTINGS,
            "source_mib": round(size / 2**20, 1), "train_uint8_mib": round(held / 2**20, 1),
            "rss_target_mib": round((1.25 * held + 2 * 2**30) / 2**20), **row,
            "plan_error": round(row["plan"]["peak"] / 2**20 / row["peak_rss_mib"] - 1, 3),
            "imagenet": imagenet_plan(row["plan"])}


def imagenet_plan(plan: dict) -> dict:
    """The same command's plan for ImageNet-1k (1,281,167 train + 50,000 val at 64x64) on one 80 GB GPU."""
    from d3fmt.distill.job import fit, pack_workload, partition_classes
    from d3fmt.distill.memory import ITERATION_BYTES, default_limit, plan_memory
    from d3fmt.distill.settings import pack_config
    from d3fmt.format.budget import Budget
    from d3fmt.sources.base import SourceInfo

    info = SourceInfo("imagenet-1k", 1000, [f"c{i}" for i in range(1000)], (3, SIZE, SIZE), IMAGENET_TRAIN,
                      IMAGENET_VAL, "x")
    cfg = pack_config("imagenet", "in1k.d3", device="cpu", **{**HEADLINE_SETTINGS, "preset": "standard", "iterations": None})
    budget = Budget.of(1000, info.image_shape, budget=cfg.budget, max_bytes=cfg.max_bytes)

    def workload_of(s):
        return pack_workload(cfg, info, s, fit(cfg, info, partition_classes(1000, s), budget))

    limit = default_limit("cuda", 80 * 10**9)
    gpu = plan_memory(workload_of, device="cuda", limit=limit, subtasks=1, batch_syn=0, mmd_classes=0,
                      max_subtasks=1000)
    return {"device": "one 80 GB GPU (preset standard: width 128)", "iteration_bound_gib": ITERATION_BYTES["cuda"] / 2**30,
            **gpu.to_json(), "line": gpu.line()}


def measure_prepare(args, runs: Path, tree: str, rows: list, saved) -> None:
    """One fresh cache build per --prepare-workers value, appended to ``rows``."""
    for w in args.prepare_workers:
        row = run_child("prepare", {"source": tree, "cache_dir": str(runs / f"cache-w{w}"), "workers": w}, args.timeout)
        rows.append({"workers": w, **row})
        saved()


def _imports_rss() -> float:
    """Peak RSS of a process that only imported torch and d3fmt's distiller (MiB)."""
    code = ("import resource, torch, d3fmt.distill.launch; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    sys.exit(jpeg_main(sys.argv[1:]))
