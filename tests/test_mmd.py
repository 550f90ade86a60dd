import torch

from d3fmt.distill.mmd import BANDWIDTHS, mmd2, squared_distances


def _feats(n, d=64, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.7 + shift


def test_mmd_of_a_set_with_itself_is_zero():
    x = _feats(20)
    assert float(mmd2(x, x)) == 0.0
    assert abs(float(mmd2(x, x.clone()))) < 1e-6


def test_mmd_grows_with_mean_shift_and_is_nonnegative():
    x = _feats(30, seed=1)
    values = [float(mmd2(x, _feats(25, shift=s, seed=2))) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(v >= 0 for v in values)
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_mmd_is_symmetric_and_batched_per_class():
    x, y = _feats(3 * 12).view(3, 12, 64), _feats(3 * 8, shift=0.5, seed=3).view(3, 8, 64)
    batched = mmd2(x, y)
    assert batched.shape == (3,)
    for k in range(3):
        assert torch.allclose(batched[k], mmd2(x[k], y[k]))
        assert torch.allclose(mmd2(y[k], x[k]), batched[k], atol=1e-6)


def test_bandwidths_are_relative_to_feature_dimension():
    # the same per-coordinate shift gives the same MMD in 16 or 1024 dimensions
    small = mmd2(torch.zeros(4, 16), torch.full((4, 16), 0.5))
    large = mmd2(torch.zeros(4, 1024), torch.full((4, 1024), 0.5))
    assert torch.allclose(small, large, atol=1e-6)
    # and matches the closed form: 2 * (1 - mean_s exp(-0.25 / (2 s^2)))
    expected = 2 * (1 - sum(torch.exp(torch.tensor(-0.25 / (2 * s * s))) for s in BANDWIDTHS) / len(BANDWIDTHS))
    assert torch.allclose(small, expected, atol=1e-6)


def test_gradient_pulls_samples_towards_the_real_set():
    real = _feats(20, d=8, seed=4)
    fake = _feats(10, d=8, shift=1.5, seed=5).requires_grad_(True)
    before = float(mmd2(real, fake).detach())
    opt = torch.optim.Adam([fake], lr=0.05)
    for _ in range(60):
        loss = mmd2(real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(mmd2(real, fake).detach()) < 0.5 * before


def test_squared_distances():
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    assert torch.allclose(squared_distances(a, b), torch.cdist(a, b) ** 2, atol=1e-5)
