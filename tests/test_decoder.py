"""The decoder: shapes per family and side, exact parameter count, strict rebuild,
batch independence, JSON round trip and config validation."""

import numpy as np
import pytest
import torch

from d3fmt.errors import ConfigError, FormatError
from d3fmt.models.decoder import (
    Decoder,
    DecoderConfig,
    build_decoder,
    decode_mflop,
    decoder_param_count,
    decoder_param_shapes,
    default_start_size,
)

SIDES = [8, 28, 32, 64]


def _cfg(family, side, width=16, channels=3, **kw):
    s = default_start_size(side)
    z_dim = 3 * s * s if family == "large" else 12
    return DecoderConfig(family=family, z_dim=z_dim, channels=channels, image_size=side, width=width, **kw)


@pytest.mark.parametrize("side,start", [(8, 2), (28, 7), (32, 4), (64, 4), (128, 4)])
def test_default_start_size(side, start):
    assert default_start_size(side) == start


@pytest.mark.parametrize("family", ["small", "medium", "large"])
@pytest.mark.parametrize("side", SIDES)
def test_output_shape_and_range(family, side):
    cfg = _cfg(family, side, channels=1 if side == 28 else 3)
    dec = build_decoder(cfg.to_json())
    z = torch.randn(3, cfg.z_dim) * 5
    with torch.inference_mode():
        x = dec(z)
    assert x.shape == (3, cfg.channels, side, side)
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0  # not a constant image


@pytest.mark.parametrize("family", ["small", "medium", "large"])
@pytest.mark.parametrize("norm", ["group", "none"])
@pytest.mark.parametrize("width", [4, 13, 96])
def test_param_count_matches_built_module(family, norm, width):
    for side in SIDES:
        cfg = _cfg(family, side, width=width, norm=norm)
        dec = Decoder(cfg)
        assert decoder_param_count(cfg) == sum(p.numel() for p in dec.parameters())
        assert decoder_param_count(cfg.to_json()) == decoder_param_count(cfg)
        state = dec.state_dict()
        assert list(state) == list(decoder_param_shapes(cfg))
        assert {k: tuple(v.shape) for k, v in state.items()} == decoder_param_shapes(cfg)


