"""Loader benchmark: images/s and peak memory of D3Dataset vs a PNG folder vs memory.

    python tools/bench_loader.py            # full run (~5 min on 2 cores), writes
                                            # benchmarks/loader.json + benchmarks/loader.md
    python tools/bench_loader.py --quick    # smaller counts, same tables

For each image size (28x28 grey, 64x64 RGB) and each DataLoader setting (batch 256,
num_workers 0 and 2) it measures one pass over the same number of images from:

  d3@B       D3Dataset (fp32, the default) over a .d3 file fitted to B images per class
  d3-bf16@B  the same, decoders in bfloat16 (when the CPU has native bf16 support)
  png      the same number of real images as a PNG ImageFolder, read with Pillow
  memory   the same images as an in-memory uint8 tensor (the ceiling)
  stream   D3Stream on CUDA, when a GPU is present (device name recorded)

Each .d3 file holds a randomly initialised decoder of the size the distiller's budget
fitter picks for 10 classes at a budget of 1 or 10 images per class (decode speed does
not depend on trained values, only on the decoder's size). The real images are Fashion-MNIST (upscaled to 64x64 and tinted per
class for the RGB size), or scikit-learn digits when Fashion-MNIST is not installed.

Every measurement runs in a fresh subprocess, so its peak RSS (main process and worker
processes, reported separately) is its own. Images/s excludes the first batch (worker
start-up and warm-up) and counts the rest of the pass.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
FASHION_LABELS = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
NUM_CLASSES = 10
BUDGETS_IPC = (1, 10)  # decoder sizes to stand in for: what the budget fitter picks at these budgets
TINTS = np.array(
    [[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0], [1.0, 1.0, 0.3], [1.0, 0.3, 1.0],
     [0.3, 1.0, 1.0], [1.0, 0.6, 0.2], [0.6, 0.2, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
)  # fmt: skip


@dataclass
class D3File:
    """One benchmark .d3 file: a random decoder sized for a budget of ``ipc`` images per class."""

    ipc: float
    path: str
    bytes: int
    decoder: dict  # DecoderConfig JSON + latents_per_class + whether the fitter chose it
    decoder_params: int
    mflop_per_image: float  # 2 * multiply-accumulates of one decode


@dataclass
class SizeSetup:
    """One image size: where its files are."""

    side: int
    channels: int
    count: int
    d3: list[D3File]
    png_dir: str
    png_bytes: int
    npy_path: str
    real_source: str


# --------------------------------------------------------------------------- data


def real_images(count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 [N, 28, 28] real images and labels, class-balanced order."""
    if os.path.exists(FASHION):
        with gzip.open(FASHION) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_LABELS) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        source = "Fashion-MNIST train"
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.stack([np.kron(x, np.ones((4, 4))) for x in d.images])[:, 2:30, 2:30]
        images = (images / 16 * 255).astype(np.uint8)
        labels, source = d.target.astype(np.int64), "scikit-learn digits (upscaled)"
    reps = -(-count // len(images))
    return np.tile(images, (reps, 1, 1))[:count], np.tile(labels, reps)[:count], source


def to_size(images: np.ndarray, labels: np.ndarray, side: int, channels: int) -> np.ndarray:
    """[N, 28, 28] -> [N, side, side, channels] uint8 (bilinear resize, per-class tint)."""
    from PIL import Image

    if side == 28 and channels == 1:
        return images[..., None]
    out = np.empty((len(images), side, side, channels), np.uint8)
    for i, (img, y) in enumerate(zip(images, labels)):
        big = np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR), np.float32)
        out[i] = (big[..., None] * TINTS[y % 10][:channels]).round().astype(np.uint8)
    return out


def write_png_folder(root: str, pixels: np.ndarray, labels: np.ndarray) -> int:
    from d3fmt.png import png_bytes

    total = 0
    for i, (img, y) in enumerate(zip(pixels, labels)):
        d = os.path.join(root, f"{y:04d}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:06d}.png")
        data = png_bytes(img)
        with open(path, "wb") as f:
            f.write(data)
        total += len(data)
    return total


