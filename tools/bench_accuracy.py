"""Fashion-MNIST scoreboard: D3 against the same-bytes random subset and the full data.

    python tools/bench_accuracy.py --reduced          # CPU profile (see REDUCED below)
    python tools/bench_accuracy.py --device cuda      # the full profile, for a GPU
    python tools/bench_accuracy.py --reduced --d3-dir DIR   # reuse DIR/fmnist-b{B}.d3

For every budget B (images per class; a file may use B * 10 * 28 * 28 * 4 bytes) it
packs a .d3 file with the library (or reuses one from ``--d3-dir``), then trains fresh
models with one protocol (d3fmt.evaluate: DSA, SGD momentum 0.9, wd 5e-4, lr / 10 at
half, the *final* model tested once on the 10,000 real test images):

  d3      ConvNet and ResNet-18 on the file's decoded stream (record appended to the file)
  random  the same models on a random real subset stored as PNGs in the same bytes
  full    the whole 60,000-image training set (the ceiling)

Within a budget, the D3 stream draws as many fresh samples per class and epoch as the
random subset holds images per class, so both train for the same number of SGD steps.
Writes benchmarks/fmnist.json (updated after every row), benchmarks/fmnist.md and
benchmarks/fmnist.png (accuracy against file bytes). Every setting of the profile, and
every reduction against the full profile, is recorded in the JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import cpu_model  # noqa: E402  (tools/machine.py: this script's directory is on sys.path)

import d3fmt
from d3fmt.baseline import choose_random_subset
from d3fmt.device import resolve_device
from d3fmt.distill.launch import pack
from d3fmt.distill.settings import pack_config
from d3fmt.evaluate import (
    EvalConfig,
    EvalResult,
    evaluate_file,
    evaluate_real,
    pixel_mean_std,
)
from d3fmt.format import D3Reader, budget_bytes
from d3fmt.models.resnet import STANDARD_WIDTH
from d3fmt.sources import open_source

FASHION = "/usr/share/datasets/fashion-mnist"
TARGETS = {1: 0.80, 10: 0.89, 50: 0.91}  # D3 ConvNet targets (issue 6)


@dataclass
class Profile:
    """Everything that sets the cost of the benchmark."""

    name: str
    budgets: tuple[int, ...] = (1, 10, 50)
    width: int = 128  # ConvNet width: experts, distillation student, evaluation
    resnet_width: int = STANDARD_WIDTH  # ResNet-18's first-stage width (the standard 64; 16: 16x fewer FLOPs)
    pack_per_class: int = 0  # 0: distil from all 6,000 training images per class; else a stratified subset
    experts: int = 10
    expert_epochs: int = 20
    iterations: dict = field(default_factory=lambda: {1: 5000, 10: 5000, 50: 5000})  # per budget
    syn_steps: int = 10
    batch_syn: int = 0  # synthetic samples per inner step; 0 = every prior
    mmd_samples: int = 16
    mmd_real: int = 32
    warmup: float = 0.9  # share of iterations trained by MMD alone first (the `d3 pack` default)
    pretrain_steps: int = 1500  # autoencoder stage (the `d3 pack` default); 0 = method.md's random start
    soft_labels: bool = True  # store per-prior soft labels (and train the all-class teacher) or hard labels only
    epochs: dict = field(default_factory=lambda: {1: 500, 10: 500, 50: 500})  # ConvNet evaluation epochs per budget
    runs: int = 3
    resnet_epochs: dict = field(default_factory=lambda: {1: 300, 10: 300, 50: 300})  # 0: no ResNet row
    resnet_runs: int = 3
    random_resnet: bool = True  # also train ResNet-18 on the random subsets
    full_epochs: int = 30
    full_runs: int = 3
    full_resnet: bool = True
    eval_batch: int = 256


FULL = Profile("full")

# The CPU profile: two cores, no GPU. After the autoencoder stage, 300 distillation
# iterations (297 MMD-only, then 3 with trajectory matching) against one expert of 3 epochs;
# hard labels (per-prior soft labels never helped here: benchmarks/fmnist-ablation.md).
# ResNet-18 is the narrow width-16 variant (16x fewer FLOPs than the standard width 64:
# ~0.3 s per batch of 256 here). Measured there (2026-12-02): the expert ~2 min, the
# autoencoder stage ~3-6 min and the 300 iterations ~3-5 min per budget; evaluation
# ~0.06 s per ConvNet epoch at B=1, ~0.4 s at B=10, ~4 s at B=50.
REDUCED = Profile(
    "reduced", width=32, resnet_width=16, pack_per_class=0, experts=1, expert_epochs=3,
    iterations={1: 300, 10: 300, 50: 300}, syn_steps=10, batch_syn=100, mmd_samples=8, mmd_real=16, warmup=0.99,
    soft_labels=False, epochs={1: 1000, 10: 300, 50: 40}, runs=2, resnet_epochs={1: 300, 10: 100, 50: 15},
    resnet_runs=1, random_resnet=True, full_epochs=5, full_runs=1, full_resnet=False,
)


def per_budget(table: dict, budget: int):
    """The value for ``budget`` in a per-budget table (JSON keys may be strings), else the nearest budget's."""
    table = {int(k): v for k, v in table.items()}
    return table[budget] if budget in table else table[min(table, key=lambda k: abs(k - budget))]


