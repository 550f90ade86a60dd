"""The autoencoder stage: a decoder and class priors learnt from real images before distillation."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from d3fmt.distill.autoencoder import CACHE_NAME, AutoencoderConfig, kmeans, pretrain, pretrain_cached
from d3fmt.distill.experts import ExpertConfig, train_experts
from d3fmt.distill.trainer import DistillConfig, distill, initial_result
from d3fmt.errors import ConfigError
from d3fmt.loader.representation import unit_to_tanh
from d3fmt.models.decoder import DecoderConfig, build_decoder

DEC = DecoderConfig(family="small", z_dim=16, channels=1, image_size=8, width=32)
CFG = AutoencoderConfig(steps=300, batch=64, lr=3e-3)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x01 = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    return x01, torch.tensor(d.target)


@pytest.fixture(scope="module")
def trained(digits):
    x01, y = digits
    decoder = build_decoder(DEC)
    return pretrain(unit_to_tanh(x01), y, 10, decoder, 2, CFG, seed=1), decoder


def test_kmeans_separates_clear_groups():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])  # [60, 2]
    assign = kmeans(points, 3, 10, torch.Generator().manual_seed(1))
    groups = [set(assign[i * 20 : (i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in groups) and len(set.union(*groups)) == 3


def test_pretrain_learns_to_reconstruct_and_puts_priors_on_their_class(trained, digits):
    result, decoder = trained
    x01, y = digits
    assert result.mu.shape == result.logvar.shape == (20, 16)  # K * L rows, class-major
    assert torch.isfinite(result.logvar).all() and result.reconstruction < 0.1  # per pixel, tanh space
    # a fresh decoder gives ~0.3-0.5; the class means of the data are the yardstick below
    means = torch.stack([unit_to_tanh(x01[y == c]).mean(0) for c in range(10)])  # [10, 1, 8, 8]
    with torch.no_grad():
        decoded = build_decoder(DEC, result.decoder_state).eval()(result.mu)  # [20, 1, 8, 8]
    nearest = torch.cdist(decoded.flatten(1), means.flatten(1)).argmin(1)  # nearest class mean
    assert (nearest == torch.arange(20) // 2).float().mean() >= 0.8


def test_pretrain_is_deterministic(digits):
    x01, y = digits
    cfg = AutoencoderConfig(steps=5, batch=32)
    torch.manual_seed(0)
    a = pretrain(unit_to_tanh(x01), y, 10, build_decoder(DEC), 1, cfg, seed=4)
    torch.manual_seed(0)  # the same decoder init: the rest depends on the seed only
    b = pretrain(unit_to_tanh(x01), y, 10, build_decoder(DEC), 1, cfg, seed=4)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.logvar, b.logvar)
    assert all(torch.equal(a.decoder_state[n], b.decoder_state[n]) for n in a.decoder_state)


def test_cache_is_reused_and_keyed_by_settings(digits, tmp_path):
    x01, y = digits
    x = (x01 - 0.3) / 0.4
    cfg, ticks = AutoencoderConfig(steps=4, batch=16), []

    class Bar:
        def update(self, n):
            ticks.append(n)

    args = (x, y, 10, DEC, 1)
    first = pretrain_cached(tmp_path, *args, cfg, (0.3,), (0.4,), seed=2, progress=Bar())
    stamp = (tmp_path / CACHE_NAME).stat().st_mtime_ns
    again = pretrain_cached(tmp_path, *args, cfg, (0.3,), (0.4,), seed=2, progress=Bar())
    assert ticks == [1, 1, 1, 1, 4]  # four training steps, then the whole bar at once from the cache
    assert (tmp_path / CACHE_NAME).stat().st_mtime_ns == stamp and torch.equal(first.mu, again.mu)
    other = pretrain_cached(tmp_path, *args, cfg, (0.3,), (0.4,), seed=3)
    assert not torch.equal(first.mu, other.mu)  # another seed: recomputed, not the cached result
    (tmp_path / CACHE_NAME).write_bytes(b"not a safetensors file")
    assert torch.equal(pretrain_cached(tmp_path, *args, cfg, (0.3,), (0.4,), seed=3).mu, other.mu)


def test_distill_starts_from_the_pretrained_state(trained, digits, tmp_path):
    result, _ = trained
    x01, y = digits
    x = (x01 - 0.3) / 0.4
    traj = train_experts(x, y, 10, ExpertConfig(num_experts=1, epochs=2, width=8, batch_size=64), tmp_path,
                         data_id="digits")
    cfg = DistillConfig(iterations=1, syn_steps=1, expert_epochs=1, mmd_samples=4, mmd_real=4, mean=(0.3,),
                        std=(0.4,), lr_prior=1e-9, lr_decoder=1e-9, checkpoint_every=0)
    start = result.mu.clone()
    out = distill(x, y, 10, DEC, 2, traj, cfg, init=result)
    assert torch.allclose(out.mu, start, atol=1e-5)  # one step at lr 1e-9 from the pretrained priors
    assert out.mu.data_ptr() != result.mu.data_ptr()  # the result is its own copy (the priors were trained in place)
    zero = initial_result(result, cfg)
    assert zero.iterations == 0 and zero.lr == cfg.lr_init and torch.equal(zero.logvar, result.logvar)
    with pytest.raises(ConfigError, match="pre-trained priors"):
        distill(x, y, 10, DEC, 3, traj, cfg, init=result)  # L = 3 does not match the 2 pretrained


def test_config_errors():
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        DistillConfig(iterations=0, autoencoder=AutoencoderConfig(steps=0))
    assert DistillConfig(iterations=0).autoencoder.steps > 0  # zero iterations: the autoencoder alone
    with pytest.raises(ConfigError):
        AutoencoderConfig(steps=-1)
    with pytest.raises(ConfigError):
        AutoencoderConfig(kl_weight=-0.1)
    assert DistillConfig(autoencoder={"steps": 7}).autoencoder == AutoencoderConfig(steps=7)  # from recorded JSON


def test_image_priors_are_real_images_codes_with_the_class_variance(digits):
    """--priors images: each prior is one of its class's images, encoded; one variance row per class."""
    import d3fmt.distill.autoencoder as ae

    x01, y = digits
    seen = {}
    real_fit = ae._fit_priors

    def spy(encoder, x, yy, k, lpc, cfg, g):
        seen["codes"] = ae._encode(encoder.eval(), x)[0]
        return real_fit(encoder, x, yy, k, lpc, cfg, g)

    ae._fit_priors = spy
    try:
        cfg = AutoencoderConfig(steps=20, batch=64, priors="images")
        out = pretrain(unit_to_tanh(x01), y, 10, build_decoder(DEC), 7, cfg, seed=2)
    finally:
        ae._fit_priors = real_fit
    codes = seen["codes"]
    mu, logvar = out.mu.view(10, 7, -1), out.logvar.view(10, 7, -1)
    for c in range(10):
        members = codes[y == c]
        for row in mu[c]:  # every prior mean is the code of one image of its class
            assert (members - row).norm(dim=1).min() < 1e-5
        assert len({tuple(r.tolist()) for r in mu[c]}) == 7  # distinct images
        assert torch.equal(logvar[c], logvar[c, :1].expand(7, -1))  # the class's one variance row
    with pytest.raises(ConfigError, match="prior placement"):
        AutoencoderConfig(priors="grid")