def realistic_decoder(shape: tuple[int, int, int], ipc: float) -> dict:
    """The decoder the budget fitter picks at ``ipc`` for NUM_CLASSES (or a fixed fallback)."""
    max_bytes = int(ipc * NUM_CLASSES * shape[0] * shape[1] * shape[2] * 4)
    try:
        from d3fmt.distill.budget import BudgetRequest, fit_budget

        plan = fit_budget(BudgetRequest(NUM_CLASSES, shape, max_bytes, [NUM_CLASSES]))
        return {"family": plan.family, "width": plan.width, "z_dim": plan.z_dim,
                "latents_per_class": plan.latents_per_class, "fitted": True}  # fmt: skip
    except Exception:  # the distiller is optional for this benchmark
        return {"family": "small", "width": int(32 * ipc**0.5), "z_dim": 64, "latents_per_class": 10,
                "fitted": False}  # fmt: skip


def decoder_macs(cfg_json: dict) -> int:
    """Multiply-accumulates to decode one image (convolutions and the linear layer)."""
    from d3fmt.models.decoder import DecoderConfig, decoder_param_shapes

    cfg = DecoderConfig.from_json(cfg_json)
    side, macs = cfg.start_size, 0
    for name, shape in decoder_param_shapes(cfg).items():
        if name == "fc.weight":
            macs += shape[0] * shape[1]
        elif name.endswith("conv.weight"):
            upsample = shape[2] == 3 and cfg.family != "small" and name.startswith(f"stages.{cfg.num_stages - 1}.")
            side *= 2
            # transposed conv: every input pixel meets the whole kernel; upsample + conv: every output pixel does
            macs += shape[0] * shape[1] * shape[2] * shape[3] * (side * side if upsample else side * side // 4)
        elif name == "head.weight":
            macs += shape[0] * shape[1] * 9 * side * side
    return macs


def write_bench_d3(work: str, shape: tuple[int, int, int], ipc: float, count: int) -> D3File:
    from d3fmt.format import write_d3
    from d3fmt.models.decoder import decoder_param_count
    from d3fmt.representation import random_container

    dec = realistic_decoder(shape, ipc)
    container = random_container(
        NUM_CLASSES, shape, family=dec["family"], width=int(dec["width"]), z_dim=dec["z_dim"],
        latents_per_class=dec["latents_per_class"], samples_per_class=count // NUM_CLASSES, encoding="float16",
    )  # fmt: skip
    path = os.path.join(work, f"bench{shape[1]}_{ipc:g}.d3")
    size = write_d3(path, container)
    cfg = container.header["subtasks"][0]["decoder"]
    return D3File(ipc, path, size, {**cfg, "latents_per_class": dec["latents_per_class"], "fitted": dec["fitted"]},
                  decoder_param_count(cfg), round(2 * decoder_macs(cfg) / 1e6, 2))  # fmt: skip


def setup_size(work: str, side: int, channels: int, count: int) -> SizeSetup:
    images, labels, source = real_images(count)
    pixels = to_size(images, labels, side, channels)
    png_dir = os.path.join(work, f"png{side}")
    png_bytes = write_png_folder(png_dir, pixels, labels)
    npy_path = os.path.join(work, f"mem{side}.npy")
    np.save(npy_path, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), allow_pickle=False)  # [N, C, H, W]
    files = [write_bench_d3(work, (channels, side, side), ipc, count) for ipc in BUDGETS_IPC]
    return SizeSetup(side, channels, count, files, png_dir, png_bytes, npy_path, source)


# --------------------------------------------------------------------------- one measurement


class PngFolder:
    """A minimal ImageFolder: sorted class dirs, Pillow decode, ToTensor-style float."""

    def __init__(self, root: str):
        self.items = []
        for y, d in enumerate(sorted(os.listdir(root))):
            for name in sorted(os.listdir(os.path.join(root, d))):
                self.items.append((os.path.join(root, d, name), y))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        path, y = self.items[i]
        with Image.open(path) as img:
            a = np.asarray(img)
        x = torch.from_numpy(a.copy())
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return x.float().div_(255), y


