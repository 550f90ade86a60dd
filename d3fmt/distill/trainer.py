"""The D3 distiller loop: learn latent priors + a decoder by trajectory matching and MMD.

One subtask (class subset) at a time; federated distillation runs this per subset.
Per iteration (method.md):

1. MTT: a random expert e and start epoch t < max_start_epoch; the student starts at
   theta*_t, takes ``syn_steps`` SGD steps (lr alpha) on freshly decoded, DSA-augmented
   batches, and the loss is its normalised distance to theta*_{t+expert_epochs}.
2. MMD: expert e's *final* parameters, frozen, embed ``mmd_real`` real images and
   ``mmd_samples`` decoded samples per class (the same DSA transform on both: Siamese);
   the squared MMD (mixture of RBF kernels) is summed over classes. With
   ``mmd_classes`` = k > 0 and more classes than k, each iteration's MMD covers k random
   classes (scaled by K / k), so its memory and time stop growing with the class count.
3. total = mtt + mmd_weight * mmd; one step of each optimiser: priors SGD (momentum
   0.5), decoder Adam (weight decay 1e-5), alpha SGD (momentum 0.5, as the MTT
   reference's learnable lr), alpha then clamped to >= ``lr_min``.

Priors: ``mu`` [K*L, z] class-major (row r is class r // L). With ``init`` (what `d3 pack`
passes by default) the decoder and priors start from the autoencoder stage of
:mod:`d3fmt.distill.autoencoder`, so the losses below fine-tune a decoder that already
draws the class's images. Without it (method.md's start) the decoder is random and
``mu`` is N(0, init_mu_std^2), so classes start apart in latent space, with ``logvar`` =
``init_logvar`` (log 0.1: sigma ~0.32, samples stay near their prior mean early on).
Both are learned.

Learnable lr: alpha is stored directly (not its log) and trained by SGD as in the MTT
reference. With a randomly initialised decoder the first synthetic batches push the
student in useless directions, and d(loss)/d(alpha) is then about 2 / alpha, so on small
data (few expert steps per epoch) alpha can collapse towards 0 within a few iterations,
after which the student no longer moves and no signal reaches the decoder. The floor
``lr_min`` (default lr_init / 10) prevents that; it is not part of method.md. The
optional ``warmup`` does the same from the other side: its first iterations train the
priors and decoder by MMD alone (alpha frozen, no trajectory matching), so that MTT
starts from decoded samples that already look like the class's real images.
Late start epochs make ||theta*_t - theta*_{t+M}|| small and the normalised MTT gradient
spiky; ``max_start_epoch`` bounds t as in the reference.

Pixels: the decoder emits t in [-1, 1]; the ConvNets see ``(t + 1) / 2`` normalised with
the per-channel ``mean``/``std`` of :class:`DistillConfig` (the rule of
``d3fmt.loader.representation``), i.e. the same normalisation the experts were trained with.

All randomness (experts, epochs, eps, DSA, real samples) comes from one CPU
``torch.Generator`` seeded with ``seed``, and the decoder is initialised under a forked
global RNG, so a run is reproducible and ``resume=True`` from a checkpoint continues
exactly like an uninterrupted run. Checkpoints are one safetensors file written
atomically: tensors (priors, decoder, alpha, optimiser states, RNG state as uint8,
history) plus a JSON string in its metadata (iteration, config hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from d3fmt.augment import DSAParams, dsa, random_seed
from d3fmt.device import cpu_allocator_tuned
from d3fmt.distill.autoencoder import AutoencoderConfig, Pretrained
from d3fmt.distill.experts import Trajectories
from d3fmt.distill.mmd import BANDWIDTHS, mmd2
from d3fmt.distill.mtt import trajectory_matching_loss
from d3fmt.distill.storage import restore_rng, rng_state_tensor, save_tensors
from d3fmt.errors import ConfigError, D3IOError, TrainingError
from d3fmt.loader.representation import tanh_to_normalized
from d3fmt.models.convnet import ConvNet, ParamLayout, functional_features
from d3fmt.models.decoder import Decoder, DecoderConfig, build_decoder
from d3fmt.pixels import select

CHECKPOINT_NAME = "distill_checkpoint.safetensors"
CHECKPOINT_VERSION = 1
LOSS_KEYS = ("mtt", "mmd", "total")
# method.md reference learning rates by decoder family: (priors SGD, decoder Adam)
FAMILY_LRS = {"small": (3e-4, 3e-4), "medium": (5e-3, 8e-5), "large": (5e-3, 8e-5)}


@dataclass
class DistillConfig:
    iterations: int = 1000
    syn_steps: int = 10
    expert_epochs: int = 2  # M
    max_start_epoch: int = 0  # t < max_start_epoch; 0 = as late as the trajectories allow
    batch_syn: int = 0  # synthetic samples per inner step; 0 = every prior once
    lr_prior: float = 0.0  # 0 = by decoder family (small 3e-4, medium/large 5e-3)
    prior_momentum: float = 0.5
    lr_decoder: float = 0.0  # 0 = by decoder family (small 3e-4, medium/large 8e-5)
    decoder_weight_decay: float = 1e-5
    lr_init: float = 0.01  # initial learnable student lr alpha
    lr_lr: float = 1e-6  # SGD lr of alpha (method.md: 1e-6..5e-6)
    lr_momentum: float = 0.5
    lr_min: float = 1e-3  # alpha is clamped to >= this after each step (see module doc)
    mmd_weight: float = 1.0
    mmd_samples: int = 16  # decoded samples per class for MMD
    mmd_real: int = 32  # real images per class for MMD
    mmd_classes: int = 0  # classes in one iteration's MMD (random, scaled by K / k); 0 = all
    mmd_dsa: bool = True  # Siamese DSA on both MMD batches
    bandwidths: tuple[float, ...] = BANDWIDTHS
    dsa: DSAParams = field(default_factory=DSAParams)
    use_dsa: bool = True  # DSA on the synthetic batches of the MTT inner loop
    mean: tuple[float, ...] = (0.5,)  # per-channel normalisation, [0, 1] pixel units
    std: tuple[float, ...] = (0.5,)  # (0.5, 0.5) = the identity on tanh space
    init_mu_std: float = 1.0
    init_logvar: float = math.log(0.1)
    seed: int = 0
    checkpoint_every: int = 50  # 0 = only at the end (= `d3 pack --checkpoint-every`)
    amp: bool = True  # bf16 autocast for MMD feature extraction, CUDA only
    warmup: int = 0  # first iterations: MMD only, alpha frozen (see the module docstring)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # init (d3fmt.distill.autoencoder)

    def __post_init__(self):
        if isinstance(self.dsa, dict):
            self.dsa = DSAParams(**self.dsa)
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderConfig(**self.autoencoder)
        self.bandwidths = tuple(float(b) for b in self.bandwidths)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.mmd_classes < 0:
            raise ConfigError(f"distill mmd_classes must be >= 0 (0 = all classes), got {self.mmd_classes}")
        for name in ("syn_steps", "expert_epochs", "mmd_samples", "mmd_real"):
            if getattr(self, name) < 1:
                raise ConfigError(f"distill {name} must be >= 1, got {getattr(self, name)}")
        if self.iterations < 0 or (self.iterations == 0 and self.autoencoder.steps == 0):
            raise ConfigError("distill iterations must be >= 1, or >= 0 with autoencoder pre-training")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ConfigError("distill mean/std must be per-channel lists of equal length with std > 0")

    def to_json(self) -> dict:
        return asdict(self)

    def learning_rates(self, family: str) -> tuple[float, float]:
        prior, decoder = FAMILY_LRS.get(family, FAMILY_LRS["small"])
        return (self.lr_prior or prior, self.lr_decoder or decoder)


@dataclass
class DistillResult:
    mu: torch.Tensor  # [K*L, z] class-major: row r is class r // L
    logvar: torch.Tensor  # [K*L, z]
    decoder_state: dict[str, torch.Tensor]  # Decoder.state_dict() names
    lr: float  # learned student learning rate alpha
    history: dict[str, list[float]]  # "mtt", "mmd", "total": one value per iteration
    iterations: int
    seconds: float  # wall time of the iterations run in this call


@dataclass
class _State:
    """Everything that evolves during distillation (and is checkpointed)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    alpha: torch.Tensor
    decoder: Decoder
    opt_prior: torch.optim.Optimizer
    opt_decoder: torch.optim.Optimizer
    opt_lr: torch.optim.Optimizer
    generator: torch.Generator
    history: list[list[float]]  # [iteration][mtt, mmd, total]

    @property
    def iteration(self) -> int:
        return len(self.history)


