"""Loader benchmark: training images/s, images/s and peak memory of D3Dataset vs a PNG folder vs memory.

    python tools/bench_loader.py            # full run (~30 min on 2 shared cores), writes
                                            # benchmarks/loader.json + benchmarks/loader.md
    python tools/bench_loader.py --quick    # smaller counts and fewer steps, same tables
    python tools/bench_loader.py --pack-dir DIR   # keep (and reuse) the packed .d3 files

For each image size (28x28 grey, 64x64 RGB) it packs real .d3 files with `d3 pack`
(distillation skipped: the decoder, latents and encoding are the budget fitter's choice at
each budget, which is all decode speed depends on) and compares, with DataLoader batch 256
and num_workers 0 and 2:

  training  the main process trains convnet-32 and resnet18-w16 for a fixed number of SGD
            steps from each loader: images/s of the whole loop (loading + training)
  loading   one pass over each loader alone: images/s and peak RSS
  decoding  the decoder alone on one core, on the loader's path and its alternatives
            (NCHW, one call per batch, bf16, the resize-conv "medium" family)

The loaders:

  d3@B       D3Dataset (fp32, the default) over the file packed at B images per class
  d3@B-capX  the same, packed with --max-decode-mflop X (0: no decode cap)
  d3-bf16@B  the last file with decoders in bfloat16 (when the CPU has native bf16 support)
  png        the same number of real images as a PNG ImageFolder, read with Pillow
  memory     the same images as an in-memory uint8 tensor (the ceiling)
  stream     D3Stream on CUDA, when a GPU is present (device name recorded)

The real images are Fashion-MNIST (upscaled to 64x64 and tinted per class for the RGB
size), or scikit-learn digits when Fashion-MNIST is not installed. Every measurement runs
in a fresh subprocess, so its peak RSS (main process and worker processes, reported
separately) is its own.
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
TINTS = np.array(
    [[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0], [1.0, 1.0, 0.3], [1.0, 0.3, 1.0],
     [0.3, 1.0, 1.0], [1.0, 0.6, 0.2], [0.6, 0.2, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
)  # fmt: skip


@dataclass
class D3File:
    """One benchmark .d3 file, packed by `d3 pack` at a budget of ``ipc`` images per class."""

    ipc: float
    name: str  # d3@B, or d3@B-capX with an explicit decode cap
    path: str
    bytes: int
    decoder: dict  # DecoderConfig JSON + the fitter's latents_per_class, encoding and decode cap
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


@dataclass
class PackSpec:
    """One benchmark file: a budget and the fitter's decode cap (None: its default, 0: none)."""

    ipc: float
    max_decode_mflop: float | None = None

    @property
    def name(self) -> str:
        return f"d3@{self.ipc:g}" + ("" if self.max_decode_mflop is None else f"-cap{self.max_decode_mflop:g}")


PACKS = {28: [PackSpec(1), PackSpec(10), PackSpec(50), PackSpec(50, 8), PackSpec(50, 0)],
         64: [PackSpec(1), PackSpec(10), PackSpec(10, 0)]}  # fmt: skip
# A real `d3 pack` with the distillation skipped and a 5-step autoencoder stage: the file is
# exactly what the fitter buys at this budget (decode speed does not depend on trained values).
PACK_ARGS = ["--iterations", "0", "--pretrain-steps", "5", "--experts", "1", "--expert-epochs", "1", "--no-eval", "--quiet"]


def pack_source(work: str, side: int, channels: int) -> str:
    """What the benchmark files are packed from: Fashion-MNIST's IDX files at 28x28x1, else
    an npz of 6,000 real images at this size (upscaled and tinted for 64x64x3)."""
    if side == 28 and channels == 1 and os.path.exists(FASHION):
        return os.path.dirname(FASHION) + "/"
    path = os.path.join(work, f"source{side}x{channels}.npz")
    if not os.path.exists(path):
        images, labels, _ = real_images(6000)
        pixels = to_size(images, labels, side, channels)
        np.savez(path, x=pixels if channels > 1 else pixels[..., 0], y=labels)
    return path


