"""GPU check: one command that measures what a GPU machine is for (see tools/gpu_check.sh).

    bash tools/gpu_check.sh                    # on a CUDA machine, about 6-8 minutes
    bash tools/gpu_check.sh --smoke --out DIR  # CPU, tiny sizes, about a minute (a test runs it)

Steps, each recorded in ``<out>/gpu.json`` and ``<out>/gpu.md`` (default out:
benchmarks/) with the device name, and each timed:

1. ``tests``: the CUDA-only tests (``pytest -k cuda``), pass/skip/fail counts.
2. ``decode``: :class:`d3fmt.D3Stream` decode images/s on the device, fp32 and bf16, at
   28x28 grey and 64x64 RGB, for a file whose decoder is the size the budget fitter picks
   at budget 10 (random weights: decode speed does not depend on trained values);
   beside it ResNet-18 training images/s (SGD steps on batches already on the device, fp32
   and bf16 autocast) at the same size, and the ratio decode / training (target: >= 10).
3. ``distiller``: distillation seconds per iteration of the ``standard`` preset (its
   ConvNet width, the budget-10 decoder and latents per class of the data) from
   stand-in trajectories, MMD-only warm-up iterations and full MTT + MMD ones apart,
   plus the top operations of a torch.profiler trace of one full iteration.
4. ``pack``: `d3 pack` of Fashion-MNIST at budget 10 with a short profile (few experts,
   epochs, iterations, evaluation epochs) and the stored file's evaluated accuracy.

No network: nothing is installed or downloaded. Fashion-MNIST is read from ``--fmnist``
(default: ``data/fashion-mnist`` in the working tree, else
/usr/share/datasets/fashion-mnist); ``--smoke`` uses scikit-learn's bundled digits
instead, and 28x28 / 64x64 stand-in images for the decode sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import torch

ROOT = Path(__file__).resolve().parent.parent
FMNIST_DIRS = (ROOT / "data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
NUM_CLASSES = 10
DECODE_TARGET = 10.0  # D3Stream decode images/s over ResNet-18 training images/s
SUMMARY = re.compile(r"\d+ (passed|skipped|failed|deselected|error)")  # pytest's last line


@dataclass
class Sizes:
    """How much each step does: the full check or the CPU smoke run."""

    decode_images: int  # images decoded per measurement
    decode_batch: int
    train_steps: int  # ResNet-18 SGD steps timed
    train_batch: int
    mmd_iterations: int
    mtt_iterations: int
    pack: dict  # pack_config overrides


FULL = Sizes(decode_images=200_000, decode_batch=4096, train_steps=30, train_batch=256, mmd_iterations=10,
             mtt_iterations=5, pack=dict(num_experts=5, expert_epochs=4, iterations=200, eval_epochs=200,
                                         pretrain_steps=500))
SMOKE = Sizes(decode_images=200, decode_batch=100, train_steps=1, train_batch=4, mmd_iterations=2, mtt_iterations=1,
              pack=dict(num_experts=1, expert_epochs=2, iterations=2, eval_epochs=2, pretrain_steps=4,
                        convnet_width=8, match_epochs=1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- 1. tests


def run_cuda_tests(work: Path) -> dict:
    """``pytest -k cuda`` (the CUDA-only tests; they skip without a GPU); counts from its JUnit XML."""
    xml = work / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-rs", "-k", "cuda", "-p", "no:cacheprovider", f"--junitxml={xml}", "tests"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.exists():
        suite = ElementTree.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = next((line for line in reversed(out.stdout.splitlines()) if SUMMARY.search(line)), "")
    return {"command": "python -m pytest -k cuda tests", "returncode": out.returncode,
            "summary": summary.strip("= ") or out.stderr[-300:], **counts, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- 2. decode vs ResNet-18


def bench_file(work: Path, shape: tuple[int, int, int], samples_per_class: int) -> tuple[Path, dict]:
    """A .d3 file with a random decoder of the size the fitter picks at budget 10."""
    from d3fmt.distill.budget import BudgetRequest, fit_budget
    from d3fmt.format import Budget, write_d3
    from d3fmt.loader.example import random_container

    plan = fit_budget(BudgetRequest(Budget.of(NUM_CLASSES, shape, budget=10), [NUM_CLASSES]))
    container = random_container(NUM_CLASSES, shape, family=plan.family, width=plan.width, z_dim=plan.z_dim,
                                 latents_per_class=plan.latents_per_class, samples_per_class=samples_per_class,
                                 encoding="float16")
    path = work / f"decode{shape[1]}.d3"
    write_d3(path, container)
    return path, {"family": plan.family, "width": plan.width, "z_dim": plan.z_dim,
                  "latents_per_class": plan.latents_per_class}


def decode_rate(path: Path, device: torch.device, dtype: torch.dtype, sizes: Sizes) -> float:
    """Images/s of one D3Stream pass (the first batch, warm-up, left out)."""
    from d3fmt.loader.dataset import D3Stream

    stream = D3Stream(path, batch_size=sizes.decode_batch, device=device, dtype=dtype,
                      samples_per_class=sizes.decode_images // NUM_CLASSES)
    order = stream.order()
    stream.batch(order[: sizes.decode_batch])  # warm-up (cuDNN algorithm choice, allocations)

    def one_pass():
        for images, _ in stream:
            pass

    return stream.num_samples / _timed(one_pass, device)


def resnet_rate(shape: tuple[int, int, int], device: torch.device, bf16: bool, sizes: Sizes) -> float:
    """ResNet-18 training images/s: SGD steps on a batch already on the device."""
    from d3fmt.models.resnet import resnet18

    torch.manual_seed(0)
    model = resnet18(shape[0], NUM_CLASSES, shape[1]).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(sizes.train_batch, *shape, device=device)
    y = torch.randint(NUM_CLASSES, (sizes.train_batch,), device=device)

    def steps(n: int):
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps(2)  # warm-up
    return sizes.train_steps * sizes.train_batch / _timed(lambda: steps(sizes.train_steps), device)


def run_decode(work: Path, device: torch.device, sizes: Sizes) -> list[dict]:
    rows = []
    for shape in ((1, 28, 28), (3, 64, 64)):
        path, decoder = bench_file(work, shape, max(1, sizes.decode_images // NUM_CLASSES))
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            decode = decode_rate(path, device, dtype, sizes)
            train = resnet_rate(shape, device, dtype == torch.bfloat16, sizes)
            rows.append({"size": f"{shape[1]}x{shape[2]}x{shape[0]}", "dtype": name, "decoder": decoder,
                         "decode_images_per_s": decode, "resnet18_train_images_per_s": train,
                         "ratio": decode / train, "target_met": decode / train >= DECODE_TARGET})
            print(f"decode {rows[-1]['size']} {name}: {decode:,.0f} img/s, ResNet-18 {train:,.0f} img/s",
                  file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- 3. distiller


def _stand_in_trajectories(netcfg, epochs: int):
    """Trajectories of a fresh ConvNet drifting by small steps: the iteration cost does not
    depend on trained values, and this takes no expert training."""
    from d3fmt.distill.experts import Trajectories
    from d3fmt.models.convnet import ConvNet, flatten_params

    torch.manual_seed(0)
    start = flatten_params(ConvNet(netcfg))
    steps = [start + 1e-3 * k * torch.randn_like(start) for k in range(epochs + 1)]
    return Trajectories.from_tensors(netcfg, [torch.stack(steps)])


def run_distiller(source: str, work: Path, device: torch.device, sizes: Sizes) -> dict:
    from dataclasses import replace

    from d3fmt.distill.job import load_subset, prepare
    from d3fmt.distill.settings import pack_config
    from d3fmt.distill.trainer import distill
    from d3fmt.models.decoder import DecoderConfig

    cfg = pack_config(source, str(work / "distiller.d3"), budget=10, preset="standard", device=str(device),
                      work_dir=str(work / "cache"), convnet_width=sizes.pack.get("convnet_width"))
    ctx = prepare(cfg)
    x, y = load_subset(ctx.source, ctx.partition[0], "train", ctx.mean, ctx.std)
    k = len(ctx.partition[0])
    netcfg = cfg.experts.convnet_config(x.shape[1], k, x.shape[2])
    traj = _stand_in_trajectories(netcfg, cfg.distill.expert_epochs + 1)
    dcfg = DecoderConfig.from_json(ctx.plan.decoders[0])
    marks = []
    n = sizes.mmd_iterations + sizes.mtt_iterations
    d = replace(cfg.distill, iterations=n, warmup=sizes.mmd_iterations, mean=tuple(ctx.mean), std=tuple(ctx.std),
                checkpoint_every=0)

    def clock(iteration, losses):
        _sync(device)
        marks.append(time.perf_counter())

    _sync(device)
    marks.append(time.perf_counter())
    distill(x, y, k, dcfg, ctx.plan.latents_per_class, traj, d, device=device, progress=clock)
    mmd = (marks[sizes.mmd_iterations] - marks[1]) / max(1, sizes.mmd_iterations - 1)
    mtt = (marks[n] - marks[sizes.mmd_iterations]) / sizes.mtt_iterations
    warm = cfg.distill.warmup
    total = warm * mmd + (cfg.distill.iterations - warm) * mtt
    return {"preset": "standard", "convnet_width": netcfg.width, "latents_per_class": ctx.plan.latents_per_class,
            "decoder": dcfg.to_json(), "image_shape": list(x.shape[1:]), "mmd_s_per_it": mmd,
            "mtt_s_per_it": mtt, "preset_iterations": cfg.distill.iterations, "preset_warmup": warm,
            "preset_it_per_s": cfg.distill.iterations / total,
            "profile": profile_iteration(x, y, k, dcfg, ctx.plan.latents_per_class, traj, d, device)}


def profile_iteration(x, y, k, dcfg, lpc, traj, d, device: torch.device, rows: int = 12) -> list[dict]:
    """The top operations (by device time on CUDA, CPU time otherwise) of one MTT + MMD iteration."""
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    from d3fmt.distill.trainer import distill

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            distill(x, y, k, dcfg, lpc, traj, replace(d, iterations=1, warmup=0), device=device)
    except Exception as exc:  # the profiler (CUPTI) can be missing; the timings above still count
        return [{"op": f"profiler failed: {type(exc).__name__}: {exc}", "ms": 0.0, "calls": 1}]
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:rows]
    return [{"op": e.key, "ms": getattr(e, key, 0) / 1000, "calls": e.count} for e in events]


# --------------------------------------------------------------------------- 4. pack + evaluate


def run_pack(source: str, work: Path, device: torch.device, sizes: Sizes) -> dict:
    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    out = work / "pack.d3"
    cfg = pack_config(source, str(out), budget=10, preset="standard", device=str(device), work_dir=str(work / "pack"),
                      quiet=True, **sizes.pack)
    t0 = time.perf_counter()
    result = pack(cfg)
    seconds = time.perf_counter() - t0
    ev = result.evaluation
    return {"source": source, "settings": sizes.pack, "seconds": seconds, "file_bytes": result.file_bytes,
            "max_bytes": result.max_bytes, "accuracy_mean": None if ev is None else ev.mean,
            "accuracy": None if ev is None else list(ev.accuracies), "expert_accuracy": result.expert_accuracy}


# --------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from machine import cpu_model

    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def markdown(r: dict) -> str:
    seconds = f"{r['seconds']:.0f} s in all" if "seconds" in r else "unfinished"
    lines = [f"# GPU check, {r['date']}", "", f"Command: `{r['command']}`  ",
             f"Device: **{r['device_name']}** ({r['device']}); d3fmt {r['version']}; torch {r['torch']}; "
             f"{'smoke run (tiny sizes)' if r['smoke'] else 'full run'}; {seconds}.", ""]
    for name, section in (("tests", _md_tests), ("decode", _md_decode), ("distiller", _md_distiller),
                          ("pack", _md_pack)):
        value = r.get(name)
        if isinstance(value, dict) and "error" in value:
            lines += [f"## {name}", "", f"Failed: `{value['error']}`", ""]
        elif value is not None:
            lines += section(value)
    return "\n".join(lines)


def _md_tests(t: dict) -> list[str]:
    return ["## CUDA-only tests", "", f"`{t['command']}`: {t.get('passed', 0)} passed, {t.get('skipped', 0)} skipped, "
            f"{t.get('failures', 0)} failed, {t.get('errors', 0)} errors (exit {t['returncode']}; {t['summary']})", ""]


def _md_decode(rows: list[dict]) -> list[str]:
    lines = ["## D3Stream decode vs ResNet-18 training (images/s)", "",
             f"| size | dtype | decode | ResNet-18 train | ratio (target >= {DECODE_TARGET:g}) |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['size']} | {row['dtype']} | {row['decode_images_per_s']:,.0f} "
                     f"| {row['resnet18_train_images_per_s']:,.0f} | {row['ratio']:.1f} "
                     f"{'(met)' if row['target_met'] else '(not met)'} |")
    return lines + [""]


def _md_distiller(d: dict) -> list[str]:
    lines = [f"## Distiller, `{d['preset']}` preset (width {d['convnet_width']}, "
             f"{d['latents_per_class']} latents/class, {'x'.join(map(str, d['image_shape']))})", "",
             f"MMD-only iteration {d['mmd_s_per_it']:.3f} s, MTT + MMD iteration {d['mtt_s_per_it']:.3f} s; "
             f"the preset's {d['preset_iterations']} iterations ({d['preset_warmup']} warm-up) run at "
             f"{d['preset_it_per_s']:.2f} it/s.", "", "| op (one MTT + MMD iteration) | ms | calls |", "|---|---|---|"]
    return lines + [f"| `{p['op']}` | {p['ms']:.1f} | {p['calls']} |" for p in d["profile"]] + [""]


def _md_pack(p: dict) -> list[str]:
    acc = "not evaluated" if p["accuracy_mean"] is None else f"{100 * p['accuracy_mean']:.2f}%"
    return ["## Pack + evaluate, budget 10", "", f"Source `{p['source']}`, settings `{json.dumps(p['settings'])}`: "
            f"{p['file_bytes']:,} of {p['max_bytes']:,} bytes in {p['seconds']:.0f} s; final-model accuracy {acc}.", ""]


def fmnist_dir(given: str | None) -> str:
    candidates = [Path(given)] if given else list(FMNIST_DIRS)
    for path in candidates:
        if (path / "train-images-idx3-ubyte.gz").exists() or (path / "train-images-idx3-ubyte").exists():
            return str(path)
    raise SystemExit(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}; copy the four .gz files "
                     f"to data/fashion-mnist/ or pass --fmnist DIR")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, digits: about a minute")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="directory for gpu.json and gpu.md")
    parser.add_argument("--fmnist", help="directory of the Fashion-MNIST .gz files")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-tests", action="store_true", help="skip step 1")
    args = parser.parse_args(argv)
    from d3fmt import __version__
    from d3fmt.device import resolve_device

    device = torch.device("cpu") if args.smoke else resolve_device(args.device)
    sizes = SMOKE if args.smoke else FULL
    source = "digits" if args.smoke else fmnist_dir(args.fmnist)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "bash tools/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": str(device), "device_name": device_name(device), "smoke": args.smoke,
              "version": __version__, "torch": torch.__version__, "python": platform.python_version()}
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        steps = {"tests": lambda: run_cuda_tests(work), "decode": lambda: run_decode(work, device, sizes),
                 "distiller": lambda: run_distiller(source, work, device, sizes),
                 "pack": lambda: run_pack(source, work, device, sizes)}
        if args.no_tests:
            steps.pop("tests")
        for name, step in steps.items():
            try:
                report[name] = step()
            except Exception as exc:  # record it and go on: one failing step must not lose the others
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            write_report(out, report)  # after every step: a run cut short keeps what it measured
    report["seconds"] = time.perf_counter() - t0
    write_report(out, report)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} ({report['seconds']:.0f} s)", file=sys.stderr)
    failed = [k for k in steps if "error" in report[k] or (k == "tests" and report[k]["returncode"] not in (0, 5))]
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def write_report(out: Path, report: dict) -> None:
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    (out / "gpu.md").write_text(markdown(report))

if __name__ == "__main__":
    sys.exit(main())
