"""`d3 pack` end to end on CPU at tiny settings: valid files within budget, resume, clean failures."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import d3fmt
from d3fmt.augment import DSAParams
from d3fmt.cli import main
from d3fmt.distill import trainer
from d3fmt.distill.assemble import fit_to_cap
from d3fmt.distill.autoencoder import AutoencoderConfig
from d3fmt.distill.experts import ExpertConfig
from d3fmt.distill.job import partition_classes
from d3fmt.distill.launch import pack
from d3fmt.distill.settings import PackConfig
from d3fmt.distill.trainer import DistillConfig
from d3fmt.errors import BudgetError, ConfigError, SourceError, TrainingError
from d3fmt.evaluation.evaluate import EvalConfig
from d3fmt.format import Budget, D3Container, D3Reader, read_d3
from d3fmt.sources.synthetic import make_shapes_folder

TINY_ARGS = ["--iterations", "3", "--experts", "1", "--expert-epochs", "3", "--syn-steps", "2",
             "--match-epochs", "1", "--convnet-width", "16", "--eval-epochs", "2", "--pretrain-steps", "10", "-q"]


def tiny_config(tmp_path, source="digits", budget=10.0, iterations=3, **kw) -> PackConfig:
    kw.setdefault("evaluation", EvalConfig(epochs=2, width=16))
    return PackConfig(
        source=source, output=str(tmp_path / "out.d3"), budget=budget, work_dir=str(tmp_path / "work"),
        quiet=True, experts=ExpertConfig(num_experts=1, epochs=3, width=16),
        distill=DistillConfig(iterations=iterations, syn_steps=2, expert_epochs=1, checkpoint_every=1,
                              mmd_samples=4, mmd_real=8, dsa=DSAParams(), autoencoder=AutoencoderConfig(steps=10)),
        **kw,
    )


@pytest.mark.slow
def test_pack_digits_writes_a_valid_file_within_budget(tmp_path):
    result = pack(tiny_config(tmp_path, soft_labels=True))
    cap = 10 * 10 * 1 * 8 * 8 * 4
    assert result.max_bytes == cap
    assert 0.8 * cap <= result.file_bytes <= cap
    with D3Reader(result.path) as r:
        r.verify()
        h = r.header
        assert h["budget"]["bytes_used"] == result.file_bytes == r.file_bytes
        assert h["labels"] == "soft" and h["evals"][0]["runs"] == 1
        assert h["provenance"]["source"].startswith("digits")
        assert h["budget"]["choices"]["width"] == result.plan.width
    ds = d3fmt.D3Dataset(result.path)
    image, label = ds[0]
    assert image.shape == (1, 8, 8) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert len(ds) == 10 * h["samples_per_class"]
    # the default stream is one turn over the priors (each mean, then each draw), at least 50
    assert h["samples_per_class"] == max(50, 2 * h["subtasks"][0]["latents_per_class"])


@pytest.mark.slow
def test_pack_with_zero_iterations_keeps_the_autoencoder_result_and_trains_no_experts(tmp_path):
    cfg = tiny_config(tmp_path, iterations=0, evaluation=EvalConfig(epochs=30, width=16))
    cfg.distill.autoencoder = AutoencoderConfig(steps=150, batch=64)
    result = pack(cfg)
    experts_dir = tmp_path / "work" / "experts"
    assert not experts_dir.exists() or not any(experts_dir.iterdir())  # hard labels (default), no iterations: no expert
    with D3Reader(result.path) as r:
        r.verify()
        settings = r.header["provenance"]["settings"]["distill"]
        assert settings["iterations"] == 0 and settings["autoencoder"]["steps"] == 150
        # far above chance (10%) after 150 autoencoder steps and a 30-epoch evaluation
        assert r.header["evals"][0]["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        DistillConfig(iterations=0, autoencoder=AutoencoderConfig(steps=0))


@pytest.mark.slow
def test_pack_generated_rgb_imagefolder_via_cli(tmp_path):
    src = make_shapes_folder(tmp_path / "shapes", num_classes=4, per_class=12, image_size=16, val_per_class=4)
    out = tmp_path / "shapes.d3"
    res = CliRunner().invoke(main, ["pack", str(src), "-o", str(out), "--budget", "20",
                                    "--work-dir", str(tmp_path / "w"), *TINY_ARGS])
    assert res.exit_code == 0, res.output
    assert "bytes" in res.output and "accuracy" in res.output
    c = read_d3(out)
    assert c.header["image_shape"] == [3, 16, 16] and c.header["num_classes"] == 4
    assert out.stat().st_size <= 20 * 4 * 3 * 16 * 16 * 4
    assert c.header["evals"][0]["test_set"].count("val")  # evaluated on the held-out val/ split


@pytest.mark.slow
def test_interrupted_pack_leaves_no_file_and_resume_completes(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, iterations=4, evaluation=None)
    real_iteration, calls = trainer._iteration, {"n": 0}

    def crash_on_third(task, state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_iteration(task, state)

    monkeypatch.setattr(trainer, "_iteration", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        pack(cfg)
    assert not (tmp_path / "out.d3").exists()
    monkeypatch.setattr(trainer, "_iteration", real_iteration)
    resumed = pack(PackConfig(**{**cfg.__dict__, "resume": True}))
    assert calls["n"] == 3  # the crash happened where we said
    fresh = pack(PackConfig(**{**cfg.__dict__, "output": str(tmp_path / "fresh.d3"),
                               "work_dir": str(tmp_path / "work2")}))
    a, b = read_d3(resumed.path), read_d3(fresh.path)
    for name in a.tensors:
        np.testing.assert_allclose(a.tensors[name], b.tensors[name], rtol=0, atol=1e-6, err_msg=name)


def test_bad_sources_fail_cleanly(tmp_path):
    runner = CliRunner()
    for src in [str(tmp_path / "missing"), str(tmp_path)]:
        res = runner.invoke(main, ["pack", src, "-o", str(tmp_path / "x.d3"), "--budget", "10", "-q"])
        assert res.exit_code == SourceError.exit_code, res.output
        assert res.output.startswith("Error: ") and "Traceback" not in res.output
        assert not (tmp_path / "x.d3").exists()
    with pytest.raises(SourceError):
        pack(tiny_config(tmp_path, source=str(tmp_path / "nope.npz")))


def test_impossible_budget_stops_before_training(tmp_path):
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "x.d3"), "--budget", "0.5",
                                    "--work-dir", str(tmp_path / "w"), "-q"])
    assert res.exit_code == BudgetError.exit_code and "smallest needs about" in res.output and "--budget" in res.output
    assert not (tmp_path / "w" / "experts").exists()  # no expert was trained


def test_option_errors(tmp_path):
    with pytest.raises(ConfigError):
        partition_classes(10, 11)
    with pytest.raises(ConfigError):
        pack(tiny_config(tmp_path, budget=None))  # neither --budget nor --max-bytes
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "x.d3"), "--budget", "10",
                                    "--device", "cuda:7", "-q"])
    assert res.exit_code == ConfigError.exit_code and "Error:" in res.output


def test_partition_is_balanced_contiguous_and_complete():
    parts = partition_classes(10, 3)
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_fit_to_cap_downgrades_incompressible_tensors():
    rng = np.random.default_rng(0)
    from d3fmt.format.example import example_container

    c = example_container(num_classes=3, image_shape=(1, 4, 4), z_dim=64, latents_per_class=4)
    c.header["budget"]["choices"] = {}
    for name in c.tensors:
        c.tensors[name] = rng.uniform(-1, 1, c.tensors[name].shape).astype(np.float32)
        c.encodings[name] = "float32"
    from d3fmt.format import encode_d3

    full = len(encode_d3(c))
    size = fit_to_cap(c, int(full * 0.7))
    assert size <= full * 0.7 and c.header["budget"]["choices"]["downgraded_to_fit"]
    assert set(c.encodings.values()) & {"float16", "int8"}
    with pytest.raises(BudgetError):
        fit_to_cap(D3Container(c.header, c.tensors, dict(c.encodings)), 100)


def test_budget_plan_is_the_same_in_every_process_of_a_job(tmp_path):
    """Parts of one job may live at other paths, run at other times and be evaluated
    differently: they must still fit the very same plan (the merge checks it)."""

    from d3fmt.distill.job import fit
    from d3fmt.sources import open_source

    info = open_source("digits").info
    parts = partition_classes(info.num_classes, 3)
    cfg = tiny_config(tmp_path)
    budget = Budget.of(info.num_classes, info.image_shape, budget=10.0)
    assert budget.max_bytes == 25600
    plan = fit(cfg, info, parts, budget)
    moved = replace(info, name="imagefolder:/a/much/longer/path/on/another/machine/" + "x" * 40)
    other = PackConfig(**{**cfg.__dict__, "source": "/elsewhere/" + "y" * 60, "evaluation": None,
                          "output": "/tmp/other.d3"})
    assert fit(other, moved, parts, budget).choices() == plan.choices()
    assert plan.decoders == fit(other, moved, parts, budget).decoders


def test_torch_runtime_errors_become_one_line_training_errors(tmp_path, monkeypatch):
    def broken(task, state):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x64 and 32x10)\nmore torch detail")

    monkeypatch.setattr(trainer, "_iteration", broken)
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "x.d3"), "--budget", "10",
                                    "--work-dir", str(tmp_path / "w"), "--no-eval", *TINY_ARGS])
    assert res.exit_code == TrainingError.exit_code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: distilling subtask 0 failed: mat1 and mat2 shapes")
    assert not (tmp_path / "x.d3").exists()


def test_out_of_memory_is_not_relabelled():
    from d3fmt.errors import training_errors

    with pytest.raises(MemoryError):
        with training_errors("x"):
            raise MemoryError
    with pytest.raises(RuntimeError, match="out of memory"):
        with training_errors("x"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_checkpoint_with_nan_is_refused_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = tiny_config(tmp_path, iterations=2, evaluation=None)
    pack(cfg)
    ckpt, = (tmp_path / "work").rglob(trainer.CHECKPOINT_NAME)
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ckpt))
    tensors["mu"][0, 0] = float("nan")
    save_file(tensors, str(ckpt), metadata=meta)
    (tmp_path / "work").joinpath("runs").rglob("part-*.d3").__next__().unlink()  # the part must be redone
    with pytest.raises(TrainingError, match="non-finite values \\(mu\\)"):
        pack(PackConfig(**{**cfg.__dict__, "resume": True}))


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path):
    """A pack killed by SIGKILL (no cleanup runs) resumes from its last checkpoint and ends
    with the tensors of an uninterrupted run."""
    args = ["-m", "d3fmt", "pack", "digits", "--budget", "10", "--no-eval", *TINY_ARGS, "--iterations", "12",
            "--checkpoint-every", "1"]
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, *args, "-o", str(tmp_path / "a.d3"), "--work-dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = 0
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            ckpts = list(work.rglob(trainer.CHECKPOINT_NAME))
            if ckpts:
                reached = _checkpoint_iteration(ckpts[0])
                if reached >= 2:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 2 <= reached < 12 and not (tmp_path / "a.d3").exists()
    resumed = subprocess.run([sys.executable, *args, "-o", str(tmp_path / "a.d3"), "--work-dir", str(work),
                              "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    fresh = subprocess.run([sys.executable, *args, "-o", str(tmp_path / "b.d3"), "--work-dir", str(tmp_path / "w2")],
                           capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, b = read_d3(tmp_path / "a.d3"), read_d3(tmp_path / "b.d3")
    for name in a.tensors:
        np.testing.assert_allclose(a.tensors[name], b.tensors[name], rtol=0, atol=1e-6, err_msg=name)


def _checkpoint_iteration(path) -> int:
    import json as json_

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json_.loads(f.metadata()["d3fmt_checkpoint"])["iteration"]
    except Exception:  # being replaced right now
        return 0
