"""The budget fitter: every written file stays within its byte cap and uses 80-100% of it unless
the decode cost cap stops the decoder first; the cap itself."""

from __future__ import annotations

import re

import pytest

from d3fmt.distill.assemble import dummy_results, make_header, measure_plan, tensors_of
from d3fmt.distill.budget import (
    MAX_LATENTS,
    BudgetRequest,
    default_decode_mflop,
    fit_budget,
    gaussian_ratios,
    section_bytes,
)
from d3fmt.distill.job import partition_classes
from d3fmt.distill.settings import PackConfig
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.format import Budget, D3Container, D3Reader, write_d3
from d3fmt.models.decoder import DecoderConfig, decode_mflop
from d3fmt.sources.base import SourceInfo

CASES = [  # (classes, (C, H, W), budget images per class, subtasks)
    (10, (1, 8, 8), 10, 1),
    (10, (1, 8, 8), 50, 2),
    (10, (1, 28, 28), 1, 1),
    (10, (1, 28, 28), 10, 1),
    (10, (1, 28, 28), 50, 1),
    (10, (3, 32, 32), 2, 1),
    (20, (3, 32, 32), 10, 4),
    (100, (3, 64, 64), 1, 5),
]


def _info(k, shape):
    return SourceInfo(name="test", num_classes=k, class_names=[f"c{i}" for i in range(k)], image_shape=shape,
                      num_train=100, num_test=10, content_hash="ab" * 8)


def _fit_and_write(tmp_path, k, shape, ipc, subtasks, **overrides):
    info, parts = _info(k, shape), partition_classes(k, subtasks)
    cfg = PackConfig(source="test", output=str(tmp_path / "x.d3"), budget=ipc, subtasks=subtasks)
    budget = Budget.of(k, shape, budget=ipc)
    max_bytes = budget.max_bytes
    ones = [0.5] * shape[0]
    header_of = lambda p: make_header(info, parts, p, budget, ones, ones, cfg, 0.01)  # noqa: E731
    req = BudgetRequest(budget, subtask_classes=[len(p) for p in parts], reserve=384, ratios=gaussian_ratios(),
                        **overrides)
    plan = fit_budget(req, measure=lambda p: measure_plan(header_of, p))
    header = header_of(plan)
    results, soft = dummy_results(header, plan)
    tensors, encodings = tensors_of(header, plan, results, soft)
    size = write_d3(tmp_path / "x.d3", D3Container(header, tensors, encodings))
    return plan, size, max_bytes


@pytest.mark.parametrize("k,shape,ipc,subtasks", CASES)
def test_written_file_uses_80_to_100_percent(tmp_path, k, shape, ipc, subtasks):
    plan, size, max_bytes = _fit_and_write(tmp_path, k, shape, ipc, subtasks, max_decode_mflop=0)  # 0: no decode cap
    assert 0.80 * max_bytes <= size <= max_bytes, (plan.choices(), size / max_bytes)
    with D3Reader(tmp_path / "x.d3") as r:
        assert r.header["budget"]["bytes_used"] == size == r.file_bytes
        assert r.header["budget"]["choices"]["width"] == plan.width
        assert r.header["budget"]["choices"]["max_decode_mflop"] is None
        assert len(r.header["subtasks"]) == subtasks


@pytest.mark.parametrize("k,shape,ipc,subtasks", CASES)
def test_default_decode_cap_holds_and_only_a_capped_decoder_leaves_bytes(tmp_path, k, shape, ipc, subtasks):
    plan, size, max_bytes = _fit_and_write(tmp_path, k, shape, ipc, subtasks)
    cap = default_decode_mflop(shape)
    assert plan.decode_mflop <= cap and size <= max_bytes
    wider = DecoderConfig(family=plan.family, z_dim=plan.z_dim, channels=shape[0], image_size=shape[1], width=plan.width + 1)
    if size < 0.80 * max_bytes:  # only when one more channel would break the cap and latents are at their maximum
        assert decode_mflop(wider) > cap and plan.latents_per_class == MAX_LATENTS, plan.choices()
    with D3Reader(tmp_path / "x.d3") as r:
        choices = r.header["budget"]["choices"]
        assert choices["max_decode_mflop"] == cap and choices["decode_mflop"] == plan.decode_mflop


