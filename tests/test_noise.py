"""Counter-based noise: standard-normal statistics and independence from batching."""

import torch

from d3fmt.loader.noise import _mul32, gaussian


def test_shape_dtype_device():
    g = gaussian(0, 0, torch.arange(5), 7)
    assert g.shape == (5, 7) and g.dtype == torch.float32 and g.device.type == "cpu"
    assert gaussian(0, 0, torch.arange(5), 7, dtype=torch.float64).dtype == torch.float64
    assert gaussian(0, 0, torch.arange(5), 8, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert gaussian(0, 0, torch.arange(0), 3).shape == (0, 3)


def test_statistics():
    g = gaussian(3, 1, torch.arange(20000), 32).double()  # [N, D]
    assert abs(g.mean().item()) < 0.01
    assert abs(g.std().item() - 1) < 0.01
    assert abs((g.abs() > 1.96).double().mean().item() - 0.05) < 0.003  # the tails too
    corr_dims = torch.corrcoef(g.T) - torch.eye(32, dtype=g.dtype)
    assert corr_dims.abs().max() < 0.035  # ~4.5 sigma for 20000 samples
    corr_rows = torch.corrcoef(torch.stack([g[:-1].flatten(), g[1:].flatten()]))[0, 1]
    assert abs(corr_rows) < 0.01
    # The per-dim means are centred too (a bad hash shows up as a biased column).
    assert g.mean(0).abs().max() < 0.035


def test_rows_depend_only_on_seed_epoch_index():
    idx = torch.tensor([0, 1, 2**24 + 5, 7 * 2**24 + 3, 2**40 + 11])
    full = gaussian(9, 4, idx, 16)
    for order in ([4, 3, 2, 1, 0], [2], [1, 1, 4]):
        torch.testing.assert_close(gaussian(9, 4, idx[order], 16), full[order], atol=0, rtol=0)
    # A bigger batch around the same indices does not change them.
    big = torch.cat([torch.arange(100, 300), idx])
    torch.testing.assert_close(gaussian(9, 4, big, 16)[200:], full, atol=0, rtol=0)
    # Fewer dims are a prefix of more dims (pairs are drawn per dim index).
    torch.testing.assert_close(gaussian(9, 4, idx, 5), full[:, :5], atol=0, rtol=0)


def test_seed_epoch_and_index_all_change_the_draw():
    idx = torch.arange(64)
    base = gaussian(0, 0, idx, 8)
    for other in (gaussian(1, 0, idx, 8), gaussian(0, 1, idx, 8), gaussian(0, 0, idx + 1, 8)):
        assert not torch.allclose(base, other)
        assert torch.corrcoef(torch.stack([base.flatten(), other.flatten()]))[0, 1].abs() < 0.1
    assert not torch.allclose(gaussian(2**40, 0, idx, 8), gaussian(0, 0, idx, 8))  # high seed bits count
    assert not torch.allclose(gaussian(-1, 0, idx, 8), gaussian(2**32 - 1, 0, idx, 8))


def test_mul32_matches_python_big_ints():
    xs = torch.tensor([0, 1, 0xFFFF, 0x10000, 0xDEADBEEF, 0xFFFFFFFF])
    for c in (0x9E3779B9, 0x7FEB352D, 0xFFFFFFFF):
        got = _mul32(xs, c).tolist()
        assert got == [(x * c) & 0xFFFFFFFF for x in xs.tolist()]
