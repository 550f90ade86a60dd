"""D3Dataset and D3Stream: the sampling contract, reproducibility, DataLoader integration."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import d3fmt
from d3fmt.errors import ConfigError, FormatError
from d3fmt.loader.dataset import CLASS_STRIDE, D3Dataset, D3Stream
from d3fmt.loader.noise import gaussian
from d3fmt.loader.representation import normalize

ATOL = 1e-6  # batched convolutions may round differently from single ones


def _stack(items):
    return torch.stack([x for x, _ in items]), [y for _, y in items]


def test_readme_example(make_d3, tmp_path, monkeypatch):
    make_d3("x.d3", num_classes=3, samples_per_class=100)
    monkeypatch.chdir(tmp_path)
    from torch.utils.data import DataLoader

    import d3fmt

    loader = DataLoader(d3fmt.D3Dataset("x.d3"), batch_size=256)
    images, labels = next(iter(loader))
    assert images.shape == (256, 1, 8, 8) and images.dtype == torch.float32
    assert labels.tolist() == [0] * 100 + [1] * 100 + [2] * 56
    assert sum(len(y) for _, y in loader) == 300


def test_items_follow_the_contract(d3_file):
    ds = D3Dataset(d3_file)
    assert len(ds) == 4 * 5  # header samples_per_class = 5
    image, label = ds[7]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1
    assert label == 1 and isinstance(label, int)
    assert [ds[i][1] for i in range(0, 20, 5)] == [0, 1, 2, 3]
    assert torch.equal(ds[-1][0], ds[19][0])
    with pytest.raises(IndexError):
        ds[20]
    # item i = class sel[i // n], slot i % n, prior slot % L, noise index class * 2**24 + slot
    rep = ds._representation()
    eps = gaussian(0, 0, torch.tensor([1 * CLASS_STRIDE + 2]), rep.z_max)
    want = (rep.decode(torch.tensor([1]), torch.tensor([0]), eps) + 1) / 2
    torch.testing.assert_close(ds[7][0], want[0], atol=ATOL, rtol=0)


def test_same_sample_alone_in_batches_and_in_any_order(d3_file):
    ds = D3Dataset(d3_file, samples_per_class=12, seed=5)
    alone = torch.stack([ds[i][0] for i in range(len(ds))])
    batched, labels = _stack(ds.__getitems__(range(len(ds))))
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)
    perm = torch.randperm(len(ds)).tolist()
    shuffled, _ = _stack(ds.__getitems__(perm))
    torch.testing.assert_close(shuffled, alone[perm], atol=ATOL, rtol=0)
    assert labels == [i // 12 for i in range(48)]


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_and_batchings_give_the_same_samples(d3_file, workers):
    ds = D3Dataset(d3_file, samples_per_class=8, seed=1)
    want, _ = _stack(ds.__getitems__(range(len(ds))))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    for batch_size in (1, 7, 32):
        loader = DataLoader(ds, batch_size=batch_size, sampler=perm, num_workers=workers)
        got = torch.cat([x for x, _ in loader])
        labels = torch.cat([y for _, y in loader])
        torch.testing.assert_close(got, want[perm], atol=ATOL, rtol=0)
        assert labels.tolist() == [i // 8 for i in perm]


def test_spawned_worker_processes_reopen_the_file(d3_file):
    """Workers started with 'spawn' get the dataset pickled by path, with no tensors."""
    ds = D3Dataset(d3_file, samples_per_class=6, seed=2, epoch=3)
    state = ds.__getstate__()
    assert state["_rep"] is None and not any(isinstance(v, torch.Tensor) for v in state.values())
    loader = DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    got = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(got, _stack(ds.__getitems__(range(len(ds))))[0], atol=ATOL, rtol=0)


def test_distributed_sampler_shards_agree_with_direct_reads(d3_file):
    ds = D3Dataset(d3_file, samples_per_class=10)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=4)
        sampler.set_epoch(1)
        ds.set_epoch(1)
        index = list(sampler)
        got = torch.cat([x for x, _ in DataLoader(ds, batch_size=6, sampler=sampler)])
        torch.testing.assert_close(got, _stack(ds.__getitems__(index))[0], atol=ATOL, rtol=0)
        seen += index
    assert sorted(seen) == list(range(len(ds)))


def test_epoch_and_seed_change_the_noise_only(d3_file):
    ds = D3Dataset(d3_file, seed=0)
    first = ds[3][0]
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.allclose(ds[3][0], first)
    ds.set_epoch(0)
    assert torch.equal(ds[3][0], first)
    assert not torch.allclose(D3Dataset(d3_file, seed=9)[3][0], first)
    assert torch.equal(D3Dataset(d3_file, seed=0)[3][0], first)


def test_class_selection_keeps_each_class_samples(d3_file):
    full = D3Dataset(d3_file, samples_per_class=4, seed=3)
    sub = D3Dataset(d3_file, samples_per_class=4, seed=3, classes=[3, 1])
    assert len(sub) == 8 and [sub[i][1] for i in (0, 4)] == [3, 1]
    torch.testing.assert_close(sub[1][0], full[3 * 4 + 1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(sub[6][0], full[1 * 4 + 2][0], atol=ATOL, rtol=0)
    for bad in ([9], [1, 1], []):
        with pytest.raises(ConfigError):
            D3Dataset(d3_file, classes=bad)


def test_prior_means_and_soft_labels(d3_file):
    ds = D3Dataset(d3_file, samples_per_class=4, include_means=True, labels="soft")
    rep = ds._representation()
    means = (rep.decode(torch.tensor([2, 2]), torch.tensor([0, 1]), None) + 1) / 2
    torch.testing.assert_close(_stack(ds.__getitems__([8, 9]))[0], means, atol=ATOL, rtol=0)
    assert not torch.allclose(ds[10][0], ds[8][0])  # slot 2 is prior 0 plus noise
    _, soft = ds[9]
    assert soft.shape == (4,) and abs(float(soft.sum()) - 1) < 1e-5
    torch.testing.assert_close(soft, rep.soft_labels(torch.tensor([2]), torch.tensor([1]))[0])
    soft_batch = next(iter(DataLoader(ds, batch_size=5)))[1]
    assert soft_batch.shape == (5, 4)


def test_fewer_samples_than_priors_take_turns_over_epochs(make_d3):
    # n < L (or < 2L with means): epoch e starts where epoch e-1 stopped, so every prior is used.
    path = make_d3("many.d3", num_classes=2, latents_per_class=5, soft=True, samples_per_class=2, z_dim=8, width=8)
    seen, means = set(), set()
    for epoch in range(5):  # 5 epochs x 2 items cover the 10 = 2 x 5 mean/draw turns of class 0
        ds = D3Dataset(path, seed=1, include_means=True, labels="soft")
        ds.set_epoch(epoch)
        draw = ds.plan.locate(torch.arange(2), epoch=epoch)
        for prior, is_mean in zip(draw.prior.tolist(), draw.is_mean.tolist()):
            (means if is_mean else seen).add(prior)
    assert means == set(range(5)) and seen == set(range(5))
    rep = D3Dataset(path)._representation()
    ds = D3Dataset(path, seed=1)  # no means: period L = 5; epoch 1 holds priors 2 and 3
    ds.set_epoch(1)
    eps = gaussian(1, 1, torch.tensor([0, 1]), rep.z_max)
    want = (rep.decode(torch.tensor([0, 0]), torch.tensor([2, 3]), eps) + 1) / 2
    torch.testing.assert_close(_stack(ds.__getitems__([0, 1]))[0], want, atol=ATOL, rtol=0)


def test_options_are_validated(make_d3, d3_file):
    with pytest.raises(ConfigError, match="soft"):
        D3Dataset(make_d3("hard.d3", soft=False), labels="soft")
    with pytest.raises(ConfigError):
        D3Dataset(d3_file, labels="fuzzy")
    with pytest.raises(ConfigError):
        D3Dataset(d3_file, samples_per_class=0)
    with pytest.raises(ConfigError):
        D3Stream(d3_file, batch_size=0)


def test_normalize_and_transform(d3_file):
    raw = D3Dataset(d3_file)[2][0]
    norm = D3Dataset(d3_file, normalize=True)[2][0]
    torch.testing.assert_close(norm, normalize(raw, [0.5], [0.25]))
    flipped = D3Dataset(d3_file, transform=lambda x: x.flip(-1))[2][0]
    assert torch.equal(flipped, raw.flip(-1))


def test_bad_files_fail_at_construction(tmp_path, d3_file):
    garbage = tmp_path / "garbage.d3"
    garbage.write_bytes(b"not a d3 file at all" * 10)
    truncated = tmp_path / "truncated.d3"
    truncated.write_bytes(d3_file.read_bytes()[:-100])
    for path in (garbage, truncated, tmp_path / "missing.d3"):
        with pytest.raises(FormatError):
            D3Dataset(path)
        with pytest.raises(FormatError):
            D3Stream(path, 8)


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat(make_d3):
    ds = D3Dataset(make_d3(image_shape=(3, 32, 32), samples_per_class=3000, num_classes=2, width=8))
    for x, _ in DataLoader(ds, batch_size=256):  # warm up allocator and kernels
        break
    before = _rss_bytes()
    n = 0
    for x, _ in DataLoader(ds, batch_size=256):
        n += x.shape[0]
    assert n == 6000  # 6000 * 3*32*32 * 4 bytes = 74 MB if anything were kept
    assert _rss_bytes() - before < 25 * 2**20


# --------------------------------------------------------------------------- D3Stream


def test_stream_matches_dataset(d3_file):
    ds = D3Dataset(d3_file, samples_per_class=9, seed=7, epoch=2, include_means=True)
    stream = D3Stream(d3_file, batch_size=8, seed=7, epoch=2, samples_per_class=9,
                      include_means=True, shuffle=False)  # fmt: skip
    assert len(stream) == 5 and stream.num_samples == 36
    got = list(stream)
    images = torch.cat([x for x, _ in got])
    labels = torch.cat([y for _, y in got])
    want, want_labels = _stack(ds.__getitems__(range(36)))
    torch.testing.assert_close(images, want, atol=ATOL, rtol=0)
    assert labels.tolist() == want_labels
    idx = torch.tensor([35, 0, 17])
    torch.testing.assert_close(stream.batch(idx)[0], want[idx], atol=ATOL, rtol=0)


def test_stream_shuffles_each_epoch_and_covers_everything(d3_file):
    stream = D3Stream(d3_file, batch_size=6, samples_per_class=5, drop_last=False)
    first = stream.order()
    assert sorted(first.tolist()) == list(range(20))
    stream.set_epoch(1)
    assert not torch.equal(stream.order(), first)
    assert sum(x.shape[0] for x, _ in stream) == 20
    assert len(D3Stream(d3_file, batch_size=6, samples_per_class=5, drop_last=True)) == 3


def test_stream_through_dataloader_workers_is_the_same_stream(d3_file):
    stream = D3Stream(d3_file, batch_size=4, samples_per_class=5, seed=3)
    direct = list(stream)
    via = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert len(via) == len(direct) == 5
    for (a, ya), (b, yb) in zip(direct, via):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        assert torch.equal(ya, yb)


def test_stream_bf16_and_autograd_friendly_output(d3_file):
    fp32 = D3Stream(d3_file, batch_size=20, samples_per_class=5, shuffle=False)
    bf16 = D3Stream(d3_file, batch_size=20, samples_per_class=5, shuffle=False, dtype=torch.bfloat16)
    (a, _), (b, _) = next(iter(fp32)), next(iter(bf16))
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, atol=0.03, rtol=0)
    # Decoded in inference mode, but the batch is an ordinary tensor a model can train on.
    weight = torch.ones(1, 1, 3, 3, requires_grad=True)
    torch.nn.functional.conv2d(a, weight).sum().backward()
    assert weight.grad is not None


def test_lazy_top_level_names():
    assert d3fmt.D3Dataset is D3Dataset and d3fmt.D3Stream is D3Stream


def test_bf16_dataset_returns_float32_close_to_fp32(d3_file):
    fp32 = D3Dataset(d3_file)
    bf16 = D3Dataset(d3_file, dtype=torch.bfloat16)
    a, b = _stack(fp32.__getitems__(range(6)))[0], _stack(bf16.__getitems__(range(6)))[0]
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=0.03, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (hardware, not a missing feature)")
def test_cuda_stream_matches_cpu_dataset(d3_file):
    ds = D3Dataset(d3_file, samples_per_class=8, seed=4)
    stream = D3Stream(d3_file, batch_size=32, device="cuda", samples_per_class=8, seed=4, shuffle=False)
    images, labels = next(iter(stream))
    assert images.device.type == "cuda"
    want, want_labels = _stack(ds.__getitems__(range(32)))
    torch.testing.assert_close(images.cpu(), want, atol=1e-4, rtol=0)
    assert labels.cpu().tolist() == want_labels
    from d3fmt.loader.noise import gaussian

    idx = torch.arange(1000) * 7919
    torch.testing.assert_close(gaussian(1, 2, idx.cuda(), 16).cpu(), gaussian(1, 2, idx, 16), atol=1e-5, rtol=0)
