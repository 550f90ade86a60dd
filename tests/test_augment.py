import pytest
import torch

from d3fmt.augment import FAMILIES, DSAParams, crop_flip, dsa, random_seed
from d3fmt.errors import ConfigError


def _x(n=6, c=3, side=16, seed=0):
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_differentiable_and_keeps_shape(family):
    x = _x().requires_grad_(True)
    out = dsa(x, DSAParams(strategy=family, mode="all", flip=1.0), seed=3)
    assert out.shape == x.shape
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert g.abs().sum() > 0


def test_each_family_changes_the_image():
    x = _x(side=16)
    for family in FAMILIES:
        out = dsa(x, DSAParams(strategy=family, mode="all", flip=1.0), seed=1)
        assert not torch.allclose(out, x), family


def test_reference_strategy_and_ratios():
    p = DSAParams()
    assert p.families == ["color", "crop", "cutout", "flip", "scale", "rotate"]
    assert (p.scale, p.rotate, p.crop, p.cutout) == (1.2, 15.0, 0.125, 0.5)
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)


def test_same_seed_same_transform_different_seed_differs():
    x = _x()
    for mode in ("single", "all"):
        p = DSAParams(mode=mode)
        a, b = dsa(x, p, seed=11), dsa(x, p, seed=11)
        assert torch.equal(a, b)
    outs = [dsa(x, DSAParams(mode="all"), seed=s) for s in range(4)]
    assert not all(torch.allclose(outs[0], o) for o in outs[1:])


def test_siamese_batch_shared_transform_is_the_same_across_batch_sizes():
    x = _x(n=5)
    p = DSAParams(mode="all")
    big = dsa(x, p, seed=7, batch_shared=True)
    small = dsa(x[:2], p, seed=7, batch_shared=True)
    assert torch.allclose(big[:2], small, atol=1e-6)


def test_generator_drives_draws_reproducibly():
    x = _x()
    a = dsa(x, DSAParams(), generator=torch.Generator().manual_seed(5))
    b = dsa(x, DSAParams(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(1)
    assert random_seed(g) != random_seed(g)


def test_flip_crop_exactness():
    x = _x(n=2, side=8)
    flipped = dsa(x, DSAParams(strategy="flip", flip=1.0), seed=0)
    assert torch.allclose(flipped, x.flip(3))
    # crop = whole-pixel translation: every output pixel is an input pixel or 0
    out = dsa(x, DSAParams(strategy="crop", crop=0.25), seed=2)
    values = set(torch.round(x * 1e4).flatten().tolist()) | {0.0}
    assert set(torch.round(out * 1e4).flatten().tolist()) <= values


def test_none_strategy_is_identity_and_bad_strategy_raises():
    x = _x()
    assert dsa(x, DSAParams(strategy="none"), seed=0) is x
    with pytest.raises(ConfigError):
        DSAParams(strategy="color_blur")
    with pytest.raises(ConfigError):
        DSAParams(mode="sometimes")


def test_crop_flip_shapes_and_pixels_come_from_input():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out = crop_flip(x, generator=torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for i in range(2):
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}
    a = crop_flip(x, generator=torch.Generator().manual_seed(4))
    b = crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
