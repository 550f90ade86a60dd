"""Anchors (format 1.2): packing real images as context-coded levels, reading them back
through the loader, and the header rules a reader enforces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import d3fmt
from d3fmt.distill.anchors import AnchorConfig, AnchorPool, AnchorSource, anchor_container, fit_anchors
from d3fmt.errors import BudgetError, ConfigError, FormatError, LimitError
from d3fmt.evaluation.codecs import class_orders, posterize, subset_indices, unposterize
from d3fmt.format import D3Reader, encode_d3, write_d3
from d3fmt.format.budget import Budget
from d3fmt.loader.dataset import open_representation
from d3fmt.loader.representation import Representation
from d3fmt.models.convnet import ConvNet
from d3fmt.models.teacher import attach_teacher, teacher_config

BIG = Budget.of(3, (1, 8, 8), max_bytes=10**6)


def blobs(n_per_class: int, k: int = 3, side: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    x, y = [], []
    for c in range(k):
        for _ in range(n_per_class):
            cy, cx = rng.uniform(1, side - 1, 2)
            img = np.clip(255 * (1.3 - np.hypot(yy - cy, xx - cx) / (2 + c)), 0, 255)
            x.append(img[None].astype(np.uint8))
            y.append(c)
    return np.stack(x), np.array(y, np.int64)


def source(x, y, k=3, seed=0) -> AnchorSource:
    return AnchorSource(AnchorPool.of_arrays(x, y, k, seed), tuple(x.shape[1:]), [f"c{i}" for i in range(k)],
                        "blobs", "hash", [0.3] * x.shape[1], [0.3] * x.shape[1])


def test_fit_takes_the_most_anchors_that_fit_and_the_codec_family_pick():
    x, y = blobs(150)
    budget = Budget.of(3, (1, 8, 8), budget=3.0)
    fit = fit_anchors(source(x, y), AnchorConfig(bits=2), budget, {})
    assert 10 < fit.per_class < 150
    more = anchor_container(source(x, y), fit.per_class + 1, AnchorConfig(2), budget, {})[0]
    assert fit.file_bytes <= budget.max_bytes < len(encode_d3(more))
    rep = Representation.from_container(fit.container)
    want = subset_indices(class_orders(y, 3, 0), fit.per_class)  # the same images as the codec family's subset
    assert rep.anchors.pixels.dtype == torch.uint8  # held as stored, a quarter of float32's memory
    assert np.array_equal(rep.anchors.pixels.numpy(), unposterize(posterize(x[want], 2), 2))


def test_loader_yields_every_anchor_once_per_epoch_with_its_class(tmp_path):
    x, y = blobs(10)
    container, _ = anchor_container(source(x, y), 6, AnchorConfig(bits=3), BIG, {})
    path = tmp_path / "a.d3"
    write_d3(path, container)
    with D3Reader(path) as r:
        assert r.preamble.minor == 2
        r.verify()
    ds = d3fmt.D3Dataset(path)
    assert len(ds) == 18
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = [int(ds[i][1]) for i in range(len(ds))]
    assert labels == [0] * 6 + [1] * 6 + [2] * 6
    want = unposterize(posterize(x[subset_indices(class_orders(y, 3, 0), 6)], 3), 3)
    assert torch.equal((images * 255).round().to(torch.uint8), torch.from_numpy(want))
    # a sample does not depend on its batch, and epochs do not change anchors
    batch = ds.__getitems__([5, 0, 17])
    assert torch.equal(batch[0][0], ds[5][0]) and torch.equal(batch[2][0], ds[17][0])
    ds.set_epoch(3)
    assert torch.equal(ds[7][0], images[7])


def test_a_stored_teacher_labels_anchors_by_default(tmp_path):
    x, y = blobs(6)
    torch.manual_seed(0)
    model = ConvNet(teacher_config(1, 3, 8, 4)).eval()
    container, _ = anchor_container(source(x, y), 4, AnchorConfig(bits=2), BIG, {},
                                    lambda c: attach_teacher(c, model, 1.0))
    path = tmp_path / "t.d3"
    write_d3(path, container)
    image, label = d3fmt.D3Dataset(path)[0]
    assert label.shape == (3,) and abs(float(label.sum()) - 1) < 1e-5
    assert d3fmt.D3Dataset(path, labels="hard")[0][1] == 0
    with pytest.raises(ConfigError, match="soft labels"):
        d3fmt.D3Dataset(path, labels="soft")


def test_budget_too_small_for_one_anchor_is_a_budget_error():
    x, y = blobs(5)
    with pytest.raises(BudgetError, match="not even one anchor"):
        fit_anchors(source(x, y), AnchorConfig(bits=2), Budget.of(3, (1, 8, 8), max_bytes=300), {})


def test_bits_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="anchor-bits"):
        AnchorConfig(bits=5)


def _section(header: dict, name: str) -> dict:
    return next(s for s in header["sections"] if s["name"] == name)


def _valid():
    x, y = blobs(5)
    container, _ = anchor_container(source(x, y), 4, AnchorConfig(bits=2), BIG, {})
    return container


def _mutate(fn) -> bytes:
    """The valid file's header and stored sections, edited by ``fn(header, stored)``, laid out
    consistently (hashes, offsets, bytes_used) by the hostile corpus's crafting helper."""
    from test_format_hostile import craft

    data = encode_d3(_valid(), codec="raw", compress_header=False)
    stored_len = int.from_bytes(data[16:24], "little")
    header = json.loads(data[48:48 + stored_len])
    stored = {s["name"]: data[s["offset"]:s["offset"] + s["stored_bytes"]] for s in header["sections"]}
    fn(header, stored)
    return craft(header, stored, minor=2)


