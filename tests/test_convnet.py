import pytest
import torch

from d3fmt.errors import ConfigError
from d3fmt.models.convnet import (
    ConvNet,
    ConvNetConfig,
    ParamLayout,
    default_depth,
    flatten_params,
    functional_features,
    functional_forward,
    load_flat_,
    unflatten,
)


@pytest.mark.parametrize(
    "side,channels,depth,final_side",
    [(8, 1, 3, 2), (28, 1, 3, 3), (32, 3, 3, 4), (64, 3, 4, 4)],
)
def test_shapes_by_resolution(side, channels, depth, final_side):
    cfg = ConvNetConfig(channels, 10, side, width=16)
    assert cfg.depth == depth
    assert cfg.pooled_sides()[-1] == final_side
    net = ConvNet(cfg)
    x = torch.randn(5, channels, side, side)
    assert net.features(x).shape == (5, 16 * final_side**2) == (5, cfg.feature_dim)
    assert net(x).shape == (5, 10)


def test_default_depth_reference_values():
    assert [default_depth(s) for s in (8, 28, 32, 64, 128, 256)] == [3, 3, 3, 4, 5, 6]


def test_instance_norm_is_affine_groupnorm_per_channel():
    net = ConvNet(ConvNetConfig(1, 3, 8, width=16))
    norm = net.blocks[0].norm
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 16 and norm.affine
    # no batch dependence: one sample alone == the same sample in a batch
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(net(x[:1]), net(x)[:1], atol=1e-6)


@pytest.mark.parametrize("norm", ["instance", "none", "batch"])
def test_functional_forward_matches_module(norm):
    torch.manual_seed(0)
    net = ConvNet(ConvNetConfig(3, 7, 32, width=8, norm=norm)).eval()
    flat = flatten_params(net)
    layout = ParamLayout.of(net)
    assert flat.shape == (layout.size,) == (sum(p.numel() for p in net.parameters()),)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(functional_forward(net, flat, x, layout), net(x), atol=1e-5)
    assert torch.allclose(functional_features(net, flat, x, layout), net.features(x), atol=1e-5)


def test_functional_forward_is_differentiable_wrt_flat_and_uses_it():
    net = ConvNet(ConvNetConfig(1, 4, 8, width=8))
    flat = flatten_params(net).requires_grad_(True)
    x = torch.randn(2, 1, 8, 8)
    out = functional_forward(net, flat, x)
    (g,) = torch.autograd.grad(out.sum(), flat)
    assert g.shape == flat.shape and g.abs().sum() > 0
    # a different flat vector gives a different output: the module's own weights are unused
    assert not torch.allclose(functional_forward(net, flat.detach() * 0.5, x), out.detach())


def test_unflatten_and_load_flat_roundtrip():
    a, b = ConvNet(ConvNetConfig(1, 4, 8, width=8)), ConvNet(ConvNetConfig(1, 4, 8, width=8))
    load_flat_(b, flatten_params(a))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    views = unflatten(flatten_params(a), ParamLayout.of(a))
    assert list(views) == [n for n, _ in a.named_parameters()]


def test_wrong_flat_size_and_bad_config_raise():
    net = ConvNet(ConvNetConfig(1, 4, 8, width=8))
    with pytest.raises(ConfigError):
        unflatten(torch.zeros(5), ParamLayout.of(net))
    with pytest.raises(ConfigError):
        ConvNetConfig(1, 4, 8, norm="layer")
    with pytest.raises(ConfigError):
        ConvNetConfig(0, 4, 8)
    assert ConvNetConfig.from_json(ConvNetConfig(1, 4, 28).to_json()) == ConvNetConfig(1, 4, 28)
