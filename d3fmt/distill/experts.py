"""Expert trajectories: ConvNets trained from scratch on the real data, saved every epoch.

Trajectory matching (method.md) needs, for each expert, its flat parameter vector at the
start of training and after every epoch: theta*_0 .. theta*_E. Training experts is the
most expensive step on a CPU, so they are cached on disk and reused:

    cache_dir/experts-<key16>/manifest.json          what is finished, and the config
    cache_dir/experts-<key16>/expert_0003.safetensors   tensors "epoch_0000".."epoch_00EE" [P]

The key is a SHA-256 of (data identity string, class ids, image shape, expert config
without ``num_experts``). Leaving ``num_experts`` out lets a cache of 8 experts serve a
request for 5 and lets a request for 12 train only the 4 missing ones; an interrupted run
keeps every expert it finished (each expert file and then the manifest are written
atomically) and expert i is always trained from seed (seed, i), so a resumed cache holds
exactly what an uninterrupted run would have written.

Choices (documented because method.md leaves them open):
- Optimiser: SGD lr 0.01, **momentum 0.0 by default**. method.md says "SGD with
  momentum"; we keep the field but default it to 0 like the MTT reference's expert
  buffer, because the student's inner loop is plain SGD (theta - alpha * grad): without
  momentum the target theta*_{t+M} is reachable by the student's own update rule and
  the learned alpha keeps the meaning "student learning rate". Set ``momentum=0.9`` to
  follow method.md literally.
- Augmentation while training experts: DSA (as the reference), or a cheap crop+flip, or none.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from d3fmt.augment import DSAParams, crop_flip, dsa
from d3fmt.distill.storage import load_json, save_json, save_tensors
from d3fmt.errors import ConfigError, TrainingError
from d3fmt.models.convnet import ConvNet, ConvNetConfig, flatten_params, load_flat_
from d3fmt.pixels import Pixels
from d3fmt.seeds import mix_seed

CACHE_VERSION = 1
AUGMENTS = ("dsa", "cropflip", "none")
EVAL_BATCH = 1024  # images per no-grad batch at most ...
EVAL_BATCH_PIXELS = 2**21  # ... and at most this many input values (64x64 RGB: 170 images)
MIN_STEPS_PER_EPOCH = 25


@dataclass
class ExpertConfig:
    num_experts: int = 10
    epochs: int = 20  # trajectory length E: E+1 saved parameter vectors per expert
    lr: float = 0.01
    momentum: float = 0.0  # see the module docstring for why 0 is the default
    weight_decay: float = 0.0
    batch_size: int = 0  # 0 = auto: 256, smaller for small data (see expert_batch_size)
    width: int = 128  # ConvNet fields
    depth: int = 0  # 0 = by resolution
    norm: str = "instance"
    pool: str = "avg"
    act: str = "relu"
    augment: str = "dsa"  # "dsa" | "cropflip" | "none"
    dsa: DSAParams = field(default_factory=DSAParams)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.dsa, dict):
            self.dsa = DSAParams(**self.dsa)
        if self.augment not in AUGMENTS:
            raise ConfigError(f"expert augment {self.augment!r} is unknown; use one of {', '.join(AUGMENTS)}")
        if self.batch_size < 0:
            raise ConfigError(f"expert batch_size must be >= 0 (0 = auto), got {self.batch_size}")
        for name in ("num_experts", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"expert {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"expert lr must be > 0, got {self.lr}")

    def convnet_config(self, channels: int, num_classes: int, image_size: int) -> ConvNetConfig:
        return ConvNetConfig(
            channels, num_classes, image_size, self.width, self.depth, self.norm, self.pool, self.act
        )

    def to_json(self) -> dict:
        return asdict(self)


class Trajectories:
    """[expert][epoch] -> flat parameter vector [P], loaded lazily one tensor at a time.

    Backed either by a cache directory (``open``) or by in-memory tensors
    (``from_tensors``, for tests and tiny runs). ``test_accuracy[i]`` is expert i's final
    accuracy on held-out data, or None when no held-out data was given.
    """

    def __init__(
        self,
        convnet: ConvNetConfig,
        num_epochs: int,
        files: list[Path] | None = None,
        tensors: list[torch.Tensor] | None = None,
        test_accuracy: list[float | None] | None = None,
    ):
        self.convnet = convnet
        self.num_epochs = num_epochs  # E: epochs 0..E are stored
        self._files = files
        self._tensors = tensors
        count = len(files) if files is not None else len(tensors or [])
        self.test_accuracy = test_accuracy or [None] * count

    @classmethod
    def from_tensors(cls, convnet: ConvNetConfig, trajectories: list[torch.Tensor]) -> "Trajectories":
        """In-memory trajectories: one [E+1, P] tensor per expert."""
        return cls(convnet, trajectories[0].shape[0] - 1, tensors=[t.detach().cpu() for t in trajectories])

    @classmethod
    def open(cls, directory: Path, num_experts: int | None = None) -> "Trajectories":
        """Trajectories from a cache directory (the first ``num_experts`` finished experts)."""
        directory = Path(directory)
        manifest = load_json(directory / "manifest.json")
        experts = manifest["experts"][:num_experts]
        return cls(
            ConvNetConfig.from_json(manifest["convnet"]),
            manifest["config"]["epochs"],
            files=[directory / e["file"] for e in experts],
            test_accuracy=[e.get("test_accuracy") for e in experts],
        )

    def __len__(self) -> int:
        return len(self._files) if self._files is not None else len(self._tensors)

    @property
    def num_experts(self) -> int:
        return len(self)

    def params(self, expert: int, epoch: int) -> torch.Tensor:
        """theta*_epoch of one expert, [P] float32 on the CPU."""
        if not 0 <= epoch <= self.num_epochs:
            raise ConfigError(f"epoch {epoch} is outside the trajectory 0..{self.num_epochs}")
        if self._tensors is not None:
            return self._tensors[expert][epoch]
        with safe_open(str(self._files[expert]), framework="pt") as f:
            return f.get_tensor(_epoch_key(epoch))

    def final(self, expert: int) -> torch.Tensor:
        return self.params(expert, self.num_epochs)

    def trajectory(self, expert: int) -> torch.Tensor:
        """One whole trajectory [E+1, P] (one expert in RAM, never all of them)."""
        return torch.stack([self.params(expert, e) for e in range(self.num_epochs + 1)])


def _epoch_key(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def cache_key(data_id: str, classes: list[int], image_shape: tuple[int, ...], cfg: ExpertConfig) -> str:
    """SHA-256 naming an expert cache; num_experts is left out on purpose (see module doc)."""
    config = cfg.to_json()
    config.pop("num_experts")
    blob = json.dumps(
        {"version": CACHE_VERSION, "data": data_id, "classes": list(classes), "shape": list(image_shape), "config": config},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """Content hash of the training tensors, used when the caller names no data identity."""
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.fingerprint() if isinstance(x, Pixels) else x.detach().cpu().contiguous().numpy())
    h.update(y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------


def train_experts(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cfg: ExpertConfig,
    cache_dir: Path,
    *,
    device="cpu",
    progress=None,
    data_id: str | None = None,
    classes: list[int] | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> Trajectories:
    """Train (or reuse from ``cache_dir``) ``cfg.num_experts`` expert trajectories.

    x: float32 [N, C, H, W] normalised pixels; y: int64 [N] local labels 0..K-1.
    ``data_id`` names the data for the cache key (e.g. source hash + split + holdout);
    without it the tensors are hashed. ``classes`` are the global class ids (cache key
    only). ``x_test``/``y_test`` (same conventions) give each expert's final test accuracy.
    ``progress``: a tqdm-like object (``update(1)`` per epoch, ``set_postfix``) or a
    callable ``progress(expert, epoch, info: dict)``.
    """
    _check_data(x, y, num_classes)
    classes = list(range(num_classes)) if classes is None else list(classes)
    data_id = data_id if data_id is not None else data_fingerprint(x, y)
    key = cache_key(data_id, classes, tuple(x.shape[1:]), cfg)
    directory = Path(cache_dir) / f"experts-{key[:16]}"
    manifest = _load_or_create_manifest(directory, key, data_id, classes, cfg, x.shape, num_classes)
    netcfg = ConvNetConfig.from_json(manifest["convnet"])
    x_dev, y_dev = x.to(device), y.to(device)
    for i in range(len(manifest["experts"]), cfg.num_experts):
        traj, info = _train_one(x_dev, y_dev, netcfg, cfg, i, device, progress)
        if x_test is not None and y_test is not None:
            info["test_accuracy"] = _accuracy_of_flat(netcfg, traj[-1], x_test, y_test, device)
        name = f"expert_{i:04d}.safetensors"
        save_tensors(directory / name, {_epoch_key(e): t for e, t in enumerate(traj)})
        manifest["experts"].append({"file": name, **info})
        save_json(directory / "manifest.json", manifest)
    return Trajectories.open(directory, cfg.num_experts)


def _check_data(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(
            f"expert data must be x [N, C, H, W] and y [N] with N > 0, got {list(x.shape)} and {list(y.shape)}"
        )
    if x.shape[2] != x.shape[3]:
        raise ConfigError(f"expert ConvNets need square images, got {x.shape[2]}x{x.shape[3]}; resize the source")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ConfigError(f"labels must be local class indices 0..{num_classes - 1}; remap the labels first")


def _load_or_create_manifest(directory, key, data_id, classes, cfg, shape, num_classes) -> dict:
    path = directory / "manifest.json"
    if path.exists():
        manifest = load_json(path)
        if manifest.get("key") != key:
            raise ConfigError(f"expert cache {directory} belongs to other data or settings; delete it or pick another cache dir")
        kept = []  # the finished prefix: expert i must stay at index i (its seed is (seed, i))
        for i, entry in enumerate(manifest["experts"]):
            if entry.get("file") != f"expert_{i:04d}.safetensors" or not (directory / entry["file"]).exists():
                break
            kept.append(entry)
        manifest["experts"] = kept
        return manifest
    netcfg = cfg.convnet_config(shape[1], num_classes, shape[2])
    manifest = {
        "version": CACHE_VERSION,
        "key": key,
        "data_id": data_id,
        "classes": classes,
        "config": cfg.to_json(),
        "convnet": netcfg.to_json(),
        "param_count": sum(p.numel() for p in ConvNet(netcfg).parameters()),
        "experts": [],
    }
    save_json(path, manifest)
    return manifest


def _expert_seed(cfg: ExpertConfig, index: int) -> int:
    return mix_seed(cfg.seed, index)


def expert_batch_size(cfg: ExpertConfig, n: int) -> int:
    """The configured batch size, or (0 = auto) 256 capped so that an epoch has at least
    ``MIN_STEPS_PER_EPOCH`` steps: on small data (digits: 1,437 images) a batch of 256
    gives 6 steps an epoch and experts that are still poor after 20 epochs."""
    if cfg.batch_size:
        return cfg.batch_size
    return max(16, min(256, n // MIN_STEPS_PER_EPOCH))


def _train_one(x, y, netcfg: ConvNetConfig, cfg: ExpertConfig, index: int, device, progress):
    """Train expert ``index``; returns its trajectory [E+1 tensors of P] and a summary."""
    seed = _expert_seed(cfg, index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights depend on (seed, index) only
        net = ConvNet(netcfg)
    net.to(device).train()
    g = torch.Generator().manual_seed(seed)  # shuffling and augmentation
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    traj = [flatten_params(net).cpu()]
    n = x.shape[0]
    batch = expert_batch_size(cfg, n)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g).to(x.device)
        # summed on the device and read once per epoch: no host sync per step on CUDA
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb, yb = _augment(x[idx], cfg, g), y[idx]
            logits = net(xb)  # [B, K]
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * idx.numel()
            correct += (logits.argmax(1) == yb).sum()
        traj.append(flatten_params(net).cpu())
        info = {"loss": float(loss_sum) / n, "train_accuracy": int(correct) / n}
        if not math.isfinite(info["loss"]):
            raise TrainingError(f"expert {index} diverged (loss {info['loss']}); lower the expert lr")
        _report(progress, index, epoch, info)
    return traj, {"train_loss": info["loss"], "train_accuracy": info["train_accuracy"]}


def _augment(xb: torch.Tensor, cfg: ExpertConfig, g: torch.Generator) -> torch.Tensor:
    if cfg.augment == "dsa":
        return dsa(xb, cfg.dsa, generator=g)
    if cfg.augment == "cropflip":
        return crop_flip(xb, generator=g)
    return xb


def _report(progress, expert: int, epoch: int, info: dict) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(expert=expert, loss=f"{info['loss']:.3f}", acc=f"{info['train_accuracy']:.3f}")
        progress.update(1)
    else:
        progress(expert, epoch, info)


def eval_batch(shape) -> int:
    """Images per inference batch for images of ``shape`` [N, C, H, W]: memory bounded by
    the image size, not only by the image count."""
    c, h, w = (int(v) for v in shape[1:])
    return max(1, min(EVAL_BATCH, EVAL_BATCH_PIXELS // (c * h * w)))


@torch.no_grad()
def _accuracy_of_flat(netcfg: ConvNetConfig, flat: torch.Tensor, x, y, device) -> float:
    net = load_flat_(ConvNet(netcfg), flat).to(device).eval()
    return evaluate_accuracy(net, x, y, device)


@torch.no_grad()
def evaluate_accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device="cpu") -> float:
    """Top-1 accuracy of ``net`` on x [N, C, H, W] (normalised), y [N], in batches."""
    correct, batch = 0, eval_batch(x.shape)
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(device)
        correct += int((net(xb).argmax(1).cpu() == y[start : start + batch].cpu()).sum())
    return correct / max(1, x.shape[0])

