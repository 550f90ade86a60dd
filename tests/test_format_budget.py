"""The byte budget: the formula, the exactly-one rule and the header's budget fields."""

from __future__ import annotations

import math

import pytest

from d3fmt.errors import ConfigError
from d3fmt.format import Budget, encode_d3
from d3fmt.format.example import example_container


def test_fashion_mnist_numbers():
    b = Budget.of(10, (1, 28, 28), budget=1)
    assert (b.ipc, b.max_bytes, b.image_bytes) == (1, 31360, 3136)
    assert b.fields(15680) == {"ipc": 1, "max_bytes": 31360, "bytes_used": 15680,
                               "ipc_equivalent_fp32": 0.5, "ipc_equivalent_uint8": 2.0}
    assert Budget.of(10, (1, 28, 28), budget=10).max_bytes == 313_600
    assert Budget.of(4, (3, 8, 8), budget=0.5).max_bytes == 1536


def test_a_byte_cap_is_the_images_per_class_it_amounts_to():
    b = Budget.of(10, (1, 8, 8), max_bytes=1000)
    assert b.max_bytes == 1000 and b.ipc == pytest.approx(1000 / 2560)
    assert b.ipc_of(2560) == 1.0
    assert b.fields(0, choices={"z_dim": 8})["choices"] == {"z_dim": 8}


@pytest.mark.parametrize("kw,match", [
    ({}, "exactly one of budget"),
    ({"budget": 1, "max_bytes": 10}, "exactly one of budget"),
    ({"budget": 0}, "budget must be > 0"),
    ({"budget": -1}, "budget must be > 0"),
    ({"budget": math.inf}, "budget must be > 0"),
    ({"budget": math.nan}, "budget must be > 0"),
    ({"max_bytes": 0}, "max_bytes must be a positive byte count"),
    ({"max_bytes": 10.5}, "max_bytes must be a positive byte count"),
])
def test_exactly_one_valid_budget(kw, match):
    with pytest.raises(ConfigError, match=match) as err:
        Budget.of(10, (1, 8, 8), **kw)
    assert "--" not in str(err.value)  # the format layer names no CLI flag


def test_the_writer_fills_the_budget_from_the_file_size():
    c = example_container(num_classes=5, image_shape=(1, 4, 4))
    data = encode_d3(c)
    budget = c.header["budget"]
    expected = Budget.of(5, (1, 4, 4), budget=1).fields(len(data))
    assert {k: budget[k] for k in expected} == expected and budget["bytes_used"] == len(data)
    assert budget["ipc_equivalent_fp32"] == round(len(data) / (5 * 16 * 4), 6)
