"""Recipe-fair accuracy per byte on Fashion-MNIST: every method under both training recipes.

    python tools/bench_recipes.py --name fmnist-recipes --budgets 1 --steps 1000 --runs 2 \
        --methods codec:post2 anchors:2 anchors:2+teacher16 codec:post2+teacher16 full

Every row trains the same model (ConvNet-32) for the same SGD steps (batch 256, lr 0.01 /10
at half), once per recipe: ``plain`` (random crop after zero padding + horizontal flip) and
``dsa`` (the reference differentiable augmentation), and tests the *final* model once on
the 10,000 real test images. A method is then reported at its better recipe (the mean over
runs), every method alike. Methods:

  full                    all 60,000 training images (the ceiling)
  codec:NAME              the codec family's best-known member NAME (``d3fmt.codecs``): the
                          largest balanced random real subset whose stored bytes fit B
  codec:NAME+teacherW     the same, in B minus the bytes of the stored teacher of
                          anchors:2+teacherW, which labels every augmented view
  anchors:BITS            a .d3 file of real anchors (``d3fmt.distill.anchors``): the same
                          random pick, BITS-bit levels, context-coded; trained through the
                          file's stream (``d3fmt.evaluate.evaluate_file``, what ``d3 eval`` does)
  anchors:BITS+teacherW   the same with a ConvNet-W teacher in the file (int8), labelling
                          every augmented view
  d3:PATH                 an existing .d3 file (e.g. the paper's vector-latent form)

Results go to benchmarks/NAME.json one run at a time (a rerun resumes), and
benchmarks/NAME.md is rewritten from them after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

import d3fmt  # noqa: E402
from d3fmt.distill.anchors import AnchorConfig, AnchorPool, AnchorSource, fit_anchors  # noqa: E402
from d3fmt.distill.labels import train_teacher  # noqa: E402
from d3fmt.evaluation.codecs import decode, fit_subset  # noqa: E402
from d3fmt.evaluation.evaluate import RECIPES, EvalConfig, evaluate_real, evaluate_representation, pixel_mean_std  # noqa: E402
from d3fmt.format import D3Reader, write_d3
from d3fmt.format.budget import Budget  # noqa: E402
from d3fmt.loader.representation import Representation  # noqa: E402
from d3fmt.models.teacher import TeacherConfig, attach_teacher  # noqa: E402
from d3fmt.sources import open_source  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
EVAL_RESERVE = 384  # header bytes a file keeps free for evaluation records


class Data:
    def __init__(self, source: str):
        src = open_source(source)
        self.info = src.info
        self.x, self.y = src.load("train")
        self.tx, self.ty = src.load("test")
        self.mean, self.std = pixel_mean_std(self.x)
        self.k = self.info.num_classes

    def budget(self, budget: float) -> Budget:
        return Budget.of(self.k, self.x.shape[1:], budget=budget)

    def cap(self, budget: float) -> int:
        return self.budget(budget).max_bytes


def teacher_model(data: Data, width: int, work: Path):
    """The teacher (trained once, kept in WORK as a .d3 file's teacher sections)."""
    path = work / f"teacher{width}.d3"
    if not path.exists():
        model = train_teacher(data.x, data.y, data.k, data.mean, data.std, TeacherConfig(width=width))
        write_d3(path, _carrier(data, model))  # one anchor per class carries it; only the teacher is used
    with D3Reader(path) as r:
        rep = Representation.from_reader(r)
        tbytes = sum(s.stored_bytes for s in r.sections if s.name.startswith("teacher."))
    return rep, tbytes


def _carrier(data: Data, model):
    from d3fmt.distill.anchors import anchor_container

    container, _ = anchor_container(_source(data), 1, AnchorConfig(bits=1), data.budget(1000.0), {},
                                    lambda c: attach_teacher(c, model, 1.0))
    return container


def _source(data: Data) -> AnchorSource:
    return AnchorSource(AnchorPool.of_arrays(data.x, data.y, data.k, 0), tuple(data.x.shape[1:]),
                        list(data.info.class_names), data.info.name, data.info.content_hash, data.mean, data.std)


def anchors_file(data: Data, budget: float, bits: int, teacher_width: int, work: Path) -> Path:
    path = work / f"anchors-b{budget:g}-{bits}bit{f'-t{teacher_width}' if teacher_width else ''}.d3"
    if not path.exists():
        finish = None
        if teacher_width:
            rep, _ = teacher_model(data, teacher_width, work)
            model, temperature = rep.teacher
            finish = lambda c: attach_teacher(c, model, temperature)  # noqa: E731
        settings = {"representation": "anchors", "anchor_bits": bits, "teacher_width": teacher_width}
        fit = fit_anchors(_source(data), AnchorConfig(bits=bits), data.budget(budget), settings, finish,
                          reserve=EVAL_RESERVE)
        write_d3(path, fit.container)
    return path


def run_one(data: Data, method: str, budget: float, recipe: str, steps: int, seed: int, work: Path) -> dict:
    cfg = EvalConfig(model="convnet", width=32, steps=steps, runs=1, lr=0.01, seed=seed, dsa=RECIPES[recipe])
    kind, _, spec = method.partition(":")
    base, _, teacher = spec.partition("+teacher")
    if kind == "full":
        ev = evaluate_real(data.x, data.y, data.tx, data.ty, data.k, data.mean, data.std, cfg)
        return {"bytes": None, "images_per_class": int(len(data.y) // data.k), **_acc(ev)}
    if kind == "codec":
        labeller, cap = None, data.cap(budget)
        extra = {}
        if teacher:
            rep, tbytes = teacher_model(data, int(teacher), work)
            labeller, cap = rep.teacher_labels, cap - tbytes
            extra = {"teacher_bytes": tbytes}
        fit = fit_subset(base, data.x, data.y, data.k, cap)
        x, y = decode(fit.encoded)
        ev = evaluate_real(x, y, data.tx, data.ty, data.k, data.mean, data.std, cfg, labeller=labeller)
        return {"bytes": fit.bytes + extra.get("teacher_bytes", 0), "images_per_class": fit.per_class,
                **extra, **_acc(ev)}
    path = Path(spec) if kind == "d3" else anchors_file(data, budget, int(base), int(teacher or 0), work)
    with D3Reader(path) as r:
        rep = Representation.from_reader(r)
        size, choices = r.file_bytes, r.header["budget"].get("choices") or {}
    cfg.labels = "auto"
    ev = evaluate_representation(rep, data.tx, data.ty, cfg)
    return {"bytes": size, "images_per_class": choices.get("anchors_per_class"), "file": str(path),
            "labels": ev.details.get("labels"), **_acc(ev)}


def _acc(ev) -> dict:
    return {"accuracy": round(ev.accuracies[0], 5), "protocol": ev.protocol}


def markdown(report: dict) -> str:
    rows = report["rows"]
    keys = sorted({(r["budget"], r["method"]) for r in rows}, key=lambda k: (k[0] or 0, k[1]))
    lines = [f"# {report['name']}: recipe-fair accuracy per byte (Fashion-MNIST, ConvNet-32)", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}; device: {report['device']}",
             f"- d3fmt {d3fmt.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
             "- every row: the final model of each run on the 10,000 real test images (%), mean +- std over runs; "
             "the same SGD steps (batch 256, lr 0.01 / 10 at half); plain = crop + flip, dsa = the reference DSA; "
             "**best** = the method's better recipe", "",
             "| budget | method | bytes | images/class | steps | plain | dsa | best |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for budget, method in keys:
        for steps in sorted({r["steps"] for r in rows if r["method"] == method and r["budget"] == budget}):
            mine = [r for r in rows if (r["budget"], r["method"], r["steps"]) == (budget, method, steps)]
            cells = {rec: _cell([r["accuracy"] for r in mine if r["recipe"] == rec]) for rec in RECIPES}
            means = {rec: np.mean([r["accuracy"] for r in mine if r["recipe"] == rec])
                     for rec in RECIPES if any(r["recipe"] == rec for r in mine)}
            best = max(means, key=means.get) if means else None
            first = mine[0]
            lines.append(f"| {budget if budget is not None else 'all'} | {method} | "
                         f"{first['bytes'] if first['bytes'] is not None else ''} | "
                         f"{first.get('images_per_class') or ''} | {steps} | {cells['plain']} | {cells['dsa']} | "
                         f"{f'**{100 * means[best]:.2f}** ({best})' if best else ''} |")
    return "\n".join(lines + [""] + verdicts(rows)) + "\n"


def _best(rows: list[dict], method: str, budget, steps: int) -> float | None:
    """The method's mean final accuracy at its better recipe (None when it has no run)."""
    means = [np.mean([r["accuracy"] for r in rows if (r["method"], r["budget"], r["steps"], r["recipe"]) ==
                      (method, budget, steps, rec)]) for rec in RECIPES
             if any((r["method"], r["budget"], r["steps"], r["recipe"]) == (method, budget, steps, rec) for r in rows)]
    return max(means) if means else None


def verdicts(rows: list[dict]) -> list[str]:
    """Per budget and step count: each .d3 row against the best codec row, without and with a
    teacher, every method at its better recipe (generated from the rows above)."""
    out = ["## Verdict (each method at its better recipe; generated from the rows above)", ""]
    for budget, steps in sorted({(r["budget"], r["steps"]) for r in rows if r["budget"] is not None}):
        methods = {r["method"] for r in rows if (r["budget"], r["steps"]) == (budget, steps)}
        codecs = {m: _best(rows, m, budget, steps) for m in methods if m.startswith("codec:")}
        plain = {m: a for m, a in codecs.items() if "+teacher" not in m}
        taught = {m: a for m, a in codecs.items() if "+teacher" in m}
        for m in sorted(x for x in methods if not x.startswith("codec:")):
            acc = _best(rows, m, budget, steps)
            parts = [f"{name} {100 * a:.2f}%: {100 * (acc - a):+.2f} points"
                     for name, a in sorted({**plain, **taught}.items())]
            out.append(f"- budget {budget:g}, {steps} steps: {m} {100 * acc:.2f}% against " + "; ".join(parts))
    return out


def _cell(values) -> str:
    if not values:
        return ""
    return f"{100 * np.mean(values):.2f} +- {100 * np.std(values):.2f} ({len(values)})"


def _key(row: dict) -> tuple:
    return row["method"], row["budget"], row["recipe"], row["steps"], row["seed"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="fmnist-recipes")
    ap.add_argument("--source", default=FASHION)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0])
    ap.add_argument("--methods", nargs="+", default=["codec:post2", "anchors:2", "full"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", type=int, nargs="+", default=[1000])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--work-dir", default=".d3cache/bench-recipes")
    ap.add_argument("--out-dir", default="benchmarks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--merge", nargs="*", default=[], metavar="NAME",
                    help="first add the rows of benchmarks/NAME.json (runs made in parallel processes)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the JSON, run nothing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work_dir), Path(args.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / f"{args.name}.json"
    report = json.loads(jpath.read_text()) if jpath.exists() else {"name": args.name, "rows": []}
    report.update(command="python tools/bench_recipes.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                  date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  device=f"{cpu_model(default=platform.processor() or 'cpu')}, {torch.get_num_threads()} torch "
                         "threads (CPU)")
    done = {_key(r) for r in report["rows"]}
    for name in args.merge:
        for row in json.loads((out / f"{name}.json").read_text())["rows"]:
            if _key(row) not in done:
                report["rows"].append(row)
                done.add(_key(row))
    jpath.write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(report))
    if args.report_only:
        return report
    data = Data(args.source)
    for steps in args.steps:
        for budget in args.budgets:
            for run in range(args.runs):
                for method in args.methods:
                    b = None if method == "full" else budget
                    for recipe in args.recipes:
                        key = (method, b, recipe, steps, run)
                        if key in done:
                            continue
                        start = time.time()
                        row = run_one(data, method, budget, recipe, steps, run, work)
                        row.update(method=method, budget=b, recipe=recipe, steps=steps, seed=run,
                                   seconds=round(time.time() - start, 1))
                        report["rows"].append(row)
                        done.add(key)
                        jpath.write_text(json.dumps(report, indent=1) + "\n")
                        (out / f"{args.name}.md").write_text(markdown(report))
                        print(f"{method} b{b} {recipe} {steps} steps run {run}: {100 * row['accuracy']:.2f}% "
                              f"({row['seconds']} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
