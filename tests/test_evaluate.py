"""`d3 eval` and d3fmt.evaluation.evaluate: fresh models on the decoded stream, final model, records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import d3fmt
from d3fmt.cli import main
from d3fmt.errors import ConfigError, FormatError
from d3fmt.evaluation import evaluate
from d3fmt.evaluation.evaluate import (
    EvalConfig,
    StreamEpochs,
    batch_bounds,
    evaluate_real,
    evaluate_representation,
    load_test_set,
)
from d3fmt.format import D3Reader, append_eval, write_d3
from d3fmt.loader.example import random_container
from d3fmt.loader.representation import Representation
from d3fmt.sources import open_source

FAST = ["--epochs", "2", "--width", "16", "--device", "cpu", "-q"]


def digits_like(tmp_path, name="digits.d3", num_classes=10, lr=0.02, **kw):
    """A tiny file shaped like a distilled `digits` file (random decoder), learned lr stored."""
    kw = {"image_shape": (1, 8, 8), "z_dim": 8, "width": 16, "latents_per_class": 2, "soft": True,
          "samples_per_class": 4, **kw}
    container = random_container(num_classes=num_classes, **kw)
    container.header["train"] = {"lr": lr}
    path = tmp_path / name
    write_d3(path, container)
    return path


@pytest.fixture(scope="module")
def digits():
    src = open_source("digits")
    return src, *src.load("test")


def section_bytes(path) -> dict:
    with D3Reader(path) as r:
        return {s.name: r.stored_bytes(s.name) for s in r.sections}


def test_cli_eval_trains_records_and_inspect_shows_it(tmp_path):
    path = digits_like(tmp_path)
    before = section_bytes(path)
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--runs", "2", "--json", *FAST])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["runs"] == 2 and len(out["accuracies"]) == 2 and 0 <= out["accuracy"] <= 1
    assert out["lr"] == pytest.approx(0.02)  # the learned lr stored in the file
    assert out["test_set"].startswith("all of digits (1797")  # not the data it came from: all of it
    with D3Reader(path) as r:
        r.verify()
        (rec,) = r.header["evals"]
        assert r.header["budget"]["bytes_used"] == r.file_bytes
    assert rec["model"] == "convnet-16" and rec["runs"] == 2 and rec["epochs"] == 2
    assert rec["accuracy"] == pytest.approx(out["accuracy"], abs=1e-6)
    assert section_bytes(path) == before  # tensors copied byte for byte
    shown = CliRunner().invoke(main, ["inspect", str(path)])
    assert shown.exit_code == 0 and "convnet-16 on all of digits" in shown.output
    assert f"{100 * rec['accuracy']:.2f}%" in shown.output


def test_records_accumulate_and_survive_a_rewrite(tmp_path):
    path = digits_like(tmp_path)
    append_eval(path, {"model": "convnet", "protocol": "p", "test_set": "t", "accuracy": 0.5, "std": 0.0,
                       "runs": 1, "epochs": 1, "date": "2025-01-01T00:00:00Z"})
    tensors = section_bytes(path)
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", *FAST])
    assert res.exit_code == 0, res.output
    assert "recorded in" in res.output
    with D3Reader(path) as r:
        r.verify()  # every hash still valid after the atomic rewrite
        evals = r.header["evals"]
    assert evals[0]["test_set"] == "t" and len(evals) == 2
    assert section_bytes(path) == tensors
    assert len(d3fmt.D3Dataset(path)) == 10 * 4  # still a working file


def test_no_record_leaves_the_file_untouched(tmp_path):
    path = digits_like(tmp_path)
    before = path.read_bytes()
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--no-record", *FAST])
    assert res.exit_code == 0, res.output
    assert path.read_bytes() == before


def test_eval_refuses_a_test_source_with_another_class_count(tmp_path):
    path = digits_like(tmp_path, num_classes=4)
    before = path.read_bytes()
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", *FAST])
    assert res.exit_code == ConfigError.exit_code
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: test source digits has 10 classes")
    assert "Traceback" not in res.output
    assert path.read_bytes() == before


def test_bad_options_are_one_line_errors(tmp_path):
    path = digits_like(tmp_path)
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--epochs", "0", "-q"])
    assert res.exit_code == ConfigError.exit_code and res.output.startswith("Error: --epochs must be at least 1")
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "missing.d3"), "--test", "digits", "-q"])
    assert res.exit_code == FormatError.exit_code and res.output.startswith("Error:") and "Traceback" not in res.output


def test_reported_accuracy_is_the_final_models_and_the_test_set_is_seen_once(tmp_path, digits, monkeypatch):
    _, tx, ty = digits
    path = digits_like(tmp_path)
    events = []
    real_test = evaluate.test_accuracy

    def counting(model, *args, **kw):
        events.append("test")
        return real_test(model, *args, **kw)

    monkeypatch.setattr(evaluate, "test_accuracy", counting)
    cfg = EvalConfig(epochs=3, runs=2, width=16, keep_models=True)
    with D3Reader(path) as r:
        rep = Representation.from_reader(r)
    result = evaluate_representation(rep, tx, ty, cfg, progress=lambda run, epoch, loss: events.append(epoch))
    # each run: all its epochs, then exactly one test of the final model
    assert events == [0, 1, 2, "test", 0, 1, 2, "test"]
    assert len(result.models) == 2
    mean, std = rep.normalization
    again = [real_test(m, tx, ty, mean, std, "cpu") for m in result.models]
    assert again == result.accuracies
    assert result.mean == pytest.approx(np.mean(again)) and result.std == pytest.approx(np.std(again))


def test_same_seed_same_accuracy_other_seed_other_models(tmp_path, digits):
    _, tx, ty = digits
    with D3Reader(digits_like(tmp_path)) as r:
        rep = Representation.from_reader(r)
    runs = [evaluate_representation(rep, tx, ty, EvalConfig(epochs=2, width=16, seed=s, keep_models=True))
            for s in (0, 0, 1)]
    assert runs[0].accuracies == runs[1].accuracies
    w = [next(m.parameters()).detach() for m in (runs[0].models[0], runs[1].models[0], runs[2].models[0])]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_stream_is_the_loader_stream_with_fresh_samples_each_epoch(tmp_path):
    path = digits_like(tmp_path)
    with D3Reader(path) as r:
        rep = Representation.from_reader(r)
    stream = StreamEpochs(rep, EvalConfig(samples_per_class=6), seed=3)
    x0, t0 = stream(0)
    x1, _ = stream(1)
    assert x0.shape == (60, 1, 8, 8) and t0.shape == (60, 10)  # soft labels: one vector per item
    ds = d3fmt.D3Dataset(path, 6, seed=3, epoch=0, labels="soft", include_means=True, normalize=True)
    image, label = ds[7]
    assert torch.allclose(x0[7], image, atol=1e-5) and torch.allclose(t0[7], label)
    means = torch.tensor([j % 6 < 2 for j in range(60)])  # slots < L are the prior means
    assert torch.allclose(x0[means], x1[means], atol=1e-6)
    assert (x0[~means] - x1[~means]).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # fresh draws


def test_hard_labels_and_resnet18(tmp_path, digits):
    _, tx, ty = digits
    with D3Reader(digits_like(tmp_path)) as r:
        rep = Representation.from_reader(r)
    cfg = EvalConfig(model="resnet18", epochs=1, labels="hard", samples_per_class=2)
    result = evaluate_representation(rep, tx[:50], ty[:50], cfg)
    assert result.model == "resnet18" and "labels hard" in result.protocol
    with D3Reader(digits_like(tmp_path, "hard.d3", soft=False)) as r:
        hard_only = Representation.from_reader(r)
    with pytest.raises(ConfigError, match="soft labels"):
        evaluate_representation(hard_only, tx, ty, EvalConfig(labels="soft"))


def test_narrow_resnet18_is_named_by_its_width():
    from d3fmt.evaluation.evaluate import build_model

    assert EvalConfig(model="resnet18").width == 64 and EvalConfig().width == 128
    narrow = EvalConfig(model="resnet18", width=8)
    assert narrow.model_name == "resnet18-w8" and EvalConfig(model="resnet18").model_name == "resnet18"
    net = build_model(narrow, 1, 10, 28)
    assert net.stem[0].out_channels == 8 and net.classifier.in_features == 64
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_real_training_learns_digits(digits):
    src, tx, ty = digits
    x, y = src.load("train")
    result = evaluate_real(x[:300], y[:300], tx, ty, 10, [0.3], [0.4],
                           EvalConfig(epochs=3, width=16, batch_size=50, lr=0.03, dsa="crop_flip"))
    assert result.mean > 0.3  # chance is 0.1
    assert "300 real images" in result.protocol


def test_test_set_resolution(digits):
    src = digits[0]
    train_x, _ = src.load("train")
    held = load_test_set("digits", (1, 8, 8), 10, train_hash=src.info.content_hash)
    assert len(held.y) == 359 and "held-out" in held.name  # the split `d3 pack digits` held out
    seen = {a.tobytes() for a in train_x}
    assert sum(a.tobytes() in seen for a in held.x) < 10  # (digits has a few duplicate images)
    assert len(load_test_set("digits", (1, 8, 8), 10).y) == 1797  # foreign data: all of it
    big = load_test_set("digits", (1, 16, 16), 10)
    assert big.x.shape == (1797, 1, 16, 16)  # resized to the file's size
    with pytest.raises(ConfigError, match="channel"):
        load_test_set("digits", (3, 8, 8), 10)


def test_batches_never_hold_a_single_sample():
    for n in range(1, 600):
        bounds = batch_bounds(n, 256)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(b - a <= 256 and (b - a >= 2 or n == 1) for a, b in bounds)


def test_test_accuracy_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # predicts class 1 for every image
            return torch.tensor([[0.0, 1.0]]).repeat(x.shape[0], 1)

    x = np.zeros((4, 1, 2, 2), np.uint8)
    assert evaluate.test_accuracy(Fixed(), x, np.array([1, 1, 0, 1]), [0.5], [0.5], "cpu", batch_size=3) == 0.75


def record_sgd_steps(monkeypatch) -> list[float]:
    """The learning rate of every SGD step taken from now on."""
    lrs = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return lrs


def test_steps_give_stream_and_real_subset_the_same_sgd_steps(tmp_path, digits, monkeypatch):
    src, tx, ty = digits
    x, y = src.load("train")
    with D3Reader(digits_like(tmp_path)) as r:
        rep = Representation.from_reader(r)  # 10 classes x 4 samples = 40 items per pass
    cfg = EvalConfig(steps=10, batch_size=16, width=16, lr=0.05)
    lrs = record_sgd_steps(monkeypatch)
    passes = []
    stream = evaluate_representation(rep, tx[:50], ty[:50], cfg, progress=lambda run, e, loss: passes.append(e))
    assert lrs == [0.05] * 5 + [pytest.approx(0.005)] * 5  # 10 steps, lr / 10 at half the steps
    assert passes == [0, 1, 2, 3]  # 3 batches a pass: 4 passes, each one drawing fresh samples
    assert stream.steps == 10 and stream.epochs == 4 and "10 steps (4 passes of 40)" in stream.protocol
    lrs.clear()
    real = evaluate_real(x[:100], y[:100], tx[:50], ty[:50], 10, [0.3], [0.4], cfg)
    assert len(lrs) == 10 and real.epochs == 2 and "10 steps (2 passes of 100)" in real.protocol
    rec = real.record("t")
    assert rec["steps"] == 10 and rec["epochs"] == 2
    assert "steps" not in evaluate_real(x[:20], y[:20], tx[:5], ty[:5], 10, [0.3], [0.4],
                                        EvalConfig(epochs=1, width=8)).record("t")  # epoch-based: as before


def test_passes_follow_from_the_data_size():
    cfg = EvalConfig(steps=1000, batch_size=256)
    assert cfg.passes(60_000) == 5 and cfg.passes(256) == 1000 and cfg.passes(610) == 334  # 3 batches of 610
    assert EvalConfig(epochs=7).passes(123) == 7
    with pytest.raises(ConfigError, match="--steps must be at least 1"):
        EvalConfig(steps=0).validate()


def test_cli_eval_steps_are_recorded_and_shown(tmp_path):
    path = digits_like(tmp_path)
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--steps", "5", *FAST])
    assert res.exit_code == 0, res.output
    assert "5 steps (5 passes)" in res.output  # 40 items a pass at batch size 256: one step a pass
    with D3Reader(path) as r:
        (rec,) = r.header["evals"]
    assert rec["steps"] == 5
    shown = CliRunner().invoke(main, ["inspect", str(path)])
    assert "5 steps" in shown.output