class MemoryImages:
    """The same images held as one uint8 tensor: the ceiling for any loader."""

    def __init__(self, npy_path: str):
        import torch

        self.x = torch.from_numpy(np.load(npy_path, allow_pickle=False))  # [N, C, H, W] uint8

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i].float().div_(255), i % NUM_CLASSES


def measure(kind: str, path: str, workers: int, batch: int, threads: int) -> dict:
    """One pass in this process; returns images/s and peak RSS (main, workers) in MiB."""
    import torch
    from torch.utils.data import DataLoader

    import d3fmt

    if threads > 0:
        torch.set_num_threads(threads)  # main process only; DataLoader workers always use 1

    if kind == "stream":
        stream = d3fmt.D3Stream(path, batch, device="cuda", shuffle=False)
        loader, sync = stream, torch.cuda.synchronize
    else:
        if kind == "d3":
            ds = d3fmt.D3Dataset(path)
        elif kind == "d3-bf16":
            ds = d3fmt.D3Dataset(path, dtype=torch.bfloat16)
        elif kind == "png":
            ds = PngFolder(path)
        else:
            ds = MemoryImages(path)
        loader, sync = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True), lambda: None
    n, start, t0 = 0, None, time.perf_counter()
    for images, _ in loader:
        sync()
        if start is None:
            start, first = time.perf_counter(), images.shape[0]
        n += images.shape[0]
    elapsed = time.perf_counter() - start
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    return {
        "images": n,
        "images_per_s": round((n - first) / elapsed, 1),
        "first_batch_s": round(start - t0, 3),
        "peak_rss_main_mib": round(_peak_rss_kib() / mib, 1),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib, 1) if workers else 0.0,
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if kind == "stream" else None,
    }


