"""Fashion-MNIST scoreboard: D3 against the same-bytes codec family and the full data.

    python tools/bench_accuracy.py --reduced          # CPU profile (see REDUCED below)
    python tools/bench_accuracy.py --device cuda      # the full profile, for a GPU
    python tools/bench_accuracy.py --reduced --budgets 1   # one budget; rerun to resume

For every budget B (images per class; a file may use B * 10 * 28 * 28 * 4 bytes):

  codecs  the honest competitor family (d3fmt.evaluation.codecs): a balanced random real subset kept
          in the same bytes by each codec of ``Profile.codecs`` (PNG per image, zstd blocks,
          posterised pixels, WebP / JPEG class sheets, half-side downsampling); every codec
          is screened with one short run (``screen_steps``), then the best one trains with
          the full protocol (``steps`` SGD steps, ``runs`` runs): row "best codec";
  d3      the library packs a .d3 file (or reuses DIR/fmnist-b{B}.d3 from ``--d3-dir``) and
          the same models train on its decoded stream for the same number of SGD steps;
  full    all 60,000 training images, the same steps (the ceiling).

One protocol for every row (d3fmt.evaluation.evaluate with ``EvalConfig.steps``): the same model,
batch, SGD steps, DSA augmentation, lr 0.01 divided by 10 at half the steps; the *final*
model tested once on the 10,000 real test images. Results are written to
benchmarks/fmnist.json after every row; a rerun with the same --out resumes, skipping the
rows already there (``--fresh`` starts over). benchmarks/fmnist.md and .png are rewritten
from the JSON (accuracy against file bytes, one line per method).
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import cpu_model  # noqa: E402  (tools/machine.py: this script's directory is on sys.path)

import d3fmt
from d3fmt.device import resolve_device
from d3fmt.distill.launch import pack
from d3fmt.distill.settings import pack_config
from d3fmt.evaluation.baseline import evaluate_codecs
from d3fmt.evaluation.evaluate import EvalConfig, EvalResult, TestSet, evaluate_file, evaluate_real, pixel_mean_std
from d3fmt.format import Budget, D3Reader
from d3fmt.models.resnet import STANDARD_WIDTH
from d3fmt.models.teacher import AUTO_TEACHER
from d3fmt.sources import open_source

FASHION = "/usr/share/datasets/fashion-mnist"
TARGETS = {1: 0.81, 10: 0.88, 50: 0.90}  # D3 ConvNet targets (issue 10), and 1 point over the best codec
SCREEN = ("png", "zstd", "post2", "post3", "post4", "webp-q30", "webp-q50", "webp-q75", "jpeg-q50", "jpeg-q75",
          "jpeg-q90", "down2-4bit", "down2-8bit")


@dataclass
class Profile:
    """Everything that sets the cost of the benchmark."""

    name: str
    budgets: tuple[int, ...] = (1, 10, 50)
    width: int = 128  # ConvNet width: experts, distillation student, evaluation
    resnet_width: int = STANDARD_WIDTH  # ResNet-18's first-stage width (the standard 64; 16: 16x fewer FLOPs)
    experts: int = 10
    expert_epochs: int = 20
    iterations: dict = field(default_factory=lambda: {1: 5000, 10: 5000, 50: 5000})  # per budget
    syn_steps: int = 10
    batch_syn: int = 0  # synthetic samples per inner step; 0 = every prior
    mmd_samples: int = 16
    mmd_real: int = 32
    warmup: float = 0.9  # share of iterations trained by MMD alone first (the `d3 pack` default)
    pretrain_steps: int = 1500  # autoencoder stage (the `d3 pack` default); 0 = method.md's random start
    soft_labels: bool = False  # per-prior soft labels (never better than hard ones: fmnist-ablation.md)
    teacher_width: int = AUTO_TEACHER  # the labelling teacher in the file: AUTO_TEACHER = the fitter's choice, 0 = none
    teacher_epochs: int = 6
    priors: str = "kmeans"  # where the autoencoder stage puts the priors (d3 pack --priors)
    steps: dict = field(default_factory=lambda: {1: 5000, 10: 5000, 50: 5000})  # SGD steps of every method
    runs: int = 3
    screen_steps: int = 1000  # the codec screen: one run per codec
    codecs: tuple[str, ...] = SCREEN
    resnet_steps: dict = field(default_factory=lambda: {1: 3000, 10: 3000, 50: 3000})  # 0: no ResNet rows
    resnet_runs: int = 1
    full_steps: int = 5000
    eval_batch: int = 256
    lr: float = 0.01  # every method, D3 included (not the file's learned lr: one protocol)


FULL = Profile("full")

# The CPU profile: two cores, no GPU. ConvNet width 32 and ResNet-18 of width 16 (16x fewer
# FLOPs than the standard 64). Distillation: the autoencoder stage, then 300 iterations
# (297 MMD-only, 3 with trajectory matching) against one expert of 3 epochs; the teacher
# the fitter sizes. Every method trains 1,000 SGD steps of 256 (the accuracy-vs-steps curve
# in benchmarks/fmnist-steps.md); codecs are screened at 300 steps.
REDUCED = Profile(
    "reduced", width=32, resnet_width=16, experts=1, expert_epochs=3, iterations={1: 300, 10: 300, 50: 300},
    syn_steps=10, batch_syn=100, mmd_samples=8, mmd_real=16, warmup=0.99, steps={1: 1000, 10: 1000, 50: 1000},
    runs=2, screen_steps=300, resnet_steps={1: 500, 10: 500, 50: 500}, resnet_runs=1, full_steps=1000,
)

# Checks that the script runs end to end (minutes on a CPU); its numbers mean nothing.
SMOKE = replace(REDUCED, name="smoke", budgets=(1,), iterations={1: 2}, pretrain_steps=20, teacher_epochs=1,
                steps={1: 4}, runs=1, screen_steps=2, codecs=("png", "post3"), resnet_steps={1: 2}, full_steps=2)


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
            pretrain_steps=profile.pretrain_steps, teacher_width=profile.teacher_width,
            teacher_epochs=profile.teacher_epochs, priors=profile.priors,
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
                "width": d3fmt.evaluation.evaluate.file_convnet_width(path)}


def eval_config(profile: Profile, model: str, steps: int, runs: int, args, device, **kw) -> EvalConfig:
    width = profile.resnet_width if model == "resnet18" else profile.width
    return EvalConfig(model=model, steps=steps, runs=runs, width=width, batch_size=profile.eval_batch,
                      lr=profile.lr, seed=args.seed, device=str(device), **kw)


def row(method: str, budget, ev: EvalResult, file_bytes: int, seconds: float, **extra) -> dict:
    return {"method": method, "model": ev.model, "budget": budget, "file_bytes": int(file_bytes),
            "accuracy_mean": round(ev.mean, 5), "accuracy_std": round(ev.std, 5),
            "accuracies": [round(a, 5) for a in ev.accuracies], "runs": len(ev.accuracies), "epochs": ev.epochs,
            "steps": ev.steps, "lr": ev.lr, "seconds": round(seconds, 1), "protocol": ev.protocol,
            **extra}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def pct(v) -> str:
    return f"{100 * v:.2f}"


def markdown(report: dict) -> str:
    p = report["profile"]
    lines = [
        "# Fashion-MNIST: D3 against the same-bytes codec family and the full data",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; device: {report['device']}",
        f"- d3fmt {report['d3fmt_version']}, torch {report['torch_version']}, Python {report['python_version']}",
        f"- profile: **{p['name']}**; wall time {report.get('wall_seconds', 0) / 60:.1f} min"
        + ("" if report.get("complete") else " (INCOMPLETE: rerun the command to resume)"),
        "- accuracy: the *final* model of each run on the 10,000 real test images, mean +- std over runs (%); "
        "every row trains the same model for the same SGD steps (batch 256, DSA, lr 0.01, /10 at half)",
        "- bytes: the whole .d3 file (d3), exactly what the codec stores: blobs + a label list (codecs), "
        "the PNG files of all 60,000 training images (full); the cap is B x 10 x 28 x 28 x 4 bytes",
        "",
        "| budget | method | codec | model | bytes | images/class | steps x runs | accuracy % |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    order = {"d3": 0, "best codec": 1, "screen": 2, "full": 3}
    for r in sorted(report["rows"], key=lambda r: (r["budget"] or 1e9, order.get(r["method"], 9),
                                                      -r["accuracy_mean"])):
        lines.append(f"| {r['budget'] if r['budget'] is not None else 'all'} | {r['method']} | {r.get('codec', '')} | "
                     f"{r['model']} | {r['file_bytes']:,} | {r.get('images_per_class', '')} | "
                     f"{r.get('steps')} x {r['runs']} | {pct(r['accuracy_mean'])} +- {pct(r['accuracy_std'])} |")
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
                     f"z {ch.get('z_dim', '?')}, {f['latents_per_class']} latent(s)/class, teacher width "
                     f"{ch.get('teacher_width', 0)}; "
                     + ("reused" if f["reused"] else f"packed in {f['pack_seconds'] / 60:.1f} min"))
    if report.get("notes"):
        lines += ["", "## What limits these numbers", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "![accuracy vs file bytes](fmnist.png)", ""]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    rows = report["rows"]
    out = []
    for b in report["profile"]["budgets"]:
        for model in ("convnet", "resnet18"):
            d3 = next((r for r in rows if r["method"] == "d3" and r["budget"] == b and r["model"].startswith(model)),
                      None)
            best = next((r for r in rows if r["method"] == "best codec" and r["budget"] == b
                         and r["model"].startswith(model)), None)
            if d3 is None:
                continue
            text = f"budget {b}, {d3['model']}: D3 {pct(d3['accuracy_mean'])}%"
            target = TARGETS.get(b)
            if model == "convnet" and target is not None:
                met = "met" if d3["accuracy_mean"] >= target else f"NOT met, {pct(target - d3['accuracy_mean'])} short"
                text += f" (target {pct(target)[:-3]}%: {met})"
            if best is not None:
                diff = d3["accuracy_mean"] - best["accuracy_mean"]
                text += (f"; {'+' if diff >= 0 else '-'}{pct(abs(diff))} points against the best same-bytes codec "
                         f"({best['codec']}, {best['images_per_class']} images/class, {pct(best['accuracy_mean'])}%)"
                         + ("" if model != "convnet" else ": the 1-point target is " +
                            ("met" if diff >= 0.01 else "NOT met")))
            out.append(text)
    full = next((r for r in rows if r["method"] == "full" and r["model"].startswith("convnet")), None)
    if full is not None:
        out.append(f"full data ceiling ({full['model']}, {full.get('steps')} steps): {pct(full['accuracy_mean'])}%")
    return out


REDUCED_NOTES = [
    ("This is the reduced CPU profile (2 cores, no GPU): after the autoencoder stage (1,500 steps) the "
     "distiller ran 300 iterations (297 MMD-only, 3 with trajectory matching; reference: 8,000-10,000 with "
     "trajectory matching throughout) against one expert of 3 epochs (reference: 100 experts), with a ConvNet "
     "of width 32 (reference 128). The decoded samples are smooth reconstructions, not sharp photos."),
    ("Labels: the file's labelling teacher (d3 pack --teacher-width, the fitter's choice) labels every decoded "
     "sample; the codec rows train on their subsets' true labels."),
    ("Protocol: every row trains ConvNet-32 for the same SGD steps (batch 256, lr 0.01 / 10 at half, DSA); "
     "the codec screen uses one short run per codec, only the best one gets the full protocol. ResNet-18 is "
     "the narrow width-16 variant (resnet18-w16), one run."),
    ("The full profile (ConvNet-128, 5,000 distillation iterations, 5,000 steps) needs a GPU: "
     "`python tools/bench_accuracy.py --device cuda`."),
]


def plot(report: dict, path: Path) -> None:
    """Accuracy (%) against file bytes (log scale), one series per method and model, with
    std error bars; the full-data ceiling as a dashed line. Pillow only."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, L, R, T, B = 900, 560, 80, 230, 50, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    rows = [r for r in report["rows"] if r["method"] != "screen"]
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
              ("best codec", "convnet"): ((255, 127, 14), "o"), ("best codec", "resnet18"): ((214, 39, 40), "s"),
              ("full", "convnet"): ((44, 160, 44), "o")}
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
        name = {"d3": "D3 file", "best codec": "best same-bytes codec", "full": "full training set"}[method]
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
    ap.add_argument("--smoke", action="store_true", help="a minutes-long check that the script runs (SMOKE)")
    ap.add_argument("--codecs", help="comma-separated codecs to screen [the profile's: all of d3fmt.evaluation.codecs]")
    ap.add_argument("--budgets", help="comma-separated budgets [the profile's: 1,10,50]")
    ap.add_argument("--runs", type=int, help="ConvNet runs per row [profile]")
    ap.add_argument("--iterations", type=int, help="distillation iterations at every budget [profile]")
    ap.add_argument("--no-resnet", action="store_true", help="skip every ResNet-18 row")
    ap.add_argument("--d3-dir", help="reuse DIR/fmnist-b{B}.d3 instead of packing when present")
    ap.add_argument("--work-dir", default=".d3cache/bench_accuracy", help="packed files, expert cache, subsets")
    ap.add_argument("--out", default="benchmarks/fmnist", help="output prefix: .json, .md, .png")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="SGD steps of every method at every budget [profile]")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming from --out's .json")
    ap.add_argument("--report-only", action="store_true", help="only rewrite .md and .png from the existing .json")
    args = ap.parse_args(argv)
    if args.report_only:
        report = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(report))
        plot(report, Path(args.out).with_suffix(".png"))
        return report

    profile = replace(SMOKE if args.smoke else REDUCED if args.reduced else FULL)
    if args.budgets:
        profile.budgets = tuple(int(b) for b in args.budgets.split(","))
    if args.runs:
        profile.runs = args.runs
    if args.iterations is not None:
        profile.iterations = {b: args.iterations for b in profile.budgets}
    if args.no_resnet:
        profile.resnet_runs = 0
    if args.codecs:
        profile.codecs = tuple(args.codecs.split(","))
    if args.steps:
        profile.steps = {b: args.steps for b in profile.budgets}
    device = resolve_device(args.device)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    previous = out.with_suffix(".json")
    if previous.exists() and not args.fresh:
        report = json.loads(previous.read_text())  # resume: keep the rows already measured
        if report.get("profile", {}).get("name") != profile.name:
            raise SystemExit(f"{previous} holds the {report.get('profile', {}).get('name')} profile; "
                             "pass --fresh or another --out")
        report["resumed_seconds"] = report.get("wall_seconds", 0)
        report["complete"] = False
        report["profile"]["budgets"] = sorted(set(report["profile"]["budgets"]) | set(profile.budgets))
    else:
        report = {
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": device_name(device), "d3fmt_version": d3fmt.__version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "profile": asdict(profile),
            "reductions": reductions(profile), "targets_d3_convnet": {str(k): v for k, v in TARGETS.items()},
            "d3_files": {}, "rows": [], "complete": False,
            "notes": REDUCED_NOTES if profile.name == "reduced" else [],
        }
    started = time.time()

    def save():
        report["wall_seconds"] = round(time.time() - started + report.get("resumed_seconds", 0), 1)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        plot(report, out.with_suffix(".png"))

    def log(msg):
        print(f"[{(time.time() - started) / 60:6.1f} min] {msg}", flush=True)

    def have(method, model, budget, codec=None):
        return next((r for r in report["rows"] if (r["method"], r["model"].split("-")[0], r["budget"],
                                                    r.get("codec")) == (method, model, budget, codec)), None)

    def add(r, what):
        report["rows"].append(r)
        log(f"{what}: {100 * r['accuracy_mean']:.2f}% +- {100 * r['accuracy_std']:.2f} ({r['seconds']:.0f} s)")
        save()

    source = open_source(FASHION)
    x, y = source.load("train")
    test_x, test_y = source.load("test")
    test = TestSet(test_x, test_y, f"{FASHION} test split ({len(test_y)} images)")
    for budget in profile.budgets:
        cap = Budget.of(10, (1, 28, 28), budget=budget).max_bytes
        steps, resnet_steps = per_budget(profile.steps, budget), per_budget(profile.resnet_steps, budget)
        # 1. screen the codec family (one short run each), 2. the best codec with the full protocol
        screen = eval_config(profile, "convnet", profile.screen_steps, 1, args, device)
        for codec in profile.codecs:
            if have("screen", "convnet", budget, codec) is None:
                t = time.time()
                [res] = evaluate_codecs(x, y, test, 10, cap, screen, [codec], seed=args.seed)
                if res.evaluation is not None:
                    add(row("screen", budget, res.evaluation, res.bytes, time.time() - t, codec=codec,
                            images_per_class=res.images_per_class, max_bytes=cap), f"budget {budget}: screen {codec}")
        screened = [r for r in report["rows"] if r["method"] == "screen" and r["budget"] == budget]
        best = max(screened, key=lambda r: (r["accuracy_mean"], -r["file_bytes"]))["codec"]
        for model, n, runs in (("convnet", steps, profile.runs), ("resnet18", resnet_steps, profile.resnet_runs)):
            if runs and n and have("best codec", model, budget, best) is None:
                t = time.time()
                [res] = evaluate_codecs(x, y, test, 10, cap, eval_config(profile, model, n, runs, args, device),
                                        [best], seed=args.seed)
                add(row("best codec", budget, res.evaluation, res.bytes, time.time() - t, codec=best,
                        images_per_class=res.images_per_class, max_bytes=cap), f"budget {budget}: best codec {best} {model}")
        # 3. the .d3 file on the same protocol
        if any(have("d3", m, budget) is None for m in ("convnet", "resnet18")):
            t = time.time()
            f = get_d3(budget, profile, args, FASHION, device)
            report["d3_files"][str(budget)] = f
            log(f"budget {budget}: d3 file {f['file_bytes']} bytes ({time.time() - t:.0f} s)")
            save()
        f = report["d3_files"][str(budget)]
        for model, n, runs in (("convnet", steps, profile.runs), ("resnet18", resnet_steps, profile.resnet_runs)):
            if runs and n and have("d3", model, budget) is None:
                t = time.time()
                ev, _ = evaluate_file(f["path"], FASHION, eval_config(profile, model, n, runs, args, device),
                                      record=True)
                add(row("d3", budget, ev, f["file_bytes"], time.time() - t, max_bytes=f["max_bytes"],
                        labels=ev.details.get("labels")), f"budget {budget}: d3 {model}")
    if have("full", "convnet", None) is None and profile.full_steps:
        from d3fmt.evaluation.codecs import png_bytes

        t = time.time()
        png_total = sum(len(png_bytes(img)) for img in x)
        mean, std = pixel_mean_std(x)
        ev = evaluate_real(x, y, test_x, test_y, 10, mean, std,
                           eval_config(profile, "convnet", profile.full_steps, 1, args, device))
        add(row("full", None, ev, png_total, time.time() - t, images_per_class=6000), "full convnet")
    report["complete"] = True
    save()
    log(f"wrote {out}.json, {out}.md, {out}.png")
    return report

if __name__ == "__main__":
    main()
