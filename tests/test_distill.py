import math

import pytest
import torch
from sklearn.datasets import load_digits

from d3fmt.distill.experts import ExpertConfig, train_experts
from d3fmt.distill.trainer import CHECKPOINT_NAME, DistillConfig, distill
from d3fmt.errors import ConfigError
from d3fmt.loader.representation import tanh_to_normalized
from d3fmt.models.decoder import DecoderConfig, build_decoder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """sklearn digits (8x8), normalised, and two small cached experts trained on them."""
    d = load_digits()
    x01 = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    mean, std = float(x01.mean()), float(x01.std())
    x, y = (x01 - mean) / std, torch.tensor(d.target)
    cfg = ExpertConfig(num_experts=2, epochs=4, width=16, batch_size=32, seed=0)
    traj = train_experts(x, y, 10, cfg, tmp_path_factory.mktemp("experts"), data_id="digits")
    return x, y, (mean,), (std,), traj


DEC = DecoderConfig(family="small", z_dim=16, channels=1, image_size=8, width=32)


def _cfg(mean, std, **kw):
    base = dict(
        iterations=4, syn_steps=4, mean=mean, std=std, lr_prior=1e-2, lr_decoder=1e-3,
        max_start_epoch=2, mmd_samples=12, mmd_real=16, checkpoint_every=0, seed=3,
    )
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.slow
def test_total_loss_falls_on_digits(digits):
    x, y, mean, std, traj = digits
    seen = []
    res = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=60, syn_steps=6), progress=lambda i, loss: seen.append(i))
    assert seen == list(range(1, 61))
    total = res.history["total"]
    assert len(total) == 60 and all(math.isfinite(v) for v in total)
    first, last = sum(total[:10]) / 10, sum(total[-10:]) / 10
    assert last < 0.9 * first, (first, last)
    assert all(abs(t - (m + n)) < 1e-4 for t, m, n in zip(total, res.history["mtt"], res.history["mmd"]))


def test_result_layout_and_decoder_rebuilds(digits):
    x, y, mean, std, traj = digits
    res = distill(x, y, 10, DEC, 2, traj, _cfg(mean, std, iterations=2, syn_steps=2, batch_syn=7))
    assert res.mu.shape == res.logvar.shape == (20, 16)  # K * L rows, class-major
    assert res.iterations == 2 and res.lr > 0 and set(res.history) == {"mtt", "mmd", "total"}
    dec = build_decoder(DEC.to_json(), res.decoder_state)
    imgs = tanh_to_normalized(dec(res.mu[:3]), mean, std)
    assert imgs.shape == (3, 1, 8, 8)


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(digits, tmp_path):
    x, y, mean, std, traj = digits
    full = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=4, checkpoint_every=2), checkpoint_dir=tmp_path / "a")
    part = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=2), checkpoint_dir=tmp_path / "b")
    assert (tmp_path / "b" / CHECKPOINT_NAME).exists() and part.iterations == 2
    resumed = distill(
        x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=4), checkpoint_dir=tmp_path / "b", resume=True
    )
    assert resumed.iterations == 4
    assert resumed.history == full.history
    assert torch.equal(resumed.mu, full.mu) and torch.equal(resumed.logvar, full.logvar)
    assert resumed.lr == full.lr
    for name, t in full.decoder_state.items():
        assert torch.equal(resumed.decoder_state[name], t), name
    # without resume the run starts afresh and differs from the continued one after 2 its
    fresh = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=2), checkpoint_dir=tmp_path / "b")
    assert fresh.history == part.history


def test_resume_with_other_settings_raises(digits, tmp_path):
    x, y, mean, std, traj = digits
    distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=1), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="made with other settings or data"):
        distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=2, seed=9), checkpoint_dir=tmp_path, resume=True)


def test_bad_inputs_raise(digits):
    x, y, mean, std, traj = digits
    with pytest.raises(ConfigError, match="but the data is 1x8x8"):  # decoder for 28 px, data is 8 px
        distill(x, y, 10, DecoderConfig(family="small", z_dim=8, channels=1, image_size=28, width=8), 1, traj, _cfg(mean, std))
    with pytest.raises(ConfigError, match="exceeds the experts' 4 epochs"):  # experts have only 4 epochs
        distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, max_start_epoch=4))
    with pytest.raises(ConfigError, match="mean/std have 3 channels, the data has 1"):  # RGB normalisation for grey data
        distill(x, y, 10, DEC, 1, traj, _cfg((0.5,) * 3, (0.5,) * 3))


@pytest.mark.slow
def test_warmup_trains_by_mmd_alone_with_alpha_frozen(digits):
    x, y, mean, std, traj = digits
    seen = []
    res = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=5, warmup=3),
                  progress=lambda i, info: seen.append(info["lr"]))
    assert res.history["mtt"][:3] == [0.0, 0.0, 0.0] and all(v > 0 for v in res.history["mtt"][3:])
    assert seen[0] == seen[1] == seen[2] == pytest.approx(0.01)  # alpha frozen while warming up
    assert res.history["mmd"][0] > 0


def test_mmd_classes_bounds_each_iterations_mmd_batch(digits, monkeypatch):
    import d3fmt.distill.trainer as trainer

    x, y, mean, std, traj = digits
    seen, features = [], trainer.functional_features
    monkeypatch.setattr(trainer, "functional_features",
                        lambda net, flat, xb, layout: seen.append(xb.shape[0]) or features(net, flat, xb, layout))
    res = distill(x, y, 10, DEC, 1, traj, _cfg(mean, std, iterations=2, syn_steps=1, warmup=2, mmd_classes=3))
    assert seen == [3 * 16, 3 * 12] * 2  # 3 classes x mmd_real, then 3 classes x mmd_samples
    assert all(math.isfinite(v) and v > 0 for v in res.history["mmd"])
    g = torch.Generator().manual_seed(0)
    task = type("T", (), {"num_classes": 10, "cfg": _cfg(mean, std, mmd_classes=4)})
    classes, scale = trainer._mmd_classes(task, g)
    assert classes.tolist() == sorted(set(classes.tolist())) and len(classes) == 4 and scale == 2.5
    with pytest.raises(ConfigError, match="mmd_classes"):
        _cfg(mean, std, mmd_classes=-1)