def _peak_rss_kib() -> int:
    """VmHWM of this process (KiB). Unlike ru_maxrss it is reset by exec, so it does not
    inherit the RSS of the benchmark driver that forked this measurement."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def run_one(kind: str, path: str, workers: int, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", kind, path, str(workers), str(batch), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- reporting


def environment() -> dict:
    import torch
    from machine import cpu_model  # tools/machine.py: this script's directory is on sys.path

    import d3fmt

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": _cpu_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "d3fmt": d3fmt.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def _cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512_bf16" in line or "amx_bf16" in line for line in f if line.startswith("flags"))
    except OSError:
        return False


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [
        "# Loader benchmark",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}  ",
        f"Device: {env['cpu']} ({env['cpu_count']} cores)" + (f", GPU {env['gpu']}" if env["gpu"] else ", no GPU") + "  ",
        f"Versions: d3fmt {env['d3fmt']}, torch {env['torch']}, Python {env['python']}  ",
        f"Load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in env['load_average_at_start'])}, "
        f"at end: {', '.join(f'{v:.2f}' for v in env.get('load_average_at_end', []))} "
        "(other jobs on the machine slow every row)",
        "",
        "Each .d3 file holds a **randomly initialised decoder** of the size the distiller's budget fitter "
        f"picks for {NUM_CLASSES} classes at a budget of B images per class (`d3@B`; decode speed depends on "
        "the decoder's size, not on trained values). DataLoader with batch size "
        f"{record['batch_size']}, `shuffle=True`; images/s excludes the first batch. "
        "Peak RSS is per process: the main process, and the largest worker (a forked worker's RSS "
        "includes pages it shares with the main process). torch threads in the main process: "
        f"{record['main_process_torch_threads']} (workers always use 1), so every row is one core per "
        "process: on a shared machine OpenMP's spinning threads otherwise collapse under contention.",
        "",
        "Decoding is arithmetic: a row's *decoder GFLOP/s* is images/s times the decoder's nominal MFLOP "
        "per image (the architecture's convolutions as written), what one core sustains on them. Whether D3 on CPU keeps up with a PNG folder "
        "therefore depends on the decoder the budget bought, not on the loader's overhead; `D3Stream` on a "
        "GPU is the path meant for large decoders.",
        "",
    ]
    for size in record["sizes"]:
        s = size["setup"]
        lines += [f"## {s['side']}x{s['side']}x{s['channels']}, {s['count']} images", ""]
        for f in s["d3"]:
            dec = f["decoder"]
            lines.append(
                f"- d3@{f['ipc']:g}: {f['bytes']:,} bytes; decoder {dec['family']}, width {dec['width']}, "
                f"z_dim {dec['z_dim']}, {dec['latents_per_class']} latents/class, "
                f"{f['decoder_params']:,} parameters (stored float16), {f['mflop_per_image']:.1f} MFLOP per decoded image"
            )
        lines += [
            f"- png: {s['png_bytes']:,} bytes of PNG ({s['real_source']}"
            + (", upscaled and tinted per class" if s["side"] != 28 else "") + ")",
            "",
            "| loader | workers | images/s | vs png | decoder GFLOP/s | peak RSS main (MiB) | peak RSS per worker (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        mflop = {f"{f['ipc']:g}": f["mflop_per_image"] for f in s["d3"]}
        png = {r["workers"]: r.get("images_per_s") for r in size["results"] if r["kind"] == "png"}
        for r in size["results"]:
            name = r["kind"] + (f" ({r['device']})" if r.get("device") else "")
            if "error" in r:
                lines.append(f"| {name} | {r['workers']} | failed: {r['error'][:80]} | | | | |")
                continue
            ratio = r["images_per_s"] / png[r["workers"]] if png.get(r["workers"]) else None
            budget = r["kind"].split("@")[1] if "@" in r["kind"] else None
            gflops = r["images_per_s"] * mflop[budget] / 1000 if budget in mflop else None
            lines.append(
                f"| {name} | {r['workers']} | {r['images_per_s']:,.0f} | "
                f"{'' if ratio is None else f'{ratio:.2f}x'} | {'' if gflops is None else f'{gflops:.1f}'} | "
                f"{r['peak_rss_main_mib']:.0f} | {r['peak_rss_worker_mib']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller image counts (a quick check)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the main process (0: torch's default); workers always use 1")
    p.add_argument("--measure", nargs=5, metavar=("KIND", "PATH", "WORKERS", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        kind, path, workers, batch, threads = args.measure
        print(json.dumps(measure(kind, path, int(workers), int(batch), int(threads))))
        return

    import torch

    record = {
        "command": " ".join(["python", "tools/bench_loader.py"] + sys.argv[1:]),
        "main_process_torch_threads": args.threads or "default",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(),
        "batch_size": args.batch,
        "sizes": [],
    }
    counts = {28: 5120, 64: 2560} if args.quick else {28: 10240, 64: 5120}
    bf16 = record["environment"]["cpu_bf16"]
    work = tempfile.mkdtemp(prefix="d3bench-")
    try:
        for side, channels in ((28, 1), (64, 3)):
            print(f"setting up {side}x{side}x{channels} ...", file=sys.stderr)
            setup = setup_size(work, side, channels, counts[side])
            runs = [(f"d3@{f.ipc:g}", "d3", f.path) for f in setup.d3]
            runs += [(f"d3-bf16@{f.ipc:g}", "d3-bf16", f.path) for f in setup.d3[-1:] if bf16]
            runs += [("png", "png", setup.png_dir), ("memory", "memory", setup.npy_path)]
            results = []
            for workers in args.workers:
                for name, kind, path in runs:
                    r = {"kind": name, "workers": workers, **run_one(kind, path, workers, args.batch, args.threads)}
                    print(f"  {name:12s} workers={workers}: {r.get('images_per_s', r.get('error'))} images/s",
                          file=sys.stderr)  # fmt: skip
                    results.append(r)
            if torch.cuda.is_available():
                for f in setup.d3:
                    results.append({"kind": f"stream@{f.ipc:g}", "workers": 0, "device": torch.cuda.get_device_name(0),
                                    **run_one("stream", f.path, 0, args.batch, 0)})  # fmt: skip
            info = asdict(setup)
            for key in ("png_dir", "npy_path"):
                info.pop(key)
            for f in info["d3"]:
                f.pop("path")
            record["sizes"].append({"setup": info, "results": results})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["environment"]["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "loader.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(args.out, "loader.md"), "w") as f:
        f.write(markdown(record) + "\n")
    print(markdown(record))


if __name__ == "__main__":
    main()