@pytest.mark.parametrize("mutation,err,match", [
    (lambda h, s: h["anchors"].update(counts=[4, 4]), FormatError, "counts for 2 classes"),
    (lambda h, s: h["anchors"].update(counts=[0, 0, 0]), FormatError, "no image"),
    (lambda h, s: h["anchors"].update(lanes=13), FormatError, "lanes"),
    (lambda h, s: h["anchors"].update(levels=17), FormatError, "17 is greater"),
    (lambda h, s: _section(h, "anchors.values").update(shape=[1, 3], raw_bytes=3) or s.update(
        {"anchors.values": b"\0\1\2"}), FormatError, "values"),
    (lambda h, s: _section(h, "anchors.stream").update(shape=[2, _section(h, "anchors.stream")["shape"][0] // 2]),
     FormatError, "one-dimensional"),
    (lambda h, s: h.pop("anchors"), FormatError, "no subtasks and no anchors"),
    (lambda h, s: h["anchors"].update(counts=[1 << 22] * 3), LimitError, "pixels"),
    (lambda h, s: h["anchors"].update(lanes=1, counts=[4000, 4000, 4000]), LimitError, "decoding steps"),
])  # fmt: skip
def test_hostile_anchor_headers_are_rejected_on_open(tmp_path, mutation, err, match):
    path = tmp_path / "bad.d3"
    path.write_bytes(_mutate(mutation))
    with pytest.raises(err, match=match):
        D3Reader(path)


def test_a_corrupt_stream_is_rejected_by_verify_and_by_the_loader(tmp_path):
    c = _valid()
    stream = c.tensors["anchors.stream"].copy()
    stream[1] ^= 0xFF  # a lane state: the stream no longer ends where it should
    c.tensors["anchors.stream"] = stream
    path = tmp_path / "corrupt.d3"
    write_d3(path, c)  # section hashes are recomputed: only decoding can notice
    with D3Reader(path) as r, pytest.raises(FormatError, match="anchor stream"):
        r.verify()
    with pytest.raises(FormatError, match="anchor stream"):
        open_representation(path)


def test_pack_anchors_on_digits_writes_a_file_within_the_cap(tmp_path):
    from d3fmt.distill.anchors import pack_anchors
    from d3fmt.distill.settings import pack_config

    out = tmp_path / "d.d3"
    cfg = pack_config("digits", str(out), budget=1, quiet=True, evaluate=False, work_dir=str(tmp_path / "w"))
    result = pack_anchors(cfg, AnchorConfig(bits=2))
    with D3Reader(out) as r:
        assert r.file_bytes == result.file_bytes <= result.max_bytes == r.header["budget"]["max_bytes"]
        assert r.header["budget"]["choices"]["anchors_per_class"] == result.per_class >= 5
        r.verify()


def test_d3_pack_representation_anchors_and_eval_recipe_best(tmp_path):
    from click.testing import CliRunner

    from d3fmt.cli import main

    out = tmp_path / "d.d3"
    runner = CliRunner()
    res = runner.invoke(main, ["pack", "digits", "-o", str(out), "--budget", "2", "--representation", "anchors",
                               "--no-eval", "--work-dir", str(tmp_path / "w"), "-q"])
    assert res.exit_code == 0, res.output
    assert "real anchors per class at 2 bit(s)" in res.output
    res = runner.invoke(main, ["eval", str(out), "--test", "digits", "--recipe", "best", "--steps", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert "recipe plain:" in res.output and "recipe dsa:" in res.output and "best recipe:" in res.output
    with D3Reader(out) as r:
        assert sorted(e["recipe"] for e in r.header["evals"]) == ["dsa", "plain"]
    res = runner.invoke(main, ["inspect", str(out)])
    assert res.exit_code == 0 and "anchors" in res.output


def test_cli_choices_match_the_library():
    from d3fmt.cli.options import RECIPE_CHOICES
    from d3fmt.distill.presets import REPRESENTATIONS
    from d3fmt.evaluation import evaluate

    assert RECIPE_CHOICES == evaluate.RECIPE_CHOICES
    assert set(REPRESENTATIONS) == {"latent", "anchors"}


def test_bad_representation_is_a_config_error():
    from d3fmt.distill.settings import pack_config

    with pytest.raises(ConfigError, match="--representation"):
        pack_config("digits", "x.d3", budget=1, representation="pixels")
