"""The memory plan (d3fmt.distill.memory): what it chooses, what it refuses, and how close
its predicted peak is to the peak RSS of real packs."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from d3fmt.cli import main
from d3fmt.distill.memory import ITERATION_BYTES, GiB, MiB, Workload, iteration_bytes, parse_bytes, plan_memory
from d3fmt.errors import ConfigError, MemoryPlanError

ROOT = Path(__file__).resolve().parents[1]


def workload(classes=10, latents=10, side=28, channels=1, per_class=600, **kw) -> Workload:
    image = channels * side * side
    values = dict(train_images=classes * per_class, test_images=classes * 100, image_values=image, classes=classes,
                  latents_per_class=latents, z_dim=32, syn_steps=10, mmd_samples=16, mmd_real=32,
                  conv_values=47 * image, conv_params=30_000, decoder_values=25 * image, decoder_params=100_000,
                  expert_batch=256, autoencoder_batch=128, eval_batch=1024)
    values.update(kw)
    return Workload(**values)


def plan(w, limit=16 * GiB, subtasks=1, batch_syn=0, mmd_classes=0, **kw):
    return plan_memory(lambda s: w, device="cpu", limit=limit, subtasks=subtasks, batch_syn=batch_syn,
                       mmd_classes=mmd_classes, **kw)


def test_small_jobs_keep_todays_settings():
    p = plan(workload(classes=10, latents=2))
    assert (p.subtasks, p.batch_syn, p.mmd_classes, p.chosen) == (1, 0, 0, [])
    assert p.peak <= p.limit and "\n" not in p.line() and "batch_syn all priors" in p.line()


def test_a_thousand_classes_get_bounded_iterations():
    w = workload(classes=1000, latents=359, side=64, channels=3, per_class=6)
    unbounded = iteration_bytes(w, 0, 0)
    assert unbounded > 100 * GiB  # every prior in every unrolled step: what ran out of memory
    p = plan(w)
    assert 0 < p.batch_syn < w.priors and 0 < p.mmd_classes < w.classes
    assert p.iteration <= ITERATION_BYTES["cpu"] and p.peak <= p.limit
    assert set(p.chosen) == {"batch_syn", "mmd_classes"}
    # the largest bounds that fit: one more sample per step would not
    assert iteration_bytes(w, p.batch_syn + 1, p.mmd_classes) > ITERATION_BYTES["cpu"]


def test_explicit_settings_that_do_not_fit_are_refused_naming_the_setting():
    w = workload(classes=100, latents=50, side=64, channels=3)
    with pytest.raises(MemoryPlanError, match="lower batch_syn") as info:
        plan(w, limit=4 * GiB, batch_syn=5000, choose=())
    assert "\n" not in str(info.value) and isinstance(info.value, ConfigError)


def test_images_that_do_not_fit_one_subtask_raise_the_subtask_count():
    w_of = {s: workload(classes=1000 // s, per_class=1300, side=64, channels=3) for s in (1, 2, 4, 8, 16, 1000)}
    p = plan_memory(lambda s: w_of.get(s, w_of[16]), device="cpu", limit=12 * GiB, subtasks=1, batch_syn=0,
                    mmd_classes=0, max_subtasks=1000)
    assert p.subtasks > 1 and "subtasks" in p.chosen and p.peak <= 12 * GiB
    with pytest.raises(MemoryPlanError, match="--subtasks"):
        plan_memory(lambda s: w_of[s], device="cpu", limit=12 * GiB, subtasks=1, batch_syn=0, mmd_classes=0,
                    choose=("batch_syn", "mmd_classes"))


def test_parse_bytes():
    assert parse_bytes("8G") == 8 * GiB and parse_bytes("512M") == 512 * MiB and parse_bytes("1.5GiB") == int(1.5 * GiB)
    assert parse_bytes("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(MemoryPlanError):
            parse_bytes(bad)


def test_cli_refuses_a_pack_that_cannot_fit_before_training(tmp_path):
    result = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "d.d3"), "--budget", "10",
                                       "--max-memory", "100M", "--work-dir", str(tmp_path / "w"), "-q"])
    assert result.exit_code == MemoryPlanError.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the memory plan does not fit") and "--max-memory" in lines[0]
    assert not (tmp_path / "d.d3").exists() and not (tmp_path / "w" / "experts").exists()


def test_cli_prints_the_plan_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "d.d3"), "--budget", "10",
                                       "--iterations", "0", "--pretrain-steps", "2", "--no-eval",
                                       "--work-dir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    plans = [line for line in result.output.splitlines() if line.startswith("memory plan: peak")]
    assert len(plans) == 1 and "subtasks 1, batch_syn all priors, mmd_classes all" in plans[0]


# --- the plan against measured peaks (each shape packed in a fresh process) ---

PROBE = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from d3fmt.distill.job import open_pack_source, plan_pack_memory
from d3fmt.format.budget import Budget
from d3fmt.distill.launch import pack
from d3fmt.distill.settings import pack_config
spec = json.loads(sys.argv[1])
cfg = pack_config(spec.pop("source"), spec.pop("output"), device="cpu", quiet=True, evaluate=False, **spec)
info = open_pack_source(cfg).info
_, plan, _ = plan_pack_memory(cfg, info, Budget.of(info.num_classes, info.image_shape, budget=cfg.budget,
                                                   max_bytes=cfg.max_bytes))
pack(cfg)
print(json.dumps({"plan": plan.peak, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "batch_syn": plan.batch_syn}))
"""
TINY = dict(iterations=1, warmup=0.0, num_experts=1, expert_epochs=2, match_epochs=1, pretrain_steps=2,
            checkpoint_every=0)


