"""One way to build a PackConfig: preset + DEFAULTS + explicit settings, validated."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from d3fmt.distill.autoencoder import AutoencoderConfig
from d3fmt.distill.presets import DEFAULTS, PRESETS, preset_values
from d3fmt.distill.settings import PackConfig, config_from_settings, pack_config, settings_json
from d3fmt.distill.trainer import DistillConfig
from d3fmt.errors import ConfigError
from d3fmt.evaluation.evaluate import EvalConfig


def test_the_preset_fills_what_is_not_given_and_explicit_settings_win():
    cfg = pack_config("digits", "o.d3", budget=1, device="cpu", preset="reference", iterations=7, warmup=0.5)
    ref = PRESETS["reference"]
    assert cfg.distill.iterations == 7 and cfg.distill.warmup == 4  # round(0.5 * 7)
    assert cfg.experts.num_experts == ref["num_experts"] and cfg.experts.width == ref["convnet_width"]
    assert cfg.evaluation.epochs == ref["eval_epochs"] and cfg.evaluation.width == ref["convnet_width"]
    fast = pack_config("digits", "o.d3", budget=1, device="cpu")  # auto on the CPU is fast
    assert fast.experts.num_experts == PRESETS["fast"]["num_experts"]
    assert pack_config("digits", "o.d3", budget=1, device="cpu", evaluate=False).evaluation is None


def test_every_default_has_one_value():
    cfg = pack_config("digits", "o.d3", budget=1, device="cpu")
    for name in ("subtasks", "label_sample", "seed", "work_dir", "soft_labels", "skip_bad", "quiet"):
        assert getattr(cfg, name) == DEFAULTS[name] == next(f.default for f in fields(PackConfig) if f.name == name)
    assert DEFAULTS["device"] == next(f.default for f in fields(PackConfig) if f.name == "device") == "auto"
    dist = DistillConfig()
    assert DEFAULTS["checkpoint_every"] == dist.checkpoint_every == cfg.distill.checkpoint_every
    assert DEFAULTS["match_epochs"] == dist.expert_epochs == cfg.distill.expert_epochs
    assert DEFAULTS["max_start_epoch"] == dist.max_start_epoch and DEFAULTS["mmd_weight"] == dist.mmd_weight
    assert DEFAULTS["pretrain_steps"] == AutoencoderConfig().steps == cfg.distill.autoencoder.steps
    assert DEFAULTS["eval_runs"] == EvalConfig().runs == cfg.evaluation.runs
    assert preset_values("iterations") == "fast 300, standard 2000, reference 8000" and preset_values("syn_steps") == "10"


@pytest.mark.parametrize("settings, message", [
    ({}, "exactly one of budget"),
    ({"budget": 1, "max_bytes": 10}, "exactly one of budget"),
    ({"budget": 0}, "budget must be > 0"),
    ({"max_bytes": 0}, "max_bytes must be a positive byte count"),
    ({"budget": 1, "subtasks": 0}, "--subtasks must be at least 1"),
    ({"budget": 1, "subtasks": 2, "subtask": 2}, "--subtask must be in 0..1"),
    ({"budget": 1, "label_sample": 0}, "--label-sample must be >= 1"),
    ({"budget": 1, "warmup": 1.0}, "--warmup is a share"),
    ({"budget": 1, "preset": "huge"}, "unknown preset"),
    ({"budget": 1, "no_such_setting": 3}, "unknown pack settings"),
])
def test_bad_settings_fail_on_construction(settings, message):
    with pytest.raises(ConfigError, match=message):
        pack_config("digits", "o.d3", device="cpu", **settings)


def test_recorded_settings_rebuild_the_same_config():
    cfg = pack_config("digits", "o.d3", budget=2, device="cpu", iterations=5, soft_labels=True)
    again = config_from_settings(settings_json(cfg), output="o.d3", work_dir=cfg.work_dir, device="cpu")
    assert settings_json(again) == settings_json(cfg) and asdict(again)["experts"] == asdict(cfg)["experts"]
