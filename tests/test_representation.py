"""Representation: pixel conventions, class-major priors, decoding, soft labels, bad input."""

import copy

import numpy as np
import pytest
import torch

from d3fmt.errors import ConfigError, FormatError
from d3fmt.format import D3Reader
from d3fmt.loader.example import random_container
from d3fmt.loader.representation import (
    Representation,
    denormalize,
    normalize,
    tanh_to_normalized,
    tanh_to_unit,
    unit_to_tanh,
)
from d3fmt.models.decoder import build_decoder


def test_pixel_conventions():
    t = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(tanh_to_unit(t), torch.tensor([0.0, 0.5, 1.0]))  # full pixel range reachable
    assert torch.equal(unit_to_tanh(tanh_to_unit(t)), t)
    x = torch.rand(2, 3, 4, 4)
    mean, std = [0.2, 0.5, 0.7], [0.1, 0.2, 0.3]
    n = normalize(x, mean, std)
    assert torch.allclose(n[:, 1], (x[:, 1] - 0.5) / 0.2)
    assert torch.allclose(denormalize(n, mean, std), x, atol=1e-6)
    assert torch.allclose(tanh_to_normalized(unit_to_tanh(x), mean, std), n, atol=1e-6)


def test_reader_and_container_give_the_same_representation(d3_file):
    with D3Reader(d3_file) as reader:
        a = Representation.from_reader(reader)
        b = Representation.from_container(reader.load())
    cls, prior = torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 1, 0, 1, 0])
    eps = torch.randn(5, a.z_max)
    assert torch.equal(a.decode(cls, prior, eps), b.decode(cls, prior, eps))
    assert a.num_classes == 4 and a.image_shape == (1, 8, 8) and a.labels == "soft"
    assert a.classes == [0, 1, 2, 3] and a.latents_per_class(3) == 2


def test_decode_is_decoder_of_mu_plus_sigma_eps(d3_file):
    container = D3Reader(d3_file).load()
    rep = Representation.from_container(container)
    sub = container.header["subtasks"][1]  # classes [1, 3], class-major rows
    assert sub["classes"] == [1, 3]
    names = sub["tensors"]
    dec = build_decoder(sub["decoder"], {k: container.tensors[v] for k, v in names["decoder"].items()})
    mu, logvar = (torch.from_numpy(container.tensors[names[k]]) for k in ("mu", "logvar"))
    eps = torch.randn(1, rep.z_max)
    row = 1 * 2 + 1  # class 3 is position 1 of the subtask, latent 1
    ref = rep.prior_of(torch.tensor([3]), torch.tensor([1]))
    assert ref.subtask.tolist() == [1] and ref.row.tolist() == [row]
    want = dec(mu[row : row + 1] + torch.exp(0.5 * logvar[row : row + 1]) * eps).detach()
    torch.testing.assert_close(rep.decode(torch.tensor([3]), torch.tensor([1]), eps), want)
    means = rep.decode(torch.tensor([3]), torch.tensor([1]), None)
    torch.testing.assert_close(means, dec(mu[row : row + 1]).detach())
    assert torch.equal(rep.decode(torch.tensor([3]), torch.tensor([1]), torch.zeros(1, rep.z_max)), means)
    soft = rep.soft_labels(torch.tensor([3]), torch.tensor([1]))
    assert torch.equal(soft[0], torch.from_numpy(container.tensors[names["soft"]][row]))


def test_mixed_subtasks_in_one_batch_equal_one_by_one(d3_file):
    rep = Representation.from_reader(D3Reader(d3_file))
    cls, prior = torch.tensor([3, 0, 1, 2, 0]), torch.tensor([1, 0, 0, 1, 1])
    eps = torch.randn(5, rep.z_max)
    batch = rep.decode(cls, prior, eps)
    for i in range(5):
        alone = rep.decode(cls[i : i + 1], prior[i : i + 1], eps[i : i + 1])
        torch.testing.assert_close(alone[0], batch[i], atol=1e-6, rtol=0)


def test_class_selection_loads_only_needed_subtasks(d3_file):
    rep = Representation.from_reader(D3Reader(d3_file), classes=[1])
    assert list(rep.subtasks) == [1] and rep.classes == [1, 3]
    with pytest.raises(ConfigError, match="not in this file"):
        Representation.from_reader(D3Reader(d3_file), classes=[7])


def test_hard_label_file_refuses_soft_labels(make_d3):
    rep = Representation.from_reader(D3Reader(make_d3(soft=False)))
    assert not rep.has_soft
    with pytest.raises(ConfigError, match="soft"):
        rep.soft_labels(torch.tensor([0]), torch.tensor([0]))


def test_bf16_decoding_is_close_to_fp32(d3_file):
    a = Representation.from_reader(D3Reader(d3_file))
    b = Representation.from_reader(D3Reader(d3_file), dtype=torch.bfloat16)
    cls, prior, eps = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), torch.randn(3, a.z_max)
    out = b.decode(cls, prior, eps)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a.decode(cls, prior, eps), atol=0.05, rtol=0)


def _broken(container, edit):
    bad = copy.deepcopy(container)
    edit(bad)
    return bad


def test_inconsistent_containers_raise_format_error():
    good = random_container(num_classes=3, num_subtasks=1)
    Representation.from_container(good)
    cases = [
        lambda c: c.tensors.__setitem__("s0.mu", np.zeros((5, 8), np.float32)),
        lambda c: c.tensors.__setitem__("s0.logvar", np.full((6, 8), np.nan, np.float32)),
        lambda c: c.tensors.pop("s0.dec.head.bias"),
        lambda c: c.header["subtasks"][0]["decoder"].__setitem__("family", "nope"),
        lambda c: c.header["subtasks"][0]["decoder"].__setitem__("image_size", 16),
        lambda c: c.header["subtasks"][0].__setitem__("classes", [0, 1, 1]),
        lambda c: c.header["subtasks"][0].__setitem__("classes", [0, 1]),
        lambda c: c.header.__setitem__("image_shape", [1, 8]),
    ]
    for edit in cases:
        with pytest.raises(FormatError):
            Representation.from_container(_broken(good, edit))


def test_random_container_is_deterministic():
    a, b = random_container(seed=3), random_container(seed=3)
    assert a.header == b.header
    assert all(np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not np.array_equal(random_container(seed=4).tensors["s0.mu"], a.tensors["s0.mu"])
