"""Same-bytes random-subset and full-data baselines (d3fmt.evaluation.baseline, `d3 baseline`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from d3fmt.cli import main
from d3fmt.errors import ConfigError, SourceError
from d3fmt.evaluation.baseline import random_subset, save_subset
from d3fmt.evaluation.codecs import decode_png, label_bytes, png_bytes
from d3fmt.format import Budget
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


@pytest.mark.parametrize("budget", [1, 2.5, 10])
def test_random_subset_fits_and_one_more_per_class_would_not(digits_train, budget):
    src, x, y = digits_train
    cap = Budget.of(10, src.info.image_shape, budget=budget).max_bytes
    sub = random_subset(x, y, 10, cap, seed=7)
    n = sub.per_class
    assert n >= 1
    assert np.array_equal(np.bincount(y[sub.indices], minlength=10), np.full(10, n))  # balanced
    files = sub.encoded.blobs
    assert sub.bytes == sum(len(p) for p in files) + len(label_bytes(np.repeat(np.arange(10), n), 10)) <= cap
    orders = class_orders(y, 10, 7)
    assert np.array_equal(sub.indices, np.concatenate([o[:n] for o in orders]))
    # the PNG bytes are Pillow's encoding of those very images
    assert all(p == png_bytes(x[i]) for i, p in zip(sub.indices, files))
    one_more = sum(len(png_bytes(x[i])) for o in orders for i in o[:n + 1])
    assert sub.next_bytes == one_more + len(label_bytes(np.repeat(np.arange(10), n + 1), 10)) > cap


def test_random_subset_is_deterministic_nested_and_seeded(digits_train):
    src, x, y = digits_train
    cap = Budget.of(10, src.info.image_shape, budget=3).max_bytes
    a = random_subset(x, y, 10, cap, seed=0)
    b = random_subset(x, y, 10, cap, seed=0)
    assert np.array_equal(a.indices, b.indices) and a.encoded.blobs == b.encoded.blobs
    assert not np.array_equal(a.indices, random_subset(x, y, 10, cap, seed=1).indices)
    big = random_subset(x, y, 10, 2 * cap, seed=0)
    assert big.per_class > a.per_class
    for c in range(10):  # a larger budget extends each class's pick
        assert set(a.indices[y[a.indices] == c]) <= set(big.indices[y[big.indices] == c])


def test_a_class_running_out_stops_the_subset():
    x = np.random.default_rng(0).integers(0, 255, (7, 1, 4, 4), dtype=np.uint8)
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    sub = random_subset(x, y, 2, 10**9)
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
    sub = random_subset(x, y, 10, Budget.of(10, src.info.image_shape, budget=2).max_bytes)
    out = save_subset(sub, src.info.class_names, tmp_path / "subset")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 10 * sub.per_class
    assert sum(f.stat().st_size for f in files) == sum(len(p) for p in sub.encoded.blobs)
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
    assert res.exit_code == ConfigError.exit_code and res.output.startswith("Error: budget must be > 0")
    res = CliRunner().invoke(main, ["baseline", "full", str(tmp_path / "nope"), *FAST])
    assert res.exit_code == SourceError.exit_code and res.output.startswith("Error:") and "Traceback" not in res.output


# --- the codec family: d3 baseline codecs, d3 eval --compare -------------------------------------------------

STEPS = ["--steps", "2", "--width", "8", "--device", "cpu", "-q"]


def test_cli_codecs_table_names_every_codec_and_the_best():
    res = CliRunner().invoke(main, ["baseline", "codecs", "digits", "--budget", "2", "--codecs", "png,post3,jpeg-q75",
                                    *STEPS])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("codecs at 5,120 bytes, convnet-8, 2 steps")
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert list(rows) == ["png", "post3", "jpeg-q75"]
    assert sum("<- best" in line for line in lines) == 1
    assert any(line.startswith("best: ") for line in lines) and "2 steps" in lines[-1]


def test_cli_codecs_json_counts_exact_bytes_and_trains_the_decoded_subset(digits_train):
    from d3fmt.evaluation.codecs import decode, fit_subset

    src, x, y = digits_train
    res = CliRunner().invoke(main, ["baseline", "codecs", "digits", "--max-bytes", "6000", "--codecs",
                                    "png,down2-8bit", "--runs", "2", "--json", *STEPS])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["kind"] == "codecs" and out["max_bytes"] == 6000
    by_name = {c["codec"]: c for c in out["codecs"]}
    assert out["best"] == max(by_name.values(), key=lambda c: c["evaluation"]["accuracy"])["codec"]
    for name, c in by_name.items():
        fit = fit_subset(name, x, y, 10, 6000)  # the library's answer, independently
        assert c["images_per_class"] == fit.per_class and c["bytes"] == fit.bytes <= 6000 < c["next_bytes"]
        ev = c["evaluation"]
        assert ev["runs"] == 2 and ev["steps"] == 2 and ev["train_images"] == 10 * fit.per_class
        assert len(decode(fit.encoded)[1]) == ev["train_images"]
    assert by_name["png"]["images_per_class"] < by_name["down2-8bit"]["images_per_class"]


def test_codecs_library_returns_a_result_per_codec(digits_train):
    from d3fmt.evaluation.baseline import BaselineConfig, run_codecs
    from d3fmt.evaluation.evaluate import EvalConfig

    cfg = BaselineConfig(source="digits", budget=1, evaluation=EvalConfig(steps=1, width=8))
    seen = []
    result = run_codecs(cfg, ["post2", "webp-q30"], on_codec=seen.append)
    assert seen == ["post2", "webp-q30"] and [r.codec for r in result.results] == seen
    assert result.max_bytes == 2560 and all(r.bytes <= 2560 and r.evaluation.steps == 1 for r in result.results)
    assert result.best in result.results
    rec = result.best.compare_record()
    assert set(rec) == {"codec", "images_per_class", "bytes", "accuracy", "std", "runs"}


def test_cli_codecs_errors_are_one_line():
    cases = [
        (["--budget", "1", "--codecs", "png,gif"], "Error: unknown codec 'gif'; choose from png, zstd"),
        (["--max-bytes", "50"], "Error: not even one image per class fits in 50 bytes with any of"),
        (["--budget", "1", "--max-bytes", "100"], "Error: give exactly one of budget B"),
        ([], "Error: give exactly one of budget B"),
        (["--max-bytes", "0"], "Error: max_bytes must be a positive byte count"),
        (["--budget", "1", "--steps", "0"], "Error: --steps must be at least 1"),
    ]
    for args, start in cases:
        res = CliRunner().invoke(main, ["baseline", "codecs", "digits", *args, *STEPS[2:]])
        assert res.exit_code == ConfigError.exit_code and res.output.startswith(start), (args, res.output)
        assert len(res.output.strip().splitlines()) == 1


def digits_file(tmp_path, source_hash=None):
    """A tiny .d3 file (random decoder) that records `digits` as its source."""
    from d3fmt.format import write_d3
    from d3fmt.loader.example import random_container

    container = random_container(num_classes=10, image_shape=(1, 8, 8), z_dim=4, width=8, latents_per_class=1,
                                 samples_per_class=4)
    container.header["provenance"].update(
        source="digits", source_hash=source_hash or open_source("digits").info.content_hash,
        settings={"source": "digits", "seed": 0})
    path = tmp_path / "digits.d3"
    write_d3(path, container)
    return path


def test_cli_eval_compare_records_the_best_codec_and_inspect_shows_the_margin(tmp_path):
    from d3fmt.format import D3Reader

    path = digits_file(tmp_path)
    size = path.stat().st_size
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--compare", "--compare-codecs",
                                    "png,post3", "--runs", "2", *STEPS])
    assert res.exit_code == 0, res.output
    assert f"same {size:,} bytes as real images:" in res.output
    with D3Reader(path) as r:
        r.verify()
        (rec,) = r.header["evals"]
    cmp = rec["compare"]
    assert cmp["codec"] in ("png", "post3") and cmp["runs"] == 2 and 0 < cmp["bytes"] <= size
    assert rec["steps"] == 2 and "held-out" in rec["test_set"]  # the split pack held out, for both
    margin = f"{100 * (rec['accuracy'] - cmp['accuracy']):+.1f} points over the best same-bytes codec, " \
             f"{cmp['codec']}, {cmp['images_per_class']} images/class"
    assert margin in res.output
    shown = CliRunner().invoke(main, ["inspect", str(path)])
    assert shown.exit_code == 0 and margin in shown.output
    summary = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
    assert summary["evals"][0]["compare"] == cmp


def test_cli_eval_compare_json_and_no_record(tmp_path):
    path = digits_file(tmp_path)
    before = path.read_bytes()
    res = CliRunner().invoke(main, ["eval", str(path), "--test", "digits", "--compare", "--compare-codecs", "zstd",
                                    "--no-record", "--json", *STEPS])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["compare"]["codec"] == "zstd" and out["recorded"] is False
    assert out["margin_points"] == pytest.approx(100 * (out["accuracy"] - out["codecs"][0]["evaluation"]["accuracy"]))
    assert path.read_bytes() == before


def test_cli_eval_compare_errors_are_one_line(tmp_path):
    moved = digits_file(tmp_path, source_hash="f" * 16)  # the recorded data changed since
    cases = [
        (["--compare"], "Error: digits is not the data"),
        (["--compare-codecs", "png"], "Error: --compare-codecs and --source only apply with --compare"),
        (["--compare", "--compare-codecs", "bmp", "--source", "digits"], "Error: unknown codec 'bmp'"),
    ]
    for args, start in cases:
        res = CliRunner().invoke(main, ["eval", str(moved), "--test", "digits", *args, *STEPS])
        assert res.exit_code == ConfigError.exit_code and res.output.startswith(start), (args, res.output)
        assert len(res.output.strip().splitlines()) == 1


def test_compare_records_validate_and_old_records_stay_valid(tmp_path):
    from d3fmt.errors import FormatError
    from d3fmt.format import append_eval

    path = digits_file(tmp_path)
    base = {"model": "convnet-8", "protocol": "p", "test_set": "t", "accuracy": 0.5, "std": 0.0, "runs": 1,
            "epochs": 3, "date": "2026-01-01T00:00:00Z"}
    append_eval(path, base)  # no compare: valid as before
    good = {"codec": "post3", "images_per_class": 25, "bytes": 31_000, "accuracy": 0.6, "std": 0.01, "runs": 2}
    append_eval(path, {**base, "steps": 100, "compare": good})
    for bad in ({**good, "images_per_class": 0}, {k: v for k, v in good.items() if k != "codec"},
                {**good, "accuracy": 1.5}):
        with pytest.raises(FormatError, match="compare"):
            append_eval(path, {**base, "compare": bad})
    shown = CliRunner().invoke(main, ["inspect", str(path)])
    assert "-10.0 points over the best same-bytes codec, post3, 25 images/class" in shown.output
