"""The labelling teacher stored in a .d3 file (d3fmt.models.teacher): format, loader, evaluation, pack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import d3fmt
from d3fmt.cli import main
from d3fmt.distill.budget import MAX_AUTO_TEACHER_WIDTH, TEACHER_SHARE, fit_teacher, teacher_bytes
from d3fmt.errors import ConfigError, FormatError
from d3fmt.evaluation.evaluate import label_mode
from d3fmt.format import D3Reader, encode_d3, read_d3, write_d3
from d3fmt.loader.dataset import SampleOptions, decode_items, make_plan
from d3fmt.loader.example import random_container
from d3fmt.loader.representation import Representation
from d3fmt.models.convnet import ConvNet
from d3fmt.models.teacher import (
    TeacherConfig,
    attach_teacher,
    build_teacher,
    teacher_config,
    teacher_param_shapes,
)


def container_with_teacher(width=8, temperature=1.0, num_classes=4, shape=(1, 8, 8)):
    c = random_container(num_classes=num_classes, image_shape=shape)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = ConvNet(teacher_config(shape[0], num_classes, shape[1], width))
    attach_teacher(c, model, temperature)
    return c, model


def test_param_shapes_match_the_module():
    for c, k, side, width in ((1, 10, 28, 16), (3, 7, 32, 5), (1, 4, 8, 8)):
        cfg = teacher_config(c, k, side, width)
        assert teacher_param_shapes(cfg) == {n: tuple(t.shape) for n, t in ConvNet(cfg).state_dict().items()}


def test_teacher_round_trips_through_a_file_as_format_1_1(tmp_path):
    c, model = container_with_teacher(temperature=2.0)
    path = tmp_path / "t.d3"
    write_d3(path, c)
    with D3Reader(path) as r:
        assert r.preamble.minor == 1
        r.verify()
        rebuilt, temperature = build_teacher(r.header["teacher"], r.tensor, num_classes=4, image_shape=(1, 8, 8))
    assert temperature == 2.0
    x = torch.randn(5, 1, 8, 8)
    # stored in int8 / float16: close to the trained teacher, not equal
    assert torch.allclose(rebuilt(x), model.eval()(x), atol=0.05)
    plain = tmp_path / "plain.d3"
    write_d3(plain, random_container(num_classes=4, image_shape=(1, 8, 8)))
    with D3Reader(plain) as r:
        assert r.preamble.minor == 0 and "teacher" not in r.header


def test_stream_labels_every_sample_with_the_teacher_alone_or_batched(tmp_path):
    c, _ = container_with_teacher()
    path = tmp_path / "t.d3"
    write_d3(path, c)
    ds = d3fmt.D3Dataset(path, samples_per_class=6, labels="teacher")
    batch = ds.__getitems__(list(range(len(ds))))
    for i in (0, 7, 23):
        image, label = ds[i]
        assert label.shape == (4,) and abs(float(label.sum()) - 1) < 1e-5
        assert torch.allclose(label, batch[i][1], atol=1e-5) and torch.allclose(image, batch[i][0], atol=1e-5)
    # the label is the teacher's softmax on that very (normalised) image
    rep = Representation.from_container(read_d3(path))
    mean, std = rep.normalization
    model, t = rep.teacher
    x = (batch[3][0][None] - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.allclose(torch.softmax(model(x) / t, 1)[0], batch[3][1], atol=1e-5)
    labels = torch.stack([b[1] for b in batch])
    assert labels.std(0).sum() > 0  # samples differ, so do their labels (not one label per prior)


def test_label_modes_resolve_and_refuse_clearly(tmp_path):
    c, _ = container_with_teacher()
    rep = Representation.from_container(c)
    assert label_mode(rep, "auto") == "teacher" and label_mode(rep, "hard") == "hard"
    plain = Representation.from_container(random_container(num_classes=4, image_shape=(1, 8, 8)))
    assert label_mode(plain, "auto") == "hard"
    with pytest.raises(ConfigError, match="stores no teacher"):
        label_mode(plain, "teacher")
    with pytest.raises(ConfigError, match="stores no teacher"):
        make_plan(plain, SampleOptions(labels="teacher"))
    plan = make_plan(rep, SampleOptions(samples_per_class=3, labels="teacher"))
    _, labels = decode_items(rep, plan, SampleOptions(samples_per_class=3, labels="teacher"), torch.arange(12))
    assert labels.shape == (12, 4)


def _mangle(container, edit):
    edit(container)
    return container


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.header["teacher"]["tensors"].update({"classifier.bias": "nope"}), "missing section"),
    (lambda c: c.header["teacher"]["config"].update({"num_classes": 5}), "does not match"),
    (lambda c: c.header["teacher"].update({"temperature": 0}), "temperature"),
    (lambda c: c.header["teacher"]["tensors"].pop("classifier.bias"), "not those of its config"),
    (lambda c: c.tensors.update({"teacher.classifier.bias": np.zeros(3, np.float32)}), "shape"),
])
def test_hostile_teachers_are_refused_with_a_format_error(tmp_path, edit, message):
    c, _ = container_with_teacher()
    edit(c)
    path = tmp_path / "bad.d3"
    try:
        path.write_bytes(encode_d3(c))
    except FormatError as exc:  # the writer refuses what the reader would refuse
        assert message in str(exc) or "teacher" in str(exc)
        return
    with pytest.raises(FormatError, match=message):
        d3fmt.D3Dataset(path, labels="teacher")


def test_fitter_sizes_the_teacher_within_its_share():
    for shape, cap in (((1, 8, 8), 25_600), ((1, 28, 28), 31_360), ((1, 28, 28), 313_600), ((3, 32, 32), 10_000_000)):
        w = fit_teacher(10, shape, cap, None)
        assert 4 <= w <= MAX_AUTO_TEACHER_WIDTH
        assert teacher_bytes(10, shape, w) <= TEACHER_SHARE * cap
        assert w == MAX_AUTO_TEACHER_WIDTH or teacher_bytes(10, shape, w + 1) > TEACHER_SHARE * cap
    assert fit_teacher(10, (1, 28, 28), 2_000, None) == 0  # nothing fits: no teacher
    assert fit_teacher(10, (1, 28, 28), 31_360, 7) == 7  # given explicitly


def test_teacher_bytes_bound_the_real_cost():
    for width in (4, 15, 40):
        c = random_container(num_classes=10, image_shape=(1, 28, 28))
        base = len(encode_d3(c))
        attach_teacher(c, ConvNet(teacher_config(1, 10, 28, width)), 1.0)
        assert len(encode_d3(c)) - base <= teacher_bytes(10, (1, 28, 28), width)


def test_teacher_config_validates():
    with pytest.raises(ConfigError, match="teacher-width"):
        TeacherConfig(width=-1)
    with pytest.raises(ConfigError, match="teacher-epochs"):
        TeacherConfig(width=4, epochs=0)


FAST = ["--iterations", "2", "--experts", "1", "--expert-epochs", "2", "--match-epochs", "1", "--syn-steps", "2", "--convnet-width", "8",
        "--pretrain-steps", "10", "--teacher-epochs", "1", "--device", "cpu", "-q"]


@pytest.mark.slow
def test_pack_stores_a_teacher_that_labels_the_eval_stream(tmp_path):
    out = tmp_path / "t.d3"
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(out), "--budget", "10", "--teacher-width", "6",
                                    "--eval-epochs", "2", "--work-dir", str(tmp_path / "w"), *FAST])
    assert res.exit_code == 0, res.output
    with D3Reader(out) as r:
        h = r.header
        assert h["teacher"]["config"]["width"] == 6 and h["budget"]["choices"]["teacher_width"] == 6
        assert r.file_bytes <= h["budget"]["max_bytes"]
        assert "labels teacher" in h["evals"][0]["protocol"]
    text = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "labels teacher (convnet, width 6" in text
    none = tmp_path / "none.d3"
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(none), "--budget", "10", "--teacher-width", "0",
                                    "--no-eval", "--work-dir", str(tmp_path / "w"), *FAST])
    assert res.exit_code == 0, res.output
    assert "teacher" not in read_d3(none).header


def test_pack_refuses_a_bad_teacher_width(tmp_path):
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(tmp_path / "x.d3"), "--budget", "10",
                                    "--teacher-width", "-3", *FAST])
    assert res.exit_code != 0 and "teacher-width" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_pack_compare_records_the_best_same_bytes_codec(tmp_path):
    out = tmp_path / "c.d3"
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(out), "--budget", "10", "--teacher-width", "0",
                                    "--eval-epochs", "2", "--compare", "--work-dir", str(tmp_path / "w"), *FAST])
    assert res.exit_code == 0, res.output
    rec = read_d3(out).header["evals"][0]
    assert rec["compare"]["images_per_class"] >= 1 and rec["compare"]["bytes"] <= read_d3(out).header["budget"]["max_bytes"]
    assert "over the best same-bytes codec" in CliRunner().invoke(main, ["inspect", str(out)]).output
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(out), "--budget", "10", "--no-eval", "--compare", *FAST])
    assert res.exit_code == ConfigError.exit_code and "drop --no-eval" in res.output


def test_teacher_width_option_parses_auto_and_defaults_to_none():
    from d3fmt.distill.settings import pack_config
    from d3fmt.models.teacher import AUTO_TEACHER

    assert pack_config("digits", "x.d3", budget=10).teacher_width == 0  # off by default
    assert pack_config("digits", "x.d3", budget=10, teacher_width=AUTO_TEACHER).teacher_width == AUTO_TEACHER
    res = CliRunner().invoke(main, ["pack", "digits", "-o", "x.d3", "--budget", "10", "--teacher-width", "wide"])
    assert res.exit_code == 2 and "neither auto nor a width" in res.output


@pytest.mark.parametrize("n", [20, 600])
def test_teacher_progress_total_counts_its_passes(n):
    """The teacher's progress bar has a total: the number of progress calls train_teacher makes."""
    from d3fmt.distill.labels import teacher_passes, train_teacher
    from d3fmt.models.teacher import TeacherConfig

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), np.arange(n) % 2
    cfg = TeacherConfig(width=4, epochs=2, batch=256)
    calls = []
    train_teacher(x, y, 2, [0.5], [0.25], cfg, progress=lambda epoch, loss: calls.append(epoch))
    assert len(calls) == teacher_passes(n, cfg) == {20: 1000, 600: 334}[n]
