import torch
import torch.nn.functional as F

from d3fmt.augment import DSAParams
from d3fmt.distill.mtt import trajectory_matching_loss
from d3fmt.models.convnet import ConvNet, ConvNetConfig, flatten_params, load_flat_
from d3fmt.models.decoder import DecoderConfig, build_decoder


def _setup(seed=0):
    torch.manual_seed(seed)
    net = ConvNet(ConvNetConfig(1, 3, 8, width=8))
    start = flatten_params(net)
    target = start + 0.01 * torch.randn_like(start)
    return net, start, target


def test_gradient_reaches_alpha_decoder_and_priors():
    net, start, target = _setup()
    decoder = build_decoder(DecoderConfig(family="small", z_dim=4, channels=1, image_size=8, width=8)).train()
    mu = torch.randn(6, 4, requires_grad=True)  # 3 classes x 2 latents, class-major
    logvar = torch.full((6, 4), -1.0, requires_grad=True)
    alpha = torch.tensor(0.01, requires_grad=True)
    g = torch.Generator().manual_seed(0)

    def sample_batch(_k):
        eps = torch.randn(6, 4, generator=g)
        return decoder(mu + torch.exp(0.5 * logvar) * eps), torch.arange(6) // 2

    out = trajectory_matching_loss(net, start, target, alpha, sample_batch, 3, dsa_params=DSAParams(), generator=g)
    out.loss.backward()
    assert out.loss.dim() == 0 and out.start_distance > 0
    for name, t in [("alpha", alpha), ("mu", mu), ("logvar", logvar)] + list(decoder.named_parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_zero_learning_rate_leaves_student_at_start():
    net, start, target = _setup(1)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    out = trajectory_matching_loss(net, start, target, torch.tensor(0.0), lambda k: (x, torch.arange(4) % 3), 2)
    assert abs(float(out.loss.detach()) - 1.0) < 1e-6


def test_unrolled_student_equals_plain_sgd_training():
    """The unrolled inner loop is exactly K steps of SGD: with that as target the loss is 0."""
    net, start, _ = _setup(2)
    xs = [torch.randn(5, 1, 8, 8) for _ in range(4)]
    ys = [torch.randint(0, 3, (5,)) for _ in range(4)]
    ref = load_flat_(ConvNet(net.cfg), start)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    target = flatten_params(ref)
    out = trajectory_matching_loss(net, start, target, torch.tensor(0.05), lambda k: (xs[k], ys[k]), 4)
    assert float(out.loss.detach()) < 1e-8
    assert out.start_distance > 0