def pack_bench_d3(pack_dir: str, source: str, side: int, spec: PackSpec) -> D3File:
    """``d3 pack`` SOURCE at this budget (reused when ``pack_dir`` already holds the file)."""
    path = os.path.join(pack_dir, f"{spec.name}_{side}.d3".replace("@", "_"))
    cmd = [sys.executable, "-m", "d3fmt", "pack", source, "-o", path, "--budget", f"{spec.ipc:g}", *PACK_ARGS,
           "--work-dir", os.path.join(pack_dir, "cache")]  # fmt: skip
    if spec.max_decode_mflop is not None:
        cmd += ["--max-decode-mflop", f"{spec.max_decode_mflop:g}"]
    if not os.path.exists(path):
        print("  " + " ".join(cmd[1:]), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return describe_d3(path, spec)


def describe_d3(path: str, spec: PackSpec) -> D3File:
    from d3fmt.format import D3Reader
    from d3fmt.models.decoder import decode_mflop, decoder_param_count

    with D3Reader(path) as reader:
        header = reader.header
    cfg, choices = header["subtasks"][0]["decoder"], header["budget"].get("choices") or {}
    dec = {**cfg, "latents_per_class": choices.get("latents_per_class"), "encoding": choices.get("weight_encoding"),
           "max_decode_mflop": choices.get("max_decode_mflop")}  # fmt: skip
    return D3File(spec.ipc, spec.name, path, os.path.getsize(path), dec, decoder_param_count(cfg),
                  round(decode_mflop(cfg), 2))  # fmt: skip


def setup_size(work: str, pack_dir: str, side: int, channels: int, count: int, targets_only=False) -> SizeSetup:
    images, labels, source = real_images(count)
    pixels = to_size(images, labels, side, channels)
    png_dir = os.path.join(work, f"png{side}")
    png_bytes = write_png_folder(png_dir, pixels, labels)
    npy_path = os.path.join(work, f"mem{side}.npy")
    np.save(npy_path, np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), allow_pickle=False)  # [N, C, H, W]
    src = pack_source(pack_dir, side, channels)
    specs = [s for s in PACKS[side] if s.max_decode_mflop is None or not targets_only]
    files = [pack_bench_d3(pack_dir, src, side, spec) for spec in specs]
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


@dataclass
class Job:
    """One measurement, run in a fresh subprocess: a pass over a loader, or training from it."""

    kind: str  # d3 | d3-bf16 | png | memory | stream
    path: str
    workers: int
    batch: int
    threads: int  # torch threads of the main process (0: torch's default)
    items: int = 0  # D3: samples in the stream (samples_per_class = items / NUM_CLASSES)
    model: str | None = None  # None: a pass over the loader; "convnet-32" | "resnet18-w16": train
    steps: int = 0  # timed training steps (after one warm-up step)