def reductions(profile: Profile) -> list[str]:
    """Every setting of ``profile`` that differs from the full profile."""
    out = []
    for f in fields(Profile):
        if f.name == "name":
            continue
        a, b = getattr(FULL, f.name), getattr(profile, f.name)
        if a != b:
            out.append(f"{f.name}: {a} -> {b}")
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model(default=platform.processor() or "cpu")
    return f"{model}, {torch.get_num_threads()} torch threads (CPU)"


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def pack_source(source, per_class: int, work: Path) -> str:
    """The source `d3 pack` distils from: Fashion-MNIST itself, or a stratified subset
    of its training split (seeded, per_class images of every class) with the real test split."""
    if not per_class:
        return FASHION
    path = work / f"fmnist-train{per_class}pc.npz"
    if not path.exists():
        x, y = source.load("train")
        tx, ty = source.load("test")
        keep = np.sort(np.concatenate([np.random.default_rng([0, c]).permutation(np.flatnonzero(y == c))[:per_class]
                                       for c in range(source.info.num_classes)]))
        np.savez(path, x=x[keep, 0], y=y[keep], x_test=tx[:, 0], y_test=ty,
                 class_names=np.array(source.info.class_names))
    return str(path)


def get_d3(budget: int, profile: Profile, args, src: str, device) -> dict:
    """Pack (or reuse) the budget's .d3 file; returns facts about it."""
    name = f"fmnist-b{budget}.d3"
    if args.d3_dir and (Path(args.d3_dir) / name).exists():
        path, seconds, reused = Path(args.d3_dir) / name, None, True
    else:
        path = Path(args.work_dir) / "d3" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        iterations = per_budget(profile.iterations, budget)
        cfg = pack_config(
            src, str(path), budget=float(budget), seed=args.seed, device=str(device), soft_labels=profile.soft_labels,
            work_dir=str(Path(args.work_dir) / "cache"), quiet=True, evaluate=False, num_experts=profile.experts,
            expert_epochs=profile.expert_epochs, convnet_width=profile.width, iterations=iterations,
            syn_steps=profile.syn_steps, batch_syn=profile.batch_syn, mmd_samples=profile.mmd_samples,
            mmd_real=profile.mmd_real, checkpoint_every=0, warmup=profile.warmup,
            pretrain_steps=profile.pretrain_steps,
        )
        start = time.time()
        pack(cfg)
        path, seconds, reused = Path(path), time.time() - start, False
    with D3Reader(path) as r:
        h = r.header
        latents = max(int(s["latents_per_class"]) for s in h["subtasks"])
        return {"path": str(path), "file_bytes": r.file_bytes, "max_bytes": int(h["budget"]["max_bytes"]),
                "latents_per_class": latents, "pack_seconds": seconds, "reused": reused,
                "choices": h["budget"].get("choices", {}), "settings": h["provenance"].get("settings", {}),
                "width": d3fmt.evaluate.file_convnet_width(path)}


