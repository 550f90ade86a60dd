import pytest
import torch

from d3fmt.errors import ConfigError
from d3fmt.models.resnet import ResNet, ResNetConfig, resnet18


@pytest.mark.parametrize("channels,side", [(1, 8), (1, 28), (3, 32), (3, 96)])
def test_resnet18_shapes(channels, side):
    net = resnet18(channels, 10, side)
    x = torch.randn(2, channels, side, side)
    assert net(x).shape == (2, 10)
    assert net.features(x).shape == (2, 512)


def test_small_stem_keeps_resolution_large_stem_downsamples():
    small, large = resnet18(3, 10, 32), resnet18(3, 10, 128)
    assert small.stem(torch.randn(2, 3, 32, 32)).shape[-1] == 32
    assert large.stem(torch.randn(2, 3, 128, 128)).shape[-1] == 32


def test_resnet18_has_resnet18_size_and_trains():
    net = resnet18(3, 10, 32)
    n_params = sum(p.numel() for p in net.parameters())
    assert 11_000_000 < n_params < 11_300_000  # the CIFAR ResNet-18 has ~11.17 M parameters
    tiny = ResNet(ResNetConfig(1, 3, 8, width=8, blocks=(1, 1)))
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(tiny(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_bad_config_raises():
    with pytest.raises(ConfigError):
        ResNetConfig(1, 10, 0)
