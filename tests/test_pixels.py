"""Pixels: uint8 images normalised one batch at a time, bit for bit like the whole array."""

import numpy as np
import pytest
import torch

from d3fmt.distill.autoencoder import AutoencoderConfig, pretrain_cached
from d3fmt.distill.experts import ExpertConfig, data_fingerprint, train_experts
from d3fmt.distill.job import load_subset
from d3fmt.distill.trainer import DistillConfig, _make_task
from d3fmt.errors import ConfigError
from d3fmt.loader.representation import normalize
from d3fmt.models.decoder import DecoderConfig
from d3fmt.pixels import Pixels, select
from d3fmt.sources import open_source

MEAN, STD = (0.3, 0.6, 0.45), (0.2, 0.25, 0.3)


def _images(n=20, c=3, s=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, s, s), dtype=np.uint8)


def _whole(x):
    return normalize(torch.from_numpy(x).float().div_(255), MEAN, STD)


def test_batches_equal_whole_array_normalisation_bit_for_bit():
    x = _images()
    px = Pixels.from_numpy(x, MEAN, STD)
    whole = _whole(x)
    idx = torch.tensor([3, 0, 19, 3])
    assert px[idx].dtype == torch.float32
    assert torch.equal(px[idx], whole[idx])
    assert torch.equal(px[2:7], whole[2:7])
    assert px.shape == (20, 3, 8, 8) and len(px) == 20 and px.dim() == 4


def test_no_copy_select_and_move_keep_uint8():
    x = _images()
    px = Pixels.from_numpy(x, MEAN, STD)
    assert px.data.data_ptr() == torch.from_numpy(x).data_ptr()  # wraps, does not copy
    sub = select(px, torch.tensor([1, 2]))
    assert isinstance(sub, Pixels) and sub.data.dtype == torch.uint8 and sub.shape[0] == 2
    assert px.to("cpu") is px
    t = torch.arange(6.0).reshape(6, 1, 1, 1)
    assert torch.equal(select(t, torch.tensor([5, 0])), t[[5, 0]])


def test_tanh_view_is_minus_one_to_one():
    x = np.array([[[[0, 255]]]], dtype=np.uint8)
    px = Pixels.from_numpy(x, (0.5,), (0.5,)).normalized((0.1,), (0.2,)).tanh()
    assert px[0:1].flatten().tolist() == [-1.0, 1.0]


def test_read_only_memory_map_is_wrapped(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _images())
    mm = np.load(path, mmap_mode="r")
    px = Pixels.from_numpy(mm, MEAN, STD)
    assert torch.equal(px[0:3], _whole(np.asarray(mm))[0:3])


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="uint8"):
        Pixels(torch.zeros(2, 1, 4, 4), (0.5,), (0.5,))
    with pytest.raises(ConfigError, match="channels"):
        Pixels.from_numpy(_images(c=3), (0.5,), (0.5,))


def test_fingerprint_depends_on_pixels_and_normalisation():
    x = _images()
    a = data_fingerprint(Pixels.from_numpy(x, MEAN, STD), torch.zeros(20))
    assert a == data_fingerprint(Pixels.from_numpy(x.copy(), MEAN, STD), torch.zeros(20))
    x2 = x.copy()
    x2[0, 0, 0, 0] ^= 1
    assert a != data_fingerprint(Pixels.from_numpy(x2, MEAN, STD), torch.zeros(20))
    assert a != data_fingerprint(Pixels.from_numpy(x, STD, MEAN), torch.zeros(20))


def test_load_subset_holds_uint8_only():
    source = open_source("digits", image_size=8)
    x, y = load_subset(source, [0, 3], "train", (0.5,), (0.5,))
    assert isinstance(x, Pixels) and x.data.dtype == torch.uint8
    assert set(y.tolist()) == {0, 1}


def test_experts_autoencoder_and_task_train_from_uint8(tmp_path):
    x = _images(n=40, c=1, s=8)
    y = torch.arange(40) % 2
    px = Pixels.from_numpy(x, (0.4,), (0.3,))
    ecfg = ExpertConfig(num_experts=1, epochs=1, width=4, batch_size=16, augment="none")
    traj = train_experts(px, y, 2, ecfg, tmp_path / "experts")
    ref = train_experts(_whole_1ch(x), y, 2, ecfg, tmp_path / "experts-float")
    assert torch.equal(traj.final(0), ref.final(0))  # same values as the float path
    dcfg = DecoderConfig(family="small", channels=1, image_size=8, z_dim=4, width=4)
    pre = pretrain_cached(tmp_path / "ae", px, y, 2, dcfg, 1, AutoencoderConfig(steps=2, batch=8),
                          (0.4,), (0.3,), seed=1)
    assert pre.mu.shape == (2, 4)
    task = _make_task(px, y, 2, dcfg, 1, traj, DistillConfig(mean=(0.4,), std=(0.3,), expert_epochs=1), torch.device("cpu"))
    assert isinstance(task.x, Pixels) and task.x.data.dtype == torch.uint8
    order = torch.argsort(y, stable=True)
    assert torch.equal(task.x[0:40], _whole_1ch(x)[order])


def _whole_1ch(x):
    return normalize(torch.from_numpy(x).float().div_(255), (0.4,), (0.3,))