def test_param_count_grows_with_width():
    counts = [decoder_param_count(_cfg("small", 32, width=k)) for k in range(4, 200, 7)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_stable_state_dict_names():
    names = list(decoder_param_shapes(_cfg("small", 32)))
    assert names == [
        "fc.weight", "fc.bias", "fc_norm.weight", "fc_norm.bias",
        "stages.0.conv.weight", "stages.0.norm.weight", "stages.0.norm.bias",
        "stages.1.conv.weight", "stages.1.norm.weight", "stages.1.norm.bias",
        "stages.2.conv.weight", "stages.2.norm.weight", "stages.2.norm.bias",
        "head.weight", "head.bias",
    ]  # fmt: skip
    large = decoder_param_shapes(_cfg("large", 32))
    assert "fc.weight" not in large and large["stages.0.conv.weight"][0] == 3  # z reshaped to [3, 4, 4]


@pytest.mark.parametrize("family", ["small", "medium", "large"])
def test_sample_alone_equals_sample_in_batch(family):
    torch.manual_seed(0)
    cfg = _cfg(family, 32)
    dec = build_decoder(cfg.to_json())
    z = torch.randn(64, cfg.z_dim)
    with torch.inference_mode():
        batch = dec(z)
        for i in (0, 17, 63):
            alone = dec(z[i : i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


def test_rebuild_from_json_and_tensors_is_identical():
    torch.manual_seed(1)
    cfg = _cfg("medium", 28, channels=1)
    dec = build_decoder(cfg.to_json())
    tensors = {k: v.numpy().copy() for k, v in dec.state_dict().items()}
    again = build_decoder(DecoderConfig.from_json(cfg.to_json()).to_json(), tensors)
    z = torch.randn(5, cfg.z_dim)
    with torch.inference_mode():
        assert torch.equal(dec(z), again(z))
    assert not again.training


def test_rebuild_is_strict():
    cfg = _cfg("small", 8)
    good = {k: np.zeros(s, np.float32) for k, s in decoder_param_shapes(cfg).items()}
    build_decoder(cfg.to_json(), good)
    missing = dict(good)
    del missing["head.bias"]
    with pytest.raises(FormatError, match="missing"):
        build_decoder(cfg.to_json(), missing)
    with pytest.raises(FormatError, match="unexpected"):
        build_decoder(cfg.to_json(), {**good, "extra.weight": np.zeros(1, np.float32)})
    with pytest.raises(FormatError, match="shape"):
        build_decoder(cfg.to_json(), {**good, "head.bias": np.zeros(4, np.float32)})


def test_json_round_trip_is_plain_json():
    import json

    cfg = _cfg("small", 28, width=37, channels=1, norm_groups=4)
    d = json.loads(json.dumps(cfg.to_json()))
    assert DecoderConfig.from_json(d) == cfg
    assert d["start_size"] == 7


@pytest.mark.parametrize(
    "bad",
    [
        {"family": "huge"},
        {"norm": "batch"},
        {"image_size": 30, "start_size": 4},
        {"image_size": 7},
        {"width": 0},
        {"width": 10**9},
        {"z_dim": "64"},
        {"channels": True},
        {"bogus": 1},
        {"family": "large", "z_dim": 17},
    ],
)
def test_from_json_rejects_bad_configs(bad):
    d = {**_cfg("small", 32).to_json(), **bad}
    if "image_size" in bad and "start_size" not in bad:
        d["start_size"] = 0
    with pytest.raises(ConfigError):
        DecoderConfig.from_json(d)


def test_from_json_rejects_missing_keys_and_non_dicts():
    with pytest.raises(ConfigError, match="missing"):
        DecoderConfig.from_json({"family": "small"})
    with pytest.raises(ConfigError):
        DecoderConfig.from_json([1, 2])


def test_gradients_flow_to_latents_and_weights():
    cfg = _cfg("small", 8)
    dec = build_decoder(cfg.to_json()).train()
    z = torch.randn(4, cfg.z_dim, requires_grad=True)
    dec(z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dec.parameters())


@pytest.mark.parametrize("family", ["small", "medium", "large"])
@pytest.mark.parametrize("norm", ["group", "none"])
def test_inference_optimisation_gives_the_same_images(family, norm):
    cfg = _cfg(family, 28, channels=3, norm=norm)
    dec = build_decoder(cfg.to_json())
    fast = build_decoder(cfg.to_json(), {k: v.clone() for k, v in dec.state_dict().items()}).optimize_for_inference()
    assert (family != "small") == any(s.phase_weight is not None for s in fast.stages)
    z = torch.randn(6, cfg.z_dim)
    with torch.inference_mode():
        out = fast(z)
        torch.testing.assert_close(out, dec(z), atol=1e-5, rtol=0)
    assert out.is_contiguous()
    assert list(fast.state_dict()) == list(dec.state_dict())


@pytest.mark.parametrize("family,z_dim", [("small", 32), ("medium", 32), ("large", 196)])
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_decode_mflop_is_what_torch_counts(family, z_dim, channels, side):
    """decode_mflop (the fitter's decode cost) equals torch's FLOP counter on one decode."""
    from torch.utils.flop_counter import FlopCounterMode

    if family == "large" and side == 32:
        z_dim = 4 * 4 * 4  # large: z_dim is a multiple of start_size ** 2
    cfg = DecoderConfig(family=family, z_dim=z_dim, channels=channels, image_size=side, width=40)
    with FlopCounterMode(display=False) as counter:
        build_decoder(cfg.to_json())(torch.zeros(1, z_dim))
    assert decode_mflop(cfg) == pytest.approx(counter.get_total_flops() / 1e6, rel=1e-9)
    assert decode_mflop(cfg) < decode_mflop(DecoderConfig(family=family, z_dim=z_dim, channels=channels,
                                                          image_size=side, width=41))