def _npz(path, classes, per_class, side, channels):
    rng = np.random.default_rng(0)
    shape = (classes * per_class, side, side) + ((channels,) if channels > 1 else ())
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.repeat(np.arange(classes), per_class)
    np.savez(path, x=x, y=y, x_test=x[::per_class], y_test=y[::per_class])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("classes, per_class, side, channels, budget, settings", [
    (10, 300, 28, 1, 10, {"batch_syn": 200}),  # 28 px grey, the unrolled steps dominate
    (20, 100, 32, 3, 2, {"batch_syn": 120}),  # 32 px RGB
    (40, 10, 64, 3, 1, {"max_memory": "3G"}),  # 64 px RGB, bounds chosen by the planner
])
def test_plan_is_within_30_percent_of_the_measured_peak(tmp_path, classes, per_class, side, channels, budget,
                                                        settings):
    src = _npz(tmp_path / "x.npz", classes, per_class, side, channels)
    spec = {"source": str(src), "output": str(tmp_path / "x.d3"), "work_dir": str(tmp_path / "w"),
            "budget": budget, **TINY, **settings}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spec)], capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.7 * row["peak"] <= row["plan"] <= 1.3 * row["peak"], row
    if "max_memory" in settings:
        assert row["batch_syn"] > 0  # the planner bounded the unrolled batch


def test_worker_config_keeps_the_plans_choices():
    from d3fmt.distill.settings import config_from_settings, config_to_json, pack_config

    cfg = pack_config("digits", "o.d3", budget=10, max_memory="2G")
    assert cfg.planned == ("subtasks", "batch_syn", "mmd_classes") and cfg.max_memory == 2 * GiB
    chosen = replace(cfg, planned=(), distill=replace(cfg.distill, batch_syn=64))
    d = config_to_json(chosen)
    run = {k: d.pop(k) for k in ("output", "work_dir", "resume", "quiet", "device", "devices", "subtask",
                                  "cache_dir", "workers", "max_memory", "planned")}
    back = config_from_settings(d, **run)
    assert back.planned == () and back.distill.batch_syn == 64 and back.max_memory == 2 * GiB
    assert pack_config("digits", "o.d3", budget=10, subtasks=2, batch_syn=8).planned == ("mmd_classes",)


@pytest.mark.slow
def test_where_todays_settings_fit_the_pack_is_byte_identical(tmp_path, monkeypatch):
    """The planner keeps batch_syn = mmd_classes = 0 when they fit: the same file, byte for byte with
    the clock pinned, as the settings given explicitly (what Fashion-MNIST budget 1 gets;
    benchmarks/fmnist-ablation.md)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1765000000")  # the compressed header's size depends on the time
    from d3fmt.distill.launch import pack
    from d3fmt.distill.settings import pack_config

    tiny = dict(budget=10, iterations=2, num_experts=1, expert_epochs=2, match_epochs=1, syn_steps=2,
                convnet_width=16, pretrain_steps=5, evaluate=False, quiet=True, device="cpu")
    planned = pack(pack_config("digits", str(tmp_path / "a.d3"), work_dir=str(tmp_path / "wa"), **tiny))
    given = pack(pack_config("digits", str(tmp_path / "b.d3"), work_dir=str(tmp_path / "wb"), subtasks=1,
                             batch_syn=0, mmd_classes=0, **tiny))
    assert planned.file_bytes == given.file_bytes
    assert (tmp_path / "a.d3").read_bytes() == (tmp_path / "b.d3").read_bytes()