def make_dataset(job: Job):
    import torch

    import d3fmt

    per_class = max(1, job.items // NUM_CLASSES)
    if job.kind == "d3":
        return d3fmt.D3Dataset(job.path, samples_per_class=per_class)
    if job.kind == "d3-bf16":
        return d3fmt.D3Dataset(job.path, samples_per_class=per_class, dtype=torch.bfloat16)
    return PngFolder(job.path) if job.kind == "png" else MemoryImages(job.path)


def measure(job: Job) -> dict:
    """One pass in this process; returns images/s and peak RSS (main, workers) in MiB."""
    import torch
    from torch.utils.data import DataLoader

    import d3fmt

    if job.threads > 0:
        torch.set_num_threads(job.threads)  # main process only; DataLoader workers always use 1
    if job.kind == "stream":
        loader = d3fmt.D3Stream(job.path, job.batch, device="cuda", shuffle=False, samples_per_class=job.items // NUM_CLASSES)
        sync = torch.cuda.synchronize
    else:
        loader = DataLoader(make_dataset(job), batch_size=job.batch, num_workers=job.workers, shuffle=True)
        sync = lambda: None  # noqa: E731
    n, start, t0 = 0, None, time.perf_counter()
    for b, (images, _) in enumerate(loader):
        sync()
        if start is None:
            start, first = time.perf_counter(), images.shape[0]
        n += images.shape[0]
        if b + 1 == PASS_BATCHES:
            break
    elapsed = time.perf_counter() - start
    return {"images": n, "images_per_s": round((n - first) / elapsed, 1), "first_batch_s": round(start - t0, 3),
            **_peaks(job), "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if job.kind == "stream" else None}  # fmt: skip


def train_model(job: Job) -> dict:
    """SGD on ``job.model`` from the loader for 1 + ``job.steps`` batches; images/s over the
    timed steps (data loading and training together, as a user's epoch loop feels it)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    ds = make_dataset(job)
    loader = DataLoader(ds, batch_size=job.batch, num_workers=job.workers, shuffle=True, drop_last=True)
    x0, _ = ds[0]
    model = build_model(job.model, tuple(x0.shape))
    steps = min(job.steps, TRAIN_STEPS[x0.shape[-1]][job.model])  # at most the table's steps
    if job.workers not in TRAIN_WORKERS[x0.shape[-1]]:
        raise SystemExit(f"skipped: {job.workers} workers are not measured at this size (TRAIN_WORKERS)")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    done, start = 0, None
    for images, labels in loader:
        loss = F.cross_entropy(model(images), torch.as_tensor(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if start is None:  # the warm-up step (worker start, first batch) is not timed
            start = time.perf_counter()
        elif (done := done + 1) == steps:
            break
    elapsed = time.perf_counter() - start
    if done < steps:
        raise SystemExit(f"the loader ran out after {done} timed steps; give it more items")
    return {"images": done * job.batch, "steps": steps, "images_per_s": round(done * job.batch / elapsed, 1), **_peaks(job)}


DECODE_VARIANTS = ("default", "nchw", "chunk256", "bf16", "medium")


def decode_paths(path: str, batch: int) -> dict:
    """Decoder-only images/s on one core for the file's decoder (random weights of its config):
    the loader's path (fp32, channels-last, chunks of CPU_CHUNK), plain NCHW, one call per batch,
    bf16, and the "medium" family (resize-conv final stage) of the same width and z_dim."""
    import torch

    from d3fmt.format import D3Reader
    from d3fmt.loader.representation import CPU_CHUNK
    from d3fmt.models.decoder import DecoderConfig, build_decoder, decode_mflop

    torch.set_num_threads(1)
    with D3Reader(path) as reader:
        cfg = DecoderConfig.from_json(reader.header["subtasks"][0]["decoder"])
    medium = DecoderConfig(**{**cfg.to_json(), "family": "medium", "start_size": 0})
    out = {"medium_mflop": round(decode_mflop(medium), 2)}
    for variant in DECODE_VARIANTS:
        dtype = torch.bfloat16 if variant == "bf16" else torch.float32
        decoder = build_decoder((medium if variant == "medium" else cfg).to_json()).to(dtype).requires_grad_(False)
        if variant != "nchw":
            decoder.optimize_for_inference()
        chunk = batch if variant == "chunk256" else CPU_CHUNK
        out[variant] = round(_decode_rate(decoder, torch.randn(batch, cfg.z_dim, dtype=dtype), chunk), 1)
    return out


def _decode_rate(decoder, z, chunk: int, seconds: float = 0.5, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``seconds`` each (the least disturbed by other jobs)."""
    import torch

    best = 0.0
    with torch.inference_mode():
        torch.cat([decoder(part) for part in z.split(chunk)])  # warm-up
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                torch.cat([decoder(part) for part in z.split(chunk)])
                n += z.shape[0]
            best = max(best, n / (time.perf_counter() - t0))
    return best


def build_model(name: str, shape: tuple[int, int, int]):
    """convnet-W: the evaluation ConvNet of width W; resnet18-wW: ResNet-18, first-stage width W."""
    from d3fmt.models.convnet import ConvNet, ConvNetConfig
    from d3fmt.models.resnet import ResNet, ResNetConfig

    c, side, _ = shape
    if name.startswith("convnet-"):
        return ConvNet(ConvNetConfig(channels=c, num_classes=NUM_CLASSES, image_size=side, width=int(name.split("-")[1])))
    return ResNet(ResNetConfig(c, NUM_CLASSES, side, width=int(name.split("-w")[1])))


def _peaks(job: Job) -> dict:
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib if job.workers else 0.0
    return {"peak_rss_main_mib": round(_peak_rss_kib() / mib, 1), "peak_rss_worker_mib": round(worker, 1)}


def _peak_rss_kib() -> int:
    """VmHWM of this process (KiB). Unlike ru_maxrss it is reset by exec, so it does not
    inherit the RSS of the benchmark driver that forked this measurement."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def run_decode(path: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--batch", str(batch), "--measure-decode", path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(job: Job) -> dict:
    cmd = [sys.executable, __file__, "--measure", json.dumps(asdict(job))]
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
        f"Each .d3 file is a real `d3 pack SRC --budget B {' '.join(record['pack_args'])}` of Fashion-MNIST "
        "(`d3@B`): the decoder, latents and encoding are exactly what the budget fitter buys at B images per "
        f"class for {NUM_CLASSES} classes, under its default decode cap; `d3@B-cap0` is packed with "
        "`--max-decode-mflop 0` (no cap: the fitter before the cap). Only the distillation is skipped: decode speed "
        "depends on the decoder's size, not on trained values. DataLoader with batch size "
        f"{record['batch_size']}, `shuffle=True`. torch threads in the main process: "
        f"{record['main_process_torch_threads']} (workers always use 1), so every process uses one core: on a "
        "shared machine OpenMP's spinning threads otherwise collapse under contention.",
        "",
        "**Training** rows: the main process trains a model (SGD with momentum, cross-entropy, batch "
        f"{record['batch_size']}) for a fixed number of steps from the loader; images/s counts the steps after a "
        "first untimed one (worker start-up), loading and training together, as a training loop feels it. "
        "`convnet-32` is the evaluation ConvNet at the CPU width of `d3 pack --preset fast`, `resnet18-w16` "
        "ResNet-18 with first-stage width 16. The rows of one model and worker count run back to back, "
        "bracketed by two png rows, the whole sequence repeated `--repeats` times; the table shows medians, "
        "and *vs png* divides by the median png row. On a machine shared with other jobs single rows swing by "
        "2x; the ratios of the medians are the result.",
        "",
        "**Loading** rows: reading from the loader alone (a full pass, or its first batches: `images` in the JSON), excluding the first batch. Peak RSS is per process: "
        "the main process, and the largest worker (a forked worker's RSS includes pages it shares with the main "
        "process). *Decoder GFLOP/s* is images/s times the decoder's nominal MFLOP per image "
        "(`d3fmt.models.decoder.decode_mflop`).",
        "",
    ]
    for size in record["sizes"]:
        lines += size_markdown(size)
    return "\n".join(lines)


def size_markdown(size: dict) -> list[str]:
    s = size["setup"]
    lines = [f"## {s['side']}x{s['side']}x{s['channels']}, {s['count']} images", ""]
    for f in s["d3"]:
        dec = f["decoder"]
        cap = dec.get("max_decode_mflop")
        lines.append(
            f"- {f['name']}: {f['bytes']:,} bytes; decoder {dec['family']}, width {dec['width']}, z_dim {dec['z_dim']}, "
            f"{dec['latents_per_class']} latents/class, {f['decoder_params']:,} parameters ({dec['encoding']}), "
            f"**{f['mflop_per_image']:.1f} MFLOP per decoded image** (cap: {'none' if cap is None else f'{cap:g}'})"
        )
    lines += [f"- png: {s['png_bytes']:,} bytes of PNG ({s['real_source']}"
              + (", upscaled and tinted per class" if s["side"] != 28 else "") + ")", ""]
    mflop = {f["name"]: f["mflop_per_image"] for f in s["d3"]}
    if size.get("training"):
        lines += training_table(size["training"], mflop)
    if size.get("decode"):
        lines += decode_table(size["decode"], mflop)
    lines += ["| loader | workers | images/s | vs png | decoder GFLOP/s | peak RSS main (MiB) | peak RSS per worker (MiB) |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    png = {r["workers"]: r.get("images_per_s") for r in size["results"] if r["kind"] == "png"}
    for r in size["results"]:
        name = r["kind"] + (f" ({r['device']})" if r.get("device") else "")
        if "error" in r:
            lines.append(f"| {name} | {r['workers']} | failed: {r['error'][:80]} | | | | |")
            continue
        ratio = r["images_per_s"] / png[r["workers"]] if png.get(r["workers"]) else None
        gflops = r["images_per_s"] * mflop[r["kind"]] / 1000 if r["kind"] in mflop else None
        lines.append(
            f"| {name} | {r['workers']} | {r['images_per_s']:,.0f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
            f"{'' if gflops is None else f'{gflops:.1f}'} | {r['peak_rss_main_mib']:.0f} | {r['peak_rss_worker_mib']:.0f} |"
        )
    return lines + [""]


def decode_table(rows: list[dict], mflop: dict) -> list[str]:
    lines = ["Decoder alone, one core, images/s (best of 3 half-second timings; the loader's path is *default*: "
             "fp32, channels-last, chunks of 32; *nchw*: without `optimize_for_inference`; *chunk256*: one call per "
             "batch; *bf16*: `dtype=torch.bfloat16`; *medium*: the resize-conv family, same width and z_dim):", "",
             "| file | MFLOP | " + " | ".join(DECODE_VARIANTS) + " | medium MFLOP |",
             "|---|---:|" + "---:|" * (len(DECODE_VARIANTS) + 1)]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} |")
            continue
        cells = " | ".join(f"{r[v]:,.0f}" for v in DECODE_VARIANTS)
        lines.append(f"| {r['name']} | {mflop[r['name']]:.1f} | {cells} | {r['medium_mflop']:.1f} |")
    return lines + [""]


def training_table(rows: list[dict], mflop: dict) -> list[str]:
    lines = ["Training (median of the repeats; *vs png*: divided by the median png row of the same model and workers):",
             "", "| model | workers | loader | decode MFLOP/image | steps | runs | train images/s | vs png | each run |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for model in dict.fromkeys(r["model"] for r in rows):
        for workers in dict.fromkeys(r["workers"] for r in rows if r["model"] == model):
            group = [r for r in rows if r["model"] == model and r["workers"] == workers
                     and not r.get("error", "").startswith("skipped")]
            rates = {}
            for r in group:
                rates.setdefault(r["kind"], []).append(r.get("images_per_s"))
            png = _median([v for v in rates.get("png", []) if v is not None])
            for kind, values in rates.items():
                ok = [v for v in values if v is not None]
                if not ok:
                    error = next(r["error"] for r in group if r["kind"] == kind and "error" in r)
                    lines.append(f"| {model} | {workers} | {kind} | | | | failed: {error[:80]} | | |")
                    continue
                rate = _median(ok)
                ratio = f"{rate / png:.2f}x" if png else ""
                cost = f"{mflop[kind]:.1f}" if kind in mflop else ""
                runs = ", ".join(f"{v:,.0f}" for v in ok)
                steps = next(r["steps"] for r in group if r["kind"] == kind)
                lines.append(f"| {model} | {workers} | {kind} | {cost} | {steps} | {len(ok)} | {rate:,.0f} | {ratio} | {runs} |")
    return lines + [""]


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


TRAIN_MODELS = ("convnet-32", "resnet18-w16")  # the CPU width of `d3 pack --preset fast`'s ConvNet; a narrow ResNet-18
TRAIN_STEPS = {28: {"convnet-32": 30, "resnet18-w16": 10}, 64: {"convnet-32": 3, "resnet18-w16": 1}}
TRAIN_WORKERS = {28: (0, 2), 64: (2,)}  # 64x64 trains slowly on 2 cores: only the targets' setting
PASS_BATCHES = 8  # a loading row reads at most this many batches


def pass_rows(setup: SizeSetup, args, bf16: bool) -> list[dict]:
    """One pass over each loader: images/s of loading alone."""
    runs = [(f.name, "d3", f.path) for f in setup.d3]
    runs += [(f"d3-bf16@{f.ipc:g}", "d3-bf16", f.path) for f in setup.d3[-1:] if bf16]
    runs += [("png", "png", setup.png_dir), ("memory", "memory", setup.npy_path)]
    results = []
    for workers in args.workers:
        for name, kind, path in runs:
            job = Job(kind, path, workers, args.batch, args.threads, items=setup.count)
            results.append(_log({"kind": name, "workers": workers, **run_one(job)}))
    return results


def train_rows(setup: SizeSetup, args) -> list[dict]:
    """Training throughput from each loader, side by side: png, every d3 file, memory, png again
    (the two png rows bracket the others, so drift in the machine's load shows); with
    ``--repeats R`` the whole sequence runs R times (the table shows medians)."""
    runs = [("png", "png", setup.png_dir)] + [(f.name, "d3", f.path) for f in setup.d3]
    runs += [("memory", "memory", setup.npy_path), ("png", "png", setup.png_dir)]
    results = []
    for model in args.train_models:
        steps = max(1, TRAIN_STEPS[setup.side][model] // (2 if args.quick else 1))
        for workers in [w for w in args.workers if w in TRAIN_WORKERS[setup.side]]:
            for repeat in range(args.repeats):
                for name, kind, path in runs:
                    job = Job(kind, path, workers, args.batch, args.threads, items=setup.count, model=model, steps=steps)
                    row = {"kind": name, "workers": workers, "model": model, "steps": steps, "repeat": repeat}
                    results.append(_log({**row, **run_one(job)}))
    return results


def _log(r: dict) -> dict:
    what = f"{r.get('model', 'pass')} {r['kind']} workers={r['workers']}"
    print(f"  {what:40s} {r.get('images_per_s', r.get('error'))} images/s", file=sys.stderr)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller image counts and fewer steps (a quick check)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the main process (0: torch's default); workers always use 1")
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 64], choices=[28, 64], help="28: 28x28x1, 64: 64x64x3")
    p.add_argument("--train-models", nargs="*", default=list(TRAIN_MODELS), choices=TRAIN_MODELS,
                   help="models of the training rows (none: loading rows only)")
    p.add_argument("--pack-dir", help="keep the packed .d3 files here and reuse them [a temporary directory]")
    p.add_argument("--repeats", type=int, default=1, help="times each training sequence runs (medians reported)")
    p.add_argument("--training-only", action="store_true", help="only the training rows (no loading/decoding rows)")
    p.add_argument("--name", default="loader", help="output basename: benchmarks/NAME.json + NAME.md")
    p.add_argument("--targets-only", action="store_true",
                   help="only the files the targets name: each budget at the default decode cap")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # one Job as JSON, run in this process
    p.add_argument("--measure-decode", help=argparse.SUPPRESS)  # a .d3 path: decode_paths in this process
    args = p.parse_args()
    if args.measure_decode:
        print(json.dumps(decode_paths(args.measure_decode, args.batch)))
        return
    if args.measure:
        job = Job(**json.loads(args.measure))
        print(json.dumps(measure(job) if job.model is None else train_model(job)))
        return
    record = run_all(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(markdown(record) + "\n")
    print(markdown(record))


def run_all(args) -> dict:
    import torch

    record = {
        "command": " ".join(["python", "tools/bench_loader.py"] + sys.argv[1:]),
        "main_process_torch_threads": args.threads or "default",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(),
        "batch_size": args.batch,
        "pack_args": PACK_ARGS,
        "sizes": [],
    }
    counts = {28: 5120, 64: 2560} if args.quick else {28: 10240, 64: 5120}
    work = tempfile.mkdtemp(prefix="d3bench-")
    pack_dir = args.pack_dir or os.path.join(work, "packs")
    os.makedirs(pack_dir, exist_ok=True)
    try:
        for side, channels in ((28, 1), (64, 3)):
            if side not in args.sizes:
                continue
            print(f"setting up {side}x{side}x{channels} ...", file=sys.stderr)
            setup = setup_size(work, pack_dir, side, channels, counts[side], args.targets_only)
            results = [] if args.training_only else pass_rows(setup, args, record["environment"]["cpu_bf16"])
            if torch.cuda.is_available() and not args.training_only:
                for f in setup.d3:
                    job = Job("stream", f.path, 0, args.batch, 0, items=setup.count)
                    results.append({"kind": f"stream@{f.ipc:g}", "workers": 0, "device": torch.cuda.get_device_name(0),
                                    **run_one(job)})  # fmt: skip
            decode = [] if args.training_only else [{"name": f.name, **run_decode(f.path, args.batch)} for f in setup.d3]
            training = train_rows(setup, args)
            info = asdict(setup)
            for key in ("png_dir", "npy_path"):
                info.pop(key)
            for f in info["d3"]:
                f.pop("path")
            record["sizes"].append({"setup": info, "results": results, "training": training, "decode": decode})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["environment"]["load_average_at_end"] = list(os.getloadavg())
    return record


if __name__ == "__main__":
    main()