def test_decode_cap_picks_a_cheaper_decoder_and_spends_bytes_on_precision():
    """Fashion-MNIST at budget 50: uncapped, the fitter buys a 38-42 MFLOP decoder (float16);
    capped at 10 MFLOP, a narrower one under the cap, with float32 weights (the bytes are there)."""
    def fit(cap):
        return fit_budget(BudgetRequest(Budget.of(10, (1, 28, 28), budget=50),
                                        subtask_classes=[10], max_decode_mflop=cap, ratios=gaussian_ratios()))
    free, capped = fit(0), fit(10.0)
    assert free.decode_mflop > 30 and free.max_decode_mflop is None and free.weight_encoding == "float16"
    assert 9 < capped.decode_mflop <= 10 and capped.width < free.width and capped.weight_encoding == "float32"
    assert capped.decode_mflop == pytest.approx(decode_mflop(capped.decoders[0]), abs=1e-3)
    assert fit(None).max_decode_mflop == default_decode_mflop((1, 28, 28)) == pytest.approx(15.68)


def test_explicit_width_wins_over_the_decode_cap():
    req = BudgetRequest(Budget.of(10, (1, 28, 28), budget=50), subtask_classes=[10],
                        width=150, max_decode_mflop=1.0)
    assert fit_budget(req).width == 150


def test_negative_decode_cap_is_a_config_error():
    req = BudgetRequest(Budget.of(10, (1, 28, 28), max_bytes=31360), subtask_classes=[10], max_decode_mflop=-1)
    with pytest.raises(ConfigError, match="decode cap"):
        fit_budget(req)


def test_too_small_budget_names_the_smallest_that_fits(tmp_path):
    req = BudgetRequest(Budget.of(10, (1, 8, 8), max_bytes=1000), subtask_classes=[10])
    with pytest.raises(BudgetError) as err:
        fit_budget(req)
    suggested = float(re.search(r"--budget ([0-9.]+)", str(err.value)).group(1))
    assert suggested > 1000 / (10 * 64 * 4)
    plan = fit_budget(BudgetRequest(Budget.of(10, (1, 8, 8), budget=suggested), subtask_classes=[10]))
    assert plan.estimated_bytes <= suggested * 10 * 64 * 4


def test_overrides_are_kept(tmp_path):
    plan, size, max_bytes = _fit_and_write(tmp_path, 10, (1, 28, 28), 10, 1, family="small", z_dim=32,
                                           latents_per_class=3, weight_encoding="float16")
    assert (plan.family, plan.z_dim, plan.latents_per_class, plan.weight_encoding) == ("small", 32, 3, "float16")
    assert size <= max_bytes


def test_larger_budget_uses_more_bytes_and_keeps_family_fixed_when_asked():
    used, widths = [], []
    for ipc in (1, 2, 10, 50):
        req = BudgetRequest(Budget.of(10, (1, 28, 28), budget=ipc), subtask_classes=[10], family="small", z_dim=32, weight_encoding="int8")
        plan = fit_budget(req)
        assert plan.estimated_bytes <= ipc * 31360
        used.append(plan.estimated_bytes)
        widths.append(plan.width)
    assert used == sorted(used) and widths == sorted(widths) and widths[0] < widths[-1]


def test_section_bytes_int8_counts_scales():
    assert section_bytes((4, 3), "int8") == 16 + 12 + 4  # scales + values, aligned to 8
    assert section_bytes((5,), "float16") == 16
    with pytest.raises(ConfigError):
        section_bytes((5,), "bfloat17")