def eval_config(profile: Profile, model: str, epochs: int, runs: int, args, device, **kw) -> EvalConfig:
    width = profile.resnet_width if model == "resnet18" else profile.width
    return EvalConfig(model=model, epochs=epochs, runs=runs, width=width, batch_size=profile.eval_batch,
                      seed=args.seed, device=str(device), **kw)


def row(method: str, budget, ev: EvalResult, file_bytes: int, seconds: float, **extra) -> dict:
    return {"method": method, "model": ev.model, "budget": budget, "file_bytes": int(file_bytes),
            "accuracy_mean": round(ev.mean, 5), "accuracy_std": round(ev.std, 5),
            "accuracies": [round(a, 5) for a in ev.accuracies], "runs": len(ev.accuracies), "epochs": ev.epochs,
            "lr": ev.lr, "seconds": round(seconds, 1), "protocol": ev.protocol, **extra}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def pct(v) -> str:
    return f"{100 * v:.2f}"


def markdown(report: dict) -> str:
    p = report["profile"]
    lines = [
        "# Fashion-MNIST: D3 against the same-bytes random subset and the full data",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; device: {report['device']}",
        f"- d3fmt {report['d3fmt_version']}, torch {report['torch_version']}, Python {report['python_version']}",
        f"- profile: **{p['name']}**; wall time {report.get('wall_seconds', 0) / 60:.1f} min"
        + ("" if report.get("complete") else " (INCOMPLETE: the run stopped early)"),
        "- accuracy: the *final* model of each run on the 10,000 real test images, mean +- std over runs (%)",
        ("- file bytes: the whole .d3 file (d3), the PNG files of the subset (random) or of all 60,000 "
         "training images (full); the budget cap is B x 10 x 28 x 28 x 4 bytes"),
        "",
        "| method | model | budget | file bytes | img or samples /class/epoch | epochs x runs | accuracy % | target % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        target = TARGETS.get(r["budget"]) if r["method"] == "d3" and r["model"].startswith("convnet") else None
        per = r.get("images_per_class") or r.get("samples_per_class") or ""
        lines.append(f"| {r['method']} | {r['model']} | {r['budget'] if r['budget'] is not None else 'all'} | "
                     f"{r['file_bytes']:,} | {per} | {r['epochs']} x {r['runs']} | "
                     f"{pct(r['accuracy_mean'])} +- {pct(r['accuracy_std'])} | "
                     f"{'' if target is None else pct(target)[:-3]} |")
    lines += ["", "## Verdict (generated from the numbers above)", ""]
    lines += [f"- {v}" for v in verdicts(report)]
    lines += ["", "## Profile", ""]
    lines += [f"- {k}: {v}" for k, v in p.items()]
    if report["reductions"]:
        lines += ["", "## Reductions against the full (GPU) profile", ""]
        lines += [f"- {r}" for r in report["reductions"]]
    lines += ["", "## D3 files", ""]
    for b, f in report["d3_files"].items():
        ch = f.get("choices", {})
        lines.append(f"- budget {b}: {f['file_bytes']:,} of {f['max_bytes']:,} bytes; decoder "
                     f"{ch.get('family', '?')} width {ch.get('width', '?')} ({ch.get('weight_encoding', '?')}), "
                     f"z {ch.get('z_dim', '?')}, {f['latents_per_class']} latent(s)/class; "
                     + ("reused" if f["reused"] else f"packed in {f['pack_seconds'] / 60:.1f} min"))
    if report.get("notes"):
        lines += ["", "## What limits these numbers", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "![accuracy vs file bytes](fmnist.png)", ""]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    rows = report["rows"]
    out = []
    for b in report["profile"]["budgets"]:
        d3 = next((r for r in rows if r["method"] == "d3" and r["budget"] == b and r["model"].startswith("convnet")),
                  None)
        rnd = next((r for r in rows if r["method"] == "random" and r["budget"] == b
                    and r["model"].startswith("convnet")), None)
        if d3 is None:
            continue
        target = TARGETS.get(b)
        if target is None:
            continue
        met = "met" if d3["accuracy_mean"] >= target else f"NOT met ({pct(target - d3['accuracy_mean'])} points short)"
        text = f"budget {b}: D3 ConvNet {pct(d3['accuracy_mean'])}% against the target {pct(target)[:-3]}%: {met}"
        if rnd is not None:
            diff = d3["accuracy_mean"] - rnd["accuracy_mean"]
            text += (f"; {'above' if diff > 0 else 'BELOW'} the same-bytes random subset "
                     f"({pct(rnd['accuracy_mean'])}%, {rnd['images_per_class']} PNGs/class) by {pct(abs(diff))} points")
        out.append(text)
    full = next((r for r in rows if r["method"] == "full" and r["model"].startswith("convnet")), None)
    if full is not None:
        out.append(f"full data ceiling (ConvNet, {full['epochs']} epochs): {pct(full['accuracy_mean'])}%")
    return out


REDUCED_NOTES = [
    ("This is the reduced CPU profile (2 cores, no GPU): after the autoencoder stage (1,500 steps, then "
     "k-means priors) the distiller ran 300 iterations (297 MMD-only, 3 with trajectory matching; reference: "
     "8,000-10,000 with trajectory matching throughout) against one expert of 3 epochs (reference: 100 "
     "experts), with a ConvNet of width 32 (reference 128). The decoded samples are smooth reconstructions, "
     "not sharp photos: that is what limits budgets 10 and 50, where the random subset holds 61 and 310 "
     "sharp real images per class."),
    ("Hard labels: the files store no soft labels (`d3 pack --hard-labels`); per-prior soft labels scored "
     "at best equal and up to 7 points lower (benchmarks/fmnist-ablation.md)."),
    ("Evaluation: 1000 / 300 / 40 ConvNet-32 epochs at budgets 1 / 10 / 50 with as many samples per class "
     "and epoch as the random subset has images, i.e. the same SGD steps for both (1,000 / 900 / 520 "
     "batches of 256); the D3 stream's priors take turns over the epochs. ResNet-18 is the narrow "
     "width-16 variant (resnet18-w16) for 300 / 100 / 15 epochs, one run."),
    ("The targets (80/89/91%) are for the full profile on a GPU (ConvNet-128, 5,000 distillation "
     "iterations, 500 evaluation epochs): `python tools/bench_accuracy.py --device cuda`."),
]


def plot(report: dict, path: Path) -> None:
    """Accuracy (%) against file bytes (log scale), one series per method and model, with
    std error bars; the full-data ceiling as a dashed line. Pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, L, R, T, B = 900, 560, 80, 230, 50, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    rows = report["rows"]
    if not rows:
        img.save(path)
        return
    xs = [r["file_bytes"] for r in rows]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    x1 = max(x1, x0 + 1)
    lows = [r["accuracy_mean"] - r["accuracy_std"] for r in rows]
    y0, y1 = max(0.0, math.floor(min(lows) * 10) / 10), 1.0

    def px(b):
        return L + (math.log10(b) - x0) / (x1 - x0) * (W - L - R)

    def py(a):
        return T + (y1 - a) / (y1 - y0) * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    for e in range(x0, x1 + 1):
        x = px(10**e)
        d.line([x, T, x, H - B], fill=(225, 225, 225))
        d.text((x - 12, H - B + 6), f"1e{e}", fill="black", font=font)
    step = 0.05 if y1 - y0 <= 0.5 else 0.1
    a = math.ceil(y0 / step) * step
    while a <= y1 + 1e-9:
        d.line([L, py(a), W - R, py(a)], fill=(225, 225, 225))
        d.text((L - 34, py(a) - 6), f"{100 * a:.0f}%", fill="black", font=font)
        a += step
    d.text((L + (W - L - R) / 2 - 80, H - B + 26), "file bytes (log scale)", fill="black", font=font)
    d.text((L, 12), "Fashion-MNIST: final-model test accuracy vs bytes "
           f"({report['profile']['name']} profile)", fill="black", font=font)
    styles = {("d3", "convnet"): ((31, 119, 180), "o"), ("d3", "resnet18"): ((106, 61, 154), "s"),
              ("random", "convnet"): ((255, 127, 14), "o"), ("random", "resnet18"): ((214, 39, 40), "s"),
              ("full", "convnet"): ((44, 160, 44), "o"), ("full", "resnet18"): ((23, 190, 207), "s")}
    legend_y = T
    for (method, model), (color, marker) in styles.items():
        series = sorted((r for r in rows if r["method"] == method and r["model"].startswith(model)),
                        key=lambda r: r["file_bytes"])
        if not series:
            continue
        pts = [(px(r["file_bytes"]), py(r["accuracy_mean"])) for r in series]
        if method == "full":
            for x in range(L, W - R, 12):
                d.line([x, pts[0][1], x + 6, pts[0][1]], fill=color, width=2)
        elif len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for r, (x, y) in zip(series, pts):
            lo, hi = py(r["accuracy_mean"] - r["accuracy_std"]), py(r["accuracy_mean"] + r["accuracy_std"])
            d.line([x, lo, x, hi], fill=color, width=1)
            box = [x - 5, y - 5, x + 5, y + 5]
            d.ellipse(box, fill=color) if marker == "o" else d.rectangle(box, fill=color)
            if r["budget"] is not None and method != "full":
                d.text((x + 7, y - 14), f"B{r['budget']}", fill=color, font=font)
        name = {"d3": "D3 file", "random": "random PNG subset", "full": "full training set"}[method]
        d.rectangle([W - R + 15, legend_y + 3, W - R + 25, legend_y + 13], fill=color)
        d.text((W - R + 32, legend_y + 2), f"{name}, {series[0]['model']}", fill="black", font=font)
        legend_y += 20
    img.save(path)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="the CPU profile (REDUCED in this file)")
    ap.add_argument("--budgets", help="comma-separated budgets [the profile's: 1,10,50]")
    ap.add_argument("--runs", type=int, help="ConvNet runs per row [profile]")
    ap.add_argument("--iterations", type=int, help="distillation iterations at every budget [profile]")
    ap.add_argument("--no-resnet", action="store_true", help="skip every ResNet-18 row")
    ap.add_argument("--d3-dir", help="reuse DIR/fmnist-b{B}.d3 instead of packing when present")
    ap.add_argument("--work-dir", default=".d3cache/bench_accuracy", help="packed files, expert cache, subsets")
    ap.add_argument("--out", default="benchmarks/fmnist", help="output prefix: .json, .md, .png")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="only rewrite .md and .png from the existing .json")
    args = ap.parse_args(argv)
    if args.report_only:
        report = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(report))
        plot(report, Path(args.out).with_suffix(".png"))
        return report

    profile = replace(REDUCED if args.reduced else FULL)
    if args.budgets:
        profile.budgets = tuple(int(b) for b in args.budgets.split(","))
    if args.runs:
        profile.runs = profile.full_runs = args.runs
    if args.iterations is not None:
        profile.iterations = {b: args.iterations for b in profile.budgets}
    if args.no_resnet:
        profile.resnet_runs = 0
        profile.random_resnet = profile.full_resnet = False
    device = resolve_device(args.device)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device), "d3fmt_version": d3fmt.__version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "profile": asdict(profile), "reductions": reductions(profile),
        "targets_d3_convnet": {str(k): v for k, v in TARGETS.items()}, "d3_files": {}, "rows": [],
        "complete": False, "notes": REDUCED_NOTES if profile.name == "reduced" else [],
    }
    started = time.time()

    def save():
        report["wall_seconds"] = round(time.time() - started, 1)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")

    def log(msg):
        print(f"[{(time.time() - started) / 60:6.1f} min] {msg}", flush=True)

    source = open_source(FASHION)
    x, y = source.load("train")
    test_x, test_y = source.load("test")
    src = pack_source(source, profile.pack_per_class, work)
    for budget in profile.budgets:
        t = time.time()
        f = get_d3(budget, profile, args, src, device)
        report["d3_files"][str(budget)] = f
        log(f"budget {budget}: d3 file {f['file_bytes']} bytes ({time.time() - t:.0f} s)")
        cap = budget_bytes(budget, 10, (1, 28, 28))
        subset = choose_random_subset(x, y, 10, cap, seed=args.seed)
        sx = subset.images(1)
        mean, std = pixel_mean_std(sx)
        spc = subset.per_class  # same SGD steps as the random subset (the stream's priors take turns)
        resnet, epochs = per_budget(profile.resnet_epochs, budget), per_budget(profile.epochs, budget)
        jobs = [("d3", "convnet", epochs, profile.runs),
                ("d3", "resnet18", resnet, profile.resnet_runs),
                ("random", "convnet", epochs, profile.runs),
                ("random", "resnet18", resnet, profile.resnet_runs if profile.random_resnet else 0)]
        for method, model, epochs, runs in jobs:
            if runs < 1 or epochs < 1:
                continue
            t = time.time()
            if method == "d3":
                cfg = eval_config(profile, model, epochs, runs, args, device, samples_per_class=spc)
                ev, _ = evaluate_file(f["path"], FASHION, cfg, record=True)
                report["rows"].append(row("d3", budget, ev, f["file_bytes"], time.time() - t, samples_per_class=spc,
                                          max_bytes=f["max_bytes"]))
            else:
                cfg = eval_config(profile, model, epochs, runs, args, device)
                ev = evaluate_real(sx, subset.labels, test_x, test_y, 10, mean, std, cfg)
                report["rows"].append(row("random", budget, ev, subset.used_bytes, time.time() - t,
                                          images_per_class=subset.per_class, max_bytes=cap,
                                          next_bytes=subset.next_bytes))
            log(f"budget {budget}: {method} {model}: {100 * ev.mean:.2f}% +- {100 * ev.std:.2f} "
                f"({time.time() - t:.0f} s)")
            save()
    png_total = None
    for model, runs in (("convnet", profile.full_runs), ("resnet18", profile.full_runs if profile.full_resnet else 0)):
        if runs < 1:
            continue
        from d3fmt.baseline import png_bytes

        png_total = png_total or sum(len(png_bytes(img)) for img in x)
        t = time.time()
        mean, std = pixel_mean_std(x)
        ev = evaluate_real(x, y, test_x, test_y, 10, mean, std, eval_config(profile, model, profile.full_epochs, runs,
                                                                              args, device))
        report["rows"].append(row("full", None, ev, png_total, time.time() - t, images_per_class=6000))
        log(f"full {model}: {100 * ev.mean:.2f}% +- {100 * ev.std:.2f} ({time.time() - t:.0f} s)")
        save()
    report["complete"] = True
    save()
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))
    log(f"wrote {out}.json, {out}.md, {out}.png")
    return report


if __name__ == "__main__":
    main()
