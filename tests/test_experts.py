import pytest
import torch

from d3fmt.distill.experts import ExpertConfig, Trajectories, train_experts
from d3fmt.errors import ConfigError
from d3fmt.models.convnet import ConvNet, ParamLayout


def _data(n=48, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float()  # separable classes
    return x, y


def _cfg(**kw):
    base = dict(num_experts=2, epochs=3, width=8, batch_size=16, augment="cropflip", lr=0.05)
    base.update(kw)
    return ExpertConfig(**base)


def test_trajectories_have_every_epoch_and_learn(tmp_path):
    x, y = _data()
    traj = train_experts(x, y, 3, _cfg(), tmp_path, x_test=x, y_test=y, data_id="toy")
    assert len(traj) == 2 and traj.num_epochs == 3
    p = ParamLayout.of(ConvNet(traj.convnet)).size
    whole = traj.trajectory(0)
    assert whole.shape == (4, p)
    assert torch.equal(traj.params(0, 2), whole[2]) and torch.equal(traj.final(1), traj.params(1, 3))
    assert not torch.equal(whole[0], whole[-1])  # training moved the weights
    assert not torch.equal(traj.params(0, 0), traj.params(1, 0))  # experts start differently
    assert all(a is not None and a > 0.6 for a in traj.test_accuracy)  # easy data is learned


def test_cache_is_reused_and_reopenable(tmp_path):
    x, y = _data()
    calls = []
    first = train_experts(x, y, 3, _cfg(), tmp_path, data_id="toy", progress=lambda *a: calls.append(a))
    assert len(calls) == 2 * 3  # one call per expert epoch
    calls.clear()
    again = train_experts(x, y, 3, _cfg(), tmp_path, data_id="toy", progress=lambda *a: calls.append(a))
    assert calls == []  # nothing retrained
    assert torch.equal(first.trajectory(1), again.trajectory(1))
    reopened = Trajectories.open(first._files[0].parent)
    assert torch.equal(reopened.params(1, 2), first.params(1, 2))
    # another data identity or config -> another cache
    train_experts(x, y, 3, _cfg(), tmp_path, data_id="other", progress=lambda *a: calls.append(a))
    assert len(calls) == 6
    assert len(list(tmp_path.glob("experts-*"))) == 2


def test_partial_cache_resumes_and_matches_uninterrupted(tmp_path):
    x, y = _data()

    def crash_on_second_expert(expert, epoch, info):
        if expert == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_experts(x, y, 3, _cfg(), tmp_path / "a", data_id="toy", progress=crash_on_second_expert)
    (cache,) = list((tmp_path / "a").glob("experts-*"))
    kept = cache / "expert_0000.safetensors"
    assert kept.exists() and not (cache / "expert_0001.safetensors").exists()
    stamp = kept.stat().st_mtime_ns
    trained = []
    resumed = train_experts(x, y, 3, _cfg(), tmp_path / "a", data_id="toy", progress=lambda e, *a: trained.append(e))
    assert set(trained) == {1} and kept.stat().st_mtime_ns == stamp
    clean = train_experts(x, y, 3, _cfg(), tmp_path / "b", data_id="toy")
    for i in range(2):
        assert torch.equal(resumed.trajectory(i), clean.trajectory(i))


def test_more_experts_trains_only_the_missing_ones(tmp_path):
    x, y = _data()
    train_experts(x, y, 3, _cfg(num_experts=1), tmp_path, data_id="toy")
    trained = []
    traj = train_experts(x, y, 3, _cfg(num_experts=3), tmp_path, data_id="toy", progress=lambda e, *a: trained.append(e))
    assert set(trained) == {1, 2} and len(traj) == 3
    assert len(train_experts(x, y, 3, _cfg(num_experts=2), tmp_path, data_id="toy")) == 2


def test_dsa_experts_and_content_hash_key(tmp_path):
    x, y = _data(n=24)
    traj = train_experts(x, y, 3, _cfg(num_experts=1, epochs=1, augment="dsa"), tmp_path)
    assert traj.num_epochs == 1
    x2 = x.clone()
    x2[0] += 1  # different content, no data_id: a different cache
    train_experts(x2, y, 3, _cfg(num_experts=1, epochs=1, augment="dsa"), tmp_path)
    assert len(list(tmp_path.glob("experts-*"))) == 2


def test_in_memory_trajectories():
    t = [torch.randn(4, 10), torch.randn(4, 10)]
    traj = Trajectories.from_tensors(None, t)
    assert traj.num_epochs == 3 and torch.equal(traj.params(1, 2), t[1][2])
    with pytest.raises(ConfigError):
        traj.params(0, 4)


def test_bad_inputs_raise(tmp_path):
    x, y = _data()
    with pytest.raises(ConfigError):
        train_experts(x, y, 2, _cfg(), tmp_path)  # label 2 outside 0..1
    with pytest.raises(ConfigError):
        train_experts(x[:, :, :, :6], y, 3, _cfg(), tmp_path)  # not square
    with pytest.raises(ConfigError):
        ExpertConfig(augment="mixup")


def test_deleted_expert_file_is_retrained_identically(tmp_path):
    x, y = _data()
    first = train_experts(x, y, 3, _cfg(), tmp_path, data_id="toy")
    before = first.trajectory(1)
    first._files[1].unlink()
    trained = []
    again = train_experts(x, y, 3, _cfg(), tmp_path, data_id="toy", progress=lambda e, *a: trained.append(e))
    assert set(trained) == {1} and len(again) == 2
    assert torch.equal(again.trajectory(1), before)


def test_auto_batch_size_keeps_enough_steps_per_epoch():
    from d3fmt.distill.experts import expert_batch_size

    assert expert_batch_size(ExpertConfig(batch_size=0), 60000) == 256
    assert expert_batch_size(ExpertConfig(batch_size=0), 1437) == 57  # digits: 25 steps an epoch
    assert expert_batch_size(ExpertConfig(batch_size=0), 100) == 16
    assert expert_batch_size(ExpertConfig(batch_size=64), 100) == 64
    with pytest.raises(ConfigError):
        ExpertConfig(batch_size=-1)
