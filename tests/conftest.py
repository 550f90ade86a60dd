"""Shared fixtures: small valid .d3 files with randomly initialised decoders.

``make_d3(name, **kw)`` writes ``tmp_path/name`` from
:func:`d3fmt.loader.example.random_container` (same keyword arguments: num_classes,
image_shape, family, width, z_dim, latents_per_class, num_subtasks, soft,
samples_per_class, seed, encoding) and returns its path. ``d3_file`` is a ready one:
4 classes, 1x8x8 images, 2 subtasks, 2 latents per class, soft labels, 5 samples per class.
Decoders are random, so images are structured noise; everything else is a real file.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tools/craft_d3.py, the file crafter


@pytest.fixture
def make_d3(tmp_path):
    from d3fmt.format import write_d3
    from d3fmt.loader.example import random_container

    def make(name: str = "x.d3", **kw):
        path = tmp_path / name
        write_d3(path, random_container(**kw))
        return path

    return make


@pytest.fixture
def d3_file(make_d3):
    return make_d3(
        "small.d3", num_classes=4, image_shape=(1, 8, 8), num_subtasks=2, latents_per_class=2,
        soft=True, samples_per_class=5, z_dim=8, width=16,
    )  # fmt: skip
