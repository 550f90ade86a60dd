"""d3fmt.pack(): arrays and in-memory datasets as sources, the result object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import d3fmt
from d3fmt.errors import ConfigError, SourceError
from d3fmt.format import D3Reader
from d3fmt.sources import open_source
from d3fmt.sources.memory import as_arrays, npz_spec

TINY = dict(iterations=2, pretrain_steps=10, num_experts=1, expert_epochs=2, evaluate=False, device="cpu",
            quiet=True, seed=1)


@pytest.fixture(scope="module")
def digits():
    x, y = open_source("digits", holdout=0).load("train")  # uint8 [N, 1, 8, 8]
    return x, y


class PILDataset(torch.utils.data.Dataset):
    """What torchvision datasets give without a transform: (PIL image, int)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i, 0]), int(self.y[i])


class TensorDataset(PILDataset):
    """What ToTensor() gives: float [C, H, W] in [0, 1], and a tensor label."""

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).float() / 255, torch.tensor(self.y[i])


def test_arrays_and_datasets_give_the_same_pixels(digits):
    x, y = digits
    want = x[:, 0]  # [N, 8, 8]: grey images are stored [N, H, W]
    for source in ((x, y), (x[:, 0], y), (torch.from_numpy(x), torch.from_numpy(y)),
                   PILDataset(x, y), TensorDataset(x, y)):
        got_x, got_y = as_arrays(source)
        assert np.array_equal(got_x.reshape(want.shape), want) and np.array_equal(got_y, y), type(source)


def test_rgb_arrays_are_stored_channels_last():
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 5, 5), dtype=np.uint8)  # [N, C, H, W]
    got, _ = as_arrays((x, np.arange(6) % 2))
    assert np.array_equal(got, x.transpose(0, 2, 3, 1))


def test_the_npz_is_content_addressed_and_opens_as_a_source(digits, tmp_path):
    x, y = as_arrays(digits)
    names = [f"digit{k}" for k in range(10)]
    a = npz_spec(x, y, names, tmp_path / "a")
    b = npz_spec(x, y, names, tmp_path / "b")
    assert open(a, "rb").read() == open(b, "rb").read()  # same data, same bytes, same source hash
    src = open_source(a, holdout=0)
    assert src.info.class_names == names and src.info.image_shape == (1, 8, 8)
    assert np.array_equal(src.load("train")[0], digits[0])


@pytest.mark.parametrize("source, match", [
    ([(np.zeros((4, 4, 4)), 0)], "image of shape"),
    ([(np.zeros((4, 4)), 0), (np.zeros((5, 5)), 1)], "differ in shape"),
    ([np.zeros((4, 4))], "not an \\(image, label\\) pair"),
    ((np.full((2, 4, 4), 2.0), np.array([0, 1])), "float pixels outside"),
    (42, "cannot pack a int"),
])
def test_bad_in_memory_data_is_one_clear_error(source, match):
    with pytest.raises(SourceError, match=match):
        as_arrays(source)


def test_class_names_only_for_in_memory_data(tmp_path):
    with pytest.raises(ConfigError, match="class_names"):
        d3fmt.pack("digits", tmp_path / "x.d3", budget=2, class_names=["a"], work_dir=str(tmp_path), **TINY)


@pytest.mark.slow
def test_pack_a_dataset_and_arrays(digits, tmp_path):
    x, y = digits
    names = [f"digit{k}" for k in range(10)]
    work = str(tmp_path / "work")
    a = d3fmt.pack(PILDataset(x, y), tmp_path / "a.d3", budget=2, class_names=names, work_dir=work, **TINY)
    assert a.path == tmp_path / "a.d3" and a.bytes == a.path.stat().st_size <= a.max_bytes
    assert a.accuracy is None and a.choices["latents_per_class"] >= 1
    with D3Reader(a.path) as reader:
        assert reader.header["class_names"] == names and reader.header["budget"]["choices"] == a.choices
        first = reader.load()
    b = d3fmt.pack((x, y), str(tmp_path / "b.d3"), budget=2, class_names=names, work_dir=work, **TINY)
    second = D3Reader(b.path).load()  # the same data, the same distillation
    assert all(np.array_equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
    assert first.header["provenance"]["source_hash"] == second.header["provenance"]["source_hash"]
