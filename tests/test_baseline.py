"""Same-bytes random-subset and full-data baselines (d3fmt.baseline, `d3 baseline`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from d3fmt.baseline import (
    choose_random_subset,
    decode_png,
    png_bytes,
    save_subset,
)
from d3fmt.cli import main
from d3fmt.errors import ConfigError, SourceError
from d3fmt.format import budget_bytes
from d3fmt.sources import open_source

FAST = ["--epochs", "1", "--width", "16", "--device", "cpu", "-q", "--json"]


@pytest.fixture(scope="module")
def digits_train():
    src = open_source("digits")
    x, y = src.load("train")
    return src, x, y


def class_orders(y, num_classes, seed):
    """The documented pick order: class c shuffled by default_rng([seed, c])."""
    return [np.random.default_rng([seed, c]).permutation(np.flatnonzero(y == c)) for c in range(num_classes)]


def test_budget_is_b_k_c_h_w_4_bytes():
    assert budget_bytes(10, 10, (1, 28, 28)) == 313_600
    assert budget_bytes(0.5, 4, (3, 8, 8)) == 1536


@pytest.mark.parametrize("budget", [1, 2.5, 10])
def test_random_subset_fits_and_one_more_per_class_would_not(digits_train, budget):
    src, x, y = digits_train
    cap = budget_bytes(budget, 10, src.info.image_shape)
    sub = choose_random_subset(x, y, 10, cap, seed=7)
    n = sub.per_class
    assert n >= 1
    assert np.array_equal(np.bincount(sub.labels, minlength=10), np.full(10, n))  # balanced
    assert sub.used_bytes == sum(len(p) for p in sub.png) <= cap
    orders = class_orders(y, 10, 7)
    assert np.array_equal(sub.indices, np.concatenate([o[:n] for o in orders]))
    # the PNG bytes are Pillow's encoding of those very images
    assert all(p == png_bytes(x[i]) for i, p in zip(sub.indices, sub.png))
    one_more = sub.used_bytes + sum(len(png_bytes(x[o[n]])) for o in orders)
    assert sub.next_bytes == one_more > cap


def test_random_subset_is_deterministic_nested_and_seeded(digits_train):
    src, x, y = digits_train
    cap = budget_bytes(3, 10, src.info.image_shape)
    a = choose_random_subset(x, y, 10, cap, seed=0)
    b = choose_random_subset(x, y, 10, cap, seed=0)
    assert np.array_equal(a.indices, b.indices) and a.png == b.png
    assert not np.array_equal(a.indices, choose_random_subset(x, y, 10, cap, seed=1).indices)
    big = choose_random_subset(x, y, 10, 2 * cap, seed=0)
    assert big.per_class > a.per_class
    for c in range(10):  # a larger budget extends each class's pick
        assert set(a.indices[a.labels == c]) <= set(big.indices[big.labels == c])


def test_a_class_running_out_stops_the_subset():
    x = np.random.default_rng(0).integers(0, 255, (7, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    sub = choose_random_subset(x, y, 2, 10**9)
    assert sub.per_class == 3 and sub.next_bytes is None


def test_png_round_trip_grey_and_rgb():
    rng = np.random.default_rng(0)
    for c in (1, 3):
        img = rng.integers(0, 256, (c, 5, 6), dtype=np.uint8)
        data = png_bytes(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(decode_png(data, c), img)


def test_saved_subset_is_an_imagefolder_of_exactly_the_counted_bytes(digits_train, tmp_path):
    src, x, y = digits_train
    sub = choose_random_subset(x, y, 10, budget_bytes(2, 10, src.info.image_shape))
    out = save_subset(sub, src.info.class_names, tmp_path / "subset")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 10 * sub.per_class
    assert sum(f.stat().st_size for f in files) == sub.used_bytes
    again = open_source(str(out), holdout=0)
    assert again.info.num_classes == 10 and again.info.num_train == 10 * sub.per_class


def test_cli_random_baseline_reports_subset_and_accuracy(tmp_path):
    res = CliRunner().invoke(main, ["baseline", "random", "digits", "--budget", "2", "--runs", "2",
                                    "--out", str(tmp_path / "png"), *FAST])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["kind"] == "random" and out["max_bytes"] == 2 * 10 * 64 * 4
    assert out["bytes"] <= out["max_bytes"] < out["next_bytes"]
    assert out["train_images"] == 10 * out["images_per_class"]
    assert out["test_set"].startswith("digits test split (359")  # digits' held-out part
    ev = out["evaluation"]
    assert ev["runs"] == 2 and 0 <= ev["accuracy"] <= 1 and "final model" in ev["protocol"]
    assert len(list((tmp_path / "png").rglob("*.png"))) == out["train_images"]


def test_cli_full_baseline_trains_on_everything_and_tests_on_the_holdout():
    res = CliRunner().invoke(main, ["baseline", "full", "digits", "--test", "digits", *FAST])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["kind"] == "full" and out["train_images"] == 1438
    assert "held-out" in out["test_set"] and "359 images" in out["test_set"]  # never the training images
    assert out["bytes"] > 100_000


def test_cli_baseline_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["baseline", "random", "digits", "--budget", "0.01", *FAST])
    assert res.exit_code == ConfigError.exit_code and res.output.startswith("Error: not even one PNG per class fits")
    res = CliRunner().invoke(main, ["baseline", "random", "digits", "--budget", "-1", *FAST])
    assert res.exit_code == ConfigError.exit_code and res.output.startswith("Error: --budget must be > 0")
    res = CliRunner().invoke(main, ["baseline", "full", str(tmp_path / "nope"), *FAST])
    assert res.exit_code == SourceError.exit_code and res.output.startswith("Error:") and "Traceback" not in res.output