@dataclass
class _Task:
    """What does not change during a run: data, experts, model templates."""

    x: torch.Tensor  # [N, C, H, W] normalised, on device
    class_start: torch.Tensor  # [K] first index of each class in the class-sorted x
    class_count: torch.Tensor  # [K]
    num_classes: int
    lpc: int
    trajectories: Trajectories
    net: ConvNet
    layout: ParamLayout
    max_start: int
    cfg: DistillConfig
    device: torch.device


def distill(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    decoder_cfg: DecoderConfig,
    latents_per_class: int,
    trajectories: Trajectories,
    cfg: DistillConfig,
    *,
    device="cpu",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress=None,
    init: Pretrained | None = None,
) -> DistillResult:
    """Distil one class subset: x [N, C, H, W] normalised (float32, or uint8
    :class:`d3fmt.pixels.Pixels` normalised per batch), y int64 [N] in 0..K-1.

    ``progress``: a tqdm-like object (``update(1)`` + ``set_postfix(losses)``) or a
    callable ``progress(iteration, losses)``. With ``checkpoint_dir`` a checkpoint is
    written every ``cfg.checkpoint_every`` iterations and at the end; ``resume=True``
    continues from it (same config required), else a fresh run overwrites it. ``init``:
    the autoencoder stage's decoder and priors to start from (see
    :func:`d3fmt.distill.autoencoder.pretrain`) instead of a random decoder and N(0, I);
    on the CPU its priors are trained in place, not copied (at ImageNet scale they are
    hundreds of MB): pass a copy to keep them.
    """
    device = torch.device(device)
    task = _make_task(x, y, num_classes, decoder_cfg, latents_per_class, trajectories, cfg, device)
    state = _init_state(task, decoder_cfg, init)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    key = _config_hash(cfg, decoder_cfg, latents_per_class, num_classes, x.shape, len(trajectories))
    if resume and ckpt is not None and ckpt.exists():
        _load_checkpoint(ckpt, state, key, cfg.iterations)
    t0 = time.perf_counter()
    with cpu_allocator_tuned(device):  # reuse freed activation memory in this loop (see d3fmt.device)
        while state.iteration < cfg.iterations:
            losses = _iteration(task, state)
            state.history.append([losses[k] for k in LOSS_KEYS])
            _report(progress, state.iteration, losses)
            done = state.iteration
            if ckpt is not None and (done == cfg.iterations or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                _save_checkpoint(ckpt, state, key)
    for opt in (state.opt_prior, state.opt_decoder, state.opt_lr):  # gradients and momenta: free them before
        opt.zero_grad(set_to_none=True)  # the result copies the priors (each is K*L*z values)
        opt.state.clear()
    return _result(state, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# Set-up.
# ---------------------------------------------------------------------------------------


def _make_task(x, y, num_classes, decoder_cfg, lpc, trajectories, cfg, device) -> _Task:
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise ConfigError(f"distill needs x [N, C, H, W] and y [N], got {list(x.shape)} and {list(y.shape)}")
    c, h, w = x.shape[1:]
    if (decoder_cfg.channels, decoder_cfg.image_size, decoder_cfg.image_size) != (c, h, w):
        raise ConfigError(
            f"decoder makes {decoder_cfg.channels}x{decoder_cfg.image_size}x{decoder_cfg.image_size} images "
            f"but the data is {c}x{h}x{w}; build the decoder config for the data's shape"
        )
    net_cfg = trajectories.convnet
    if (net_cfg.channels, net_cfg.num_classes, net_cfg.image_size) != (c, num_classes, h):
        raise ConfigError("the expert trajectories were trained on other classes or image shapes; retrain the experts")
    if len(cfg.mean) != c:
        raise ConfigError(f"distill mean/std have {len(cfg.mean)} channels, the data has {c}; pass per-channel values")
    if lpc < 1:
        raise ConfigError(f"latents_per_class must be >= 1, got {lpc}")
    counts = torch.bincount(y, minlength=num_classes)
    if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= num_classes or int(counts.min()) == 0:
        raise ConfigError(f"every class 0..{num_classes - 1} needs real images for MMD; some class has none")
    max_start = cfg.max_start_epoch or (trajectories.num_epochs - cfg.expert_epochs + 1)
    if max_start < 1 or max_start - 1 + cfg.expert_epochs > trajectories.num_epochs:
        raise ConfigError(
            f"max_start_epoch {max_start} + expert_epochs {cfg.expert_epochs} exceeds the experts' "
            f"{trajectories.num_epochs} epochs; train longer experts or lower them"
        )
    order = torch.argsort(y, stable=True)
    if bool(torch.equal(order, torch.arange(order.numel()))):
        order = None  # already grouped by class (sources list records by class): no copy
    net = ConvNet(net_cfg).to(device)
    return _Task(
        x=(x if order is None else select(x, order)).to(device),  # uint8 Pixels stay uint8 on the device
        class_start=(torch.cumsum(counts, 0) - counts),
        class_count=counts,
        num_classes=num_classes,
        lpc=lpc,
        trajectories=trajectories,
        net=net,
        layout=ParamLayout.of(net),
        max_start=max_start,
        cfg=cfg,
        device=device,
    )


def _init_state(task: _Task, decoder_cfg: DecoderConfig, init: Pretrained | None = None) -> _State:
    cfg, device = task.cfg, task.device
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # decoder init depends on the seed only
        decoder = build_decoder(decoder_cfg).to(device).train()
    n_priors = task.num_classes * task.lpc
    if init is None:
        mu = torch.randn(n_priors, decoder_cfg.z_dim, generator=g) * cfg.init_mu_std
        logvar = torch.full((n_priors, decoder_cfg.z_dim), cfg.init_logvar)
    else:
        if tuple(init.mu.shape) != (n_priors, decoder_cfg.z_dim):
            raise ConfigError(f"pre-trained priors are {list(init.mu.shape)}, expected {[n_priors, decoder_cfg.z_dim]}")
        decoder.load_state_dict(init.decoder_state)
        _skip_normals(g, n_priors * decoder_cfg.z_dim)  # the stream a random start would have drawn
        mu, logvar = init.mu.detach(), init.logvar.detach()  # trained in place: no copy of K*L*z values
    mu = mu.to(device).requires_grad_(True)
    logvar = logvar.to(device).requires_grad_(True)
    alpha = torch.tensor(cfg.lr_init, device=device).requires_grad_(True)
    lr_prior, lr_decoder = cfg.learning_rates(decoder_cfg.family)
    return _State(
        mu=mu,
        logvar=logvar,
        alpha=alpha,
        decoder=decoder,
        opt_prior=torch.optim.SGD([mu, logvar], lr=lr_prior, momentum=cfg.prior_momentum),
        opt_decoder=torch.optim.Adam(decoder.parameters(), lr=lr_decoder, weight_decay=cfg.decoder_weight_decay),
        opt_lr=torch.optim.SGD([alpha], lr=cfg.lr_lr, momentum=cfg.lr_momentum),
        generator=g,
        history=[],
    )


def _skip_normals(g: torch.Generator, count: int, chunk: int = 1 << 16) -> None:
    """Advance ``g`` as ``torch.randn(count)`` would, a chunk at a time (the same stream:
    CPU normals are drawn in blocks of 16 and the chunk is a multiple of 16)."""
    while count > 0:
        torch.randn(min(chunk, count), generator=g)
        count -= chunk


# ---------------------------------------------------------------------------------------
# One iteration.
# ---------------------------------------------------------------------------------------


def _decode(task: _Task, state: _State, priors: torch.Tensor) -> torch.Tensor:
    """Fresh samples of the given prior rows [B] -> normalised images [B, C, H, W]."""
    eps = torch.randn(priors.numel(), state.mu.shape[1], generator=state.generator).to(task.device)
    z = state.mu[priors] + torch.exp(0.5 * state.logvar[priors]) * eps  # [B, z]
    return tanh_to_normalized(state.decoder(z), task.cfg.mean, task.cfg.std)


def _inner_priors(task: _Task, g: torch.Generator) -> torch.Tensor:
    """Prior rows of one inner-loop batch [B]: every prior once, or batch_syn of them."""
    n = task.num_classes * task.lpc
    b = task.cfg.batch_syn or n
    if b == n:
        return torch.arange(n)
    reps = math.ceil(b / n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:b]


def _mtt_loss(task: _Task, state: _State, expert: int, start_epoch: int):
    g, traj = state.generator, task.trajectories
    start = traj.params(expert, start_epoch).to(task.device)
    target = traj.params(expert, start_epoch + task.cfg.expert_epochs).to(task.device)

    def sample_batch(_k):
        priors = _inner_priors(task, g).to(task.device)
        return _decode(task, state, priors), priors // task.lpc

    return trajectory_matching_loss(
        task.net,
        start,
        target,
        state.alpha,
        sample_batch,
        task.cfg.syn_steps,
        dsa_params=task.cfg.dsa if task.cfg.use_dsa else None,
        generator=g,
        layout=task.layout,
    )


def _mmd_loss(task: _Task, state: _State, expert: int) -> torch.Tensor:
    """Sum over classes of MMD^2(real features of c, decoded features of c); over
    ``mmd_classes`` random classes times K / k when that is set and below K."""
    cfg, g, dev = task.cfg, state.generator, task.device
    classes, scale = _mmd_classes(task, g)  # [k]
    k = classes.numel()
    # real: mmd_real indices per class, drawn with replacement inside the class block
    u = torch.rand(k, cfg.mmd_real, generator=g)
    real_idx = task.class_start[classes].view(k, 1) + (u * task.class_count[classes].view(k, 1)).long()  # [k, n]
    x_real = task.x[real_idx.flatten().to(dev)]  # [k*n, C, H, W]
    # synthetic: mmd_samples per class, each from a random one of the class's L priors
    slots = torch.randint(task.lpc, (k, cfg.mmd_samples), generator=g)
    priors = (classes.view(k, 1) * task.lpc + slots).flatten().to(dev)  # [k*m]
    x_syn = _decode(task, state, priors)  # [K*m, C, H, W]
    if cfg.mmd_dsa and cfg.dsa.families:
        seed = random_seed(g)
        x_real = dsa(x_real, cfg.dsa, seed=seed, batch_shared=True)
        x_syn = dsa(x_syn, cfg.dsa, seed=seed, batch_shared=True)
    final = task.trajectories.final(expert).to(dev)
    amp = cfg.amp and dev.type == "cuda"
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            f_real = functional_features(task.net, final, x_real, task.layout)  # [K*n, D]
        f_syn = functional_features(task.net, final, x_syn, task.layout)  # [K*m, D]
    d = f_real.shape[1]
    return mmd2(f_real.view(k, cfg.mmd_real, d), f_syn.view(k, cfg.mmd_samples, d), cfg.bandwidths).sum() * scale


def _mmd_classes(task: _Task, g: torch.Generator) -> tuple[torch.Tensor, float]:
    """The classes of one iteration's MMD [k] and the factor that scales their sum to all K."""
    k_all, k = task.num_classes, task.cfg.mmd_classes
    if not k or k >= k_all:
        return torch.arange(k_all), 1.0
    return torch.randperm(k_all, generator=g)[:k].sort().values, k_all / k


def _iteration(task: _Task, state: _State) -> dict[str, float]:
    cfg, g = task.cfg, state.generator
    expert = int(torch.randint(len(task.trajectories), (1,), generator=g))
    start_epoch = int(torch.randint(task.max_start, (1,), generator=g))
    warming = state.iteration < cfg.warmup
    zero = torch.zeros((), device=task.device)
    mtt = zero if warming else _mtt_loss(task, state, expert, start_epoch).loss
    mmd = _mmd_loss(task, state, expert) if (cfg.mmd_weight > 0 or warming) else zero
    weight = cfg.mmd_weight if (cfg.mmd_weight > 0 or not warming) else 1.0
    total = mtt + weight * mmd
    if not torch.isfinite(total):
        raise TrainingError(
            f"distillation diverged at iteration {state.iteration} (loss {float(total)}); lower lr_lr / lr_prior / lr_decoder"
        )
    optimizers = (state.opt_prior, state.opt_decoder) if warming else (state.opt_prior, state.opt_decoder, state.opt_lr)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in optimizers:
        opt.step()
    with torch.no_grad():
        state.alpha.clamp_(min=cfg.lr_min)
    return {"mtt": float(mtt.detach()), "mmd": float(mmd.detach()), "total": float(total.detach()), "lr": float(state.alpha.detach())}


def initial_result(init: Pretrained, cfg: DistillConfig) -> DistillResult:
    """The result of a zero-iteration run: the autoencoder's decoder and priors, alpha = lr_init."""
    return DistillResult(mu=init.mu.clone(), logvar=init.logvar.clone(),
                         decoder_state={n: t.clone() for n, t in init.decoder_state.items()}, lr=cfg.lr_init,
                         history={k: [] for k in LOSS_KEYS}, iterations=0, seconds=0.0)


def _report(progress, iteration: int, losses: dict) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):
        if hasattr(progress, "set_postfix"):
            progress.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
        progress.update(1)
    else:
        progress(iteration, losses)


def _result(state: _State, seconds: float) -> DistillResult:
    hist = torch.tensor(state.history, dtype=torch.float64).reshape(-1, len(LOSS_KEYS))
    return DistillResult(
        mu=state.mu.detach().cpu().clone(),
        logvar=state.logvar.detach().cpu().clone(),
        decoder_state={n: t.detach().cpu().clone() for n, t in state.decoder.state_dict().items()},
        lr=float(state.alpha.detach()),
        history={k: hist[:, i].tolist() for i, k in enumerate(LOSS_KEYS)},
        iterations=state.iteration,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------


def _config_hash(cfg: DistillConfig, decoder_cfg, lpc, num_classes, shape, n_experts) -> str:
    """What must match for a checkpoint to be resumable (iterations may grow)."""
    d = cfg.to_json()
    d.pop("iterations")
    d.pop("checkpoint_every")
    blob = {"cfg": d, "decoder": decoder_cfg.to_json(), "lpc": lpc, "K": num_classes, "shape": list(shape), "experts": n_experts}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (named tensors, JSON-able scalars)."""
    tensors, scalars = {}, {}
    for idx, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            key = f"{prefix}.{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.reshape(-1) if value.dim() == 0 else value
                scalars[key] = {"scalar": value.dim() == 0}
            else:
                scalars[key] = {"value": value}
    return tensors, scalars


def _load_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, scalars: dict) -> None:
    state: dict[int, dict] = {}
    for key, info in scalars.items():
        if not key.startswith(prefix + "."):
            continue
        _, idx, name = key.rsplit(".", 2)
        if "value" in info:
            value = info["value"]
        else:
            value = tensors[key].reshape(()) if info["scalar"] else tensors[key]
        state.setdefault(int(idx), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def _save_checkpoint(path: Path, state: _State, key: str) -> None:
    tensors = {"mu": state.mu, "logvar": state.logvar, "alpha": state.alpha.reshape(1)}
    tensors.update({f"decoder.{n}": t for n, t in state.decoder.state_dict().items()})
    scalars = {}
    for prefix, opt in (("opt_prior", state.opt_prior), ("opt_decoder", state.opt_decoder), ("opt_lr", state.opt_lr)):
        t, s = _optimizer_tensors(prefix, opt)
        tensors.update(t)
        scalars.update(s)
    tensors["rng"] = rng_state_tensor(state.generator)
    tensors["history"] = torch.tensor(state.history, dtype=torch.float64).reshape(-1, len(LOSS_KEYS))
    meta = {"version": CHECKPOINT_VERSION, "iteration": state.iteration, "key": key, "optimizer": scalars}
    save_tensors(path, tensors, metadata={"d3fmt_checkpoint": json.dumps(meta)})


def _load_checkpoint(path: Path, state: _State, key: str, iterations: int) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["d3fmt_checkpoint"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # unreadable / foreign file
        raise D3IOError(f"cannot read checkpoint {path}: {e}; delete it to start afresh") from e
    if meta.get("version") != CHECKPOINT_VERSION or meta.get("key") != key:
        raise ConfigError(f"checkpoint {path} was made with other settings or data; resume with the same settings or delete it")
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TrainingError(f"checkpoint {path} holds non-finite values ({', '.join(sorted(bad)[:3])}); the run it "
                            "comes from diverged: delete it and start afresh, with lower learning rates")
    if meta["iteration"] > iterations:
        raise ConfigError(f"checkpoint {path} is at iteration {meta['iteration']}, beyond the requested {iterations}")
    dev = state.mu.device
    with torch.no_grad():
        state.mu.copy_(tensors["mu"].to(dev))
        state.logvar.copy_(tensors["logvar"].to(dev))
        state.alpha.copy_(tensors["alpha"].reshape(()).to(dev))
    state.decoder.load_state_dict({n[len("decoder.") :]: t for n, t in tensors.items() if n.startswith("decoder.")})
    for prefix, opt in (("opt_prior", state.opt_prior), ("opt_decoder", state.opt_decoder), ("opt_lr", state.opt_lr)):
        _load_optimizer(prefix, opt, tensors, meta["optimizer"])
    restore_rng(state.generator, tensors["rng"])
    state.history = tensors["history"].tolist()
