"""Honest accuracy: train a fresh model from scratch, test the *final* model on real data.

Two training sources share one protocol (method.md, "Evaluating a distilled
representation"): SGD with momentum 0.9 and weight decay 5e-4, the learning rate divided
by 10 at half the epochs, differentiable augmentation (DSA) on every batch, and the final
model's accuracy on the real held-out test set -- never the best accuracy seen during
training, which would peek at the test set. The test set is touched exactly once per
run, after the last epoch.

Length: ``EvalConfig.epochs`` passes, or ``EvalConfig.steps`` SGD steps (``--steps``): the
number of passes then follows from the training data's size at the batch size, so a D3
stream and real subsets of any size train for exactly the same steps (lr / 10 at half the
steps); records then carry ``steps`` and the protocol string says both.

- :func:`evaluate_representation` trains on a decoded D3 stream: every epoch draws fresh
  samples with the loader's sampling contract (:mod:`d3fmt.loader.dataset`: ``samples_per_class``
  items per class, the prior means included when soft labels are used), labelled with the
  stored soft labels when present; the learning rate defaults to the student learning
  rate the distiller learned (``header["train"]["lr"]``).
- :func:`evaluate_real` trains on real uint8 images (the same-bytes random subset baseline
  and the full-data ceiling, :mod:`d3fmt.evaluation.baseline`).
- :func:`evaluate_file` is ``d3 eval``: evaluate a .d3 file and append the record to it.
- :func:`load_test_set` resolves ``--test SRC`` (see its docstring).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F

from d3fmt.augment import REFERENCE_STRATEGY, DSAParams, dsa
from d3fmt.errors import ConfigError
from d3fmt.loader.representation import LABEL_MODES, Representation, normalize
from d3fmt.models.convnet import ConvNet, ConvNetConfig
from d3fmt.models.resnet import STANDARD_WIDTH as RESNET_WIDTH
from d3fmt.models.resnet import ResNet, ResNetConfig
from d3fmt.pixels import Pixels

MODELS = ("convnet", "resnet18")
# The training recipes every method is measured under (benchmarks/fmnist-recipes.md): the
# augmentation of every batch. A method is reported at its better one.
RECIPES = {"plain": "crop_flip", "dsa": REFERENCE_STRATEGY}
RECIPE_CHOICES = (*RECIPES, "best")  # "best": every recipe, the better one reported


def recipe_of(cfg: "EvalConfig") -> str | None:
    """The RECIPES name of ``cfg``'s augmentation (None for any other strategy)."""
    return next((name for name, strategy in RECIPES.items() if strategy == cfg.dsa), None)


def recipe_configs(cfg: "EvalConfig", recipe: str) -> dict[str, "EvalConfig"]:
    """The configs a ``--recipe`` asks for: one recipe, or each of them for "best"."""
    if recipe not in RECIPE_CHOICES:
        raise ConfigError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPE_CHOICES)}")
    names = list(RECIPES) if recipe == "best" else [recipe]
    return {name: replace(cfg, dsa=RECIPES[name]) for name in names}


def best_recipe(results: dict[str, "EvalResult"]) -> str:
    """The recipe whose runs reached the higher mean final accuracy."""
    return max(results, key=lambda name: results[name].mean)
LABEL_CHOICES = ("auto", *LABEL_MODES)
DEFAULT_LR = 0.01  # when no learned lr is stored (and for real-data baselines)


@dataclass
class EvalConfig:
    """How fresh models are trained and tested."""

    model: str = "convnet"  # "convnet" (what D3 distils for) | "resnet18" (transfer)
    epochs: int = 300
    steps: int | None = None  # total SGD steps per run; when set it overrides epochs (see passes())
    runs: int = 1
    lr: float | None = None  # None: the learned student lr stored in the file, else 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    samples_per_class: int | None = None  # decoded items per class and epoch; None: the file's
    labels: str = "auto"  # "auto" (the teacher, else soft labels, when stored) | "hard" | "soft" | "teacher"
    dsa: str = REFERENCE_STRATEGY  # "" or "none" disables augmentation
    width: int | None = None  # ConvNet width [128], or ResNet-18's first-stage width [RESNET_WIDTH: the standard]
    seed: int = 0
    device: str = "cpu"
    keep_models: bool = False  # return the trained final models in EvalResult.models

    def __post_init__(self):
        if self.width is None:
            self.width = RESNET_WIDTH if self.model == "resnet18" else 128

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; use one of {', '.join(MODELS)}")
        if self.labels not in LABEL_CHOICES:
            raise ConfigError(f"labels must be one of {', '.join(LABEL_CHOICES)}, got {self.labels!r}")
        for name in ("epochs", "runs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.samples_per_class is not None and self.samples_per_class < 1:
            raise ConfigError(f"--samples-per-class must be at least 1, got {self.samples_per_class}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        DSAParams(strategy=self.dsa)  # ConfigError on unknown augmentation families

    def passes(self, per_epoch: int) -> int:
        """Passes over the training data of one run: ``epochs``, or with ``steps`` set as many
        passes of ``per_epoch`` items at ``batch_size`` as the steps need (the last one cut
        short), so a D3 stream and a real subset of any size get exactly ``steps`` SGD steps."""
        if self.steps is None:
            return self.epochs
        return math.ceil(self.steps / len(batch_bounds(per_epoch, self.batch_size)))

    def schedule(self, per_epoch: int) -> str:
        """How long a run trains, as protocol strings and CLI lines say it."""
        if self.steps is None:
            return f"{self.epochs} epochs"
        return f"{self.steps} steps ({self.passes(per_epoch)} passes of {per_epoch})"

    @property
    def model_name(self) -> str:
        """What evaluation records call the model: the ConvNet with its width; ResNet-18 with
        its first-stage width when it is not the standard 64 (a narrow ResNet-18 for CPUs)."""
        if self.model == "convnet":
            return f"convnet-{self.width}"
        return self.model if self.width == RESNET_WIDTH else f"{self.model}-w{self.width}"


@dataclass
class EvalResult:
    """Final-model test accuracies of independent runs (fractions in [0, 1])."""

    model: str
    accuracies: list[float]
    epochs: int  # passes over the training data per run
    protocol: str
    lr: float
    details: dict = field(default_factory=dict)
    models: list = field(default_factory=list)  # final models, when EvalConfig.keep_models
    steps: int | None = None  # SGD steps per run, when the protocol is step-based
    recipe: str | None = None  # the training recipe (a RECIPES name) when the augmentation is one of them

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.accuracies))

    @property
    def std(self) -> float:
        """Population std over runs (0 for one run)."""
        return float(statistics.pstdev(self.accuracies)) if len(self.accuracies) > 1 else 0.0

    def record(self, test_set: str) -> dict:
        """The evaluation record stored in a .d3 header (``evals`` list)."""
        return {
            "model": self.model,
            "protocol": self.protocol,
            "test_set": test_set,
            "accuracy": round(self.mean, 6),
            "std": round(self.std, 6),
            "runs": len(self.accuracies),
            "epochs": self.epochs,
            **({"steps": self.steps} if self.steps is not None else {}),
            **({"recipe": self.recipe} if self.recipe is not None else {}),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def to_json(self) -> dict:
        return {"model": self.model, "accuracy": self.mean, "std": self.std, "accuracies": list(self.accuracies),
                "runs": len(self.accuracies), "epochs": self.epochs, "steps": self.steps, "lr": self.lr,
                "protocol": self.protocol, **self.details}


def build_model(cfg: EvalConfig, channels: int, num_classes: int, image_size: int) -> torch.nn.Module:
    if cfg.model == "resnet18":
        return ResNet(ResNetConfig(channels, num_classes, image_size, width=cfg.width))
    return ConvNet(ConvNetConfig(channels=channels, num_classes=num_classes, image_size=image_size, width=cfg.width))


# ---------------------------------------------------------------------------------------
# The real test set behind `--test SRC`
# ---------------------------------------------------------------------------------------


@dataclass
class TestSet:
    """Real labelled test images, already at the evaluated image size."""

    x: np.ndarray  # [N, C, H, W] uint8 (or a cached split's SplitView, read per batch)
    y: np.ndarray  # [N] int64
    name: str  # what evaluation records call it

    __test__ = False  # not a pytest class


def load_test_set(spec: str, image_shape, num_classes: int, *, train_hash: str | None = None,
                  holdout: float | None = None, seed: int = 0, cache=None) -> TestSet:
    """Resolve ``--test SRC`` to real test images of ``image_shape`` (C, H, W).

    SRC's own test split when it has one (IDX t10k, ImageFolder val/, npz x_test);
    otherwise, when SRC is the very data the model was trained from (its content hash
    equals ``train_hash``), the same stratified holdout ``d3 pack`` held out (``holdout``,
    default 0.2, and ``seed``) -- so test images never overlap training images; otherwise
    all of SRC. Images are resized to H x W; the class count must match (ConfigError).
    ``cache``: a :class:`d3fmt.sources.cache.CacheConfig` (decoded-image cache) or None.
    """
    from d3fmt.sources import DEFAULT_HOLDOUT, open_source

    c, h, _ = (int(v) for v in image_shape)
    probe = open_source(spec, image_size=h, holdout=0, cache=cache)
    info = probe.info
    if info.num_classes != num_classes:
        raise ConfigError(f"test source {spec} has {info.num_classes} classes but the model is trained on "
                          f"{num_classes}; give a test set with the same {num_classes} classes")
    if info.image_shape[0] != c:
        raise ConfigError(f"test source {spec} has {info.image_shape[0]} channel(s) but the training images "
                          f"have {c}; give a test set with {c}-channel images")
    if info.num_test:
        x, y = probe.view("test")
        name = f"{spec} test split ({len(y)} images)"
    elif train_hash is not None and info.content_hash == train_hash:
        fraction = DEFAULT_HOLDOUT if holdout is None else float(holdout)
        if fraction <= 0:
            raise ConfigError(f"{spec} is the training data itself and has no held-out split; "
                              "give a separate --test source")
        split = open_source(spec, image_size=h, holdout=fraction, seed=seed, cache=cache)
        x, y = split.view("test")
        name = f"{spec} held-out {fraction:g} of train, seed {seed} ({len(y)} images)"
    else:
        x, y = probe.view("train")
        name = f"all of {spec} ({len(y)} images)"
    return TestSet(x, np.asarray(y, dtype=np.int64), name)  # x: an array, or a cached split read per batch


# ---------------------------------------------------------------------------------------
# Training data: a function epoch -> (x normalised [N,C,H,W], target [N] int64 or [N,K])
# ---------------------------------------------------------------------------------------


def label_mode(rep: Representation, labels: str) -> str:
    """Resolve ``--labels`` (:meth:`Representation.label_mode`)."""
    return rep.label_mode(labels)


class StreamEpochs:
    """Fresh decoded samples for each epoch of one run: exactly what
    ``D3Dataset(path, samples_per_class, seed=seed, labels=..., include_means=soft,
    normalize=True)`` yields after ``set_epoch(epoch)``."""

    def __init__(self, rep: Representation, cfg: EvalConfig, seed: int, labels: str | None = None):
        from d3fmt.loader.dataset import SampleOptions, make_plan

        self.rep = rep
        mode = labels or label_mode(rep, cfg.labels)
        self.options = SampleOptions(samples_per_class=cfg.samples_per_class, seed=seed,
                                     labels=mode, include_means=mode == "soft", normalize=True)
        self.plan = make_plan(rep, self.options)
        self.index = torch.arange(len(self.plan), dtype=torch.int64)  # [N] every item, every epoch

    def __call__(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        from d3fmt.loader.dataset import decode_items

        self.options.epoch = epoch
        x, target = decode_items(self.rep, self.plan, self.options, self.index)  # [N, C, H, W], [N] | [N, K]
        return x.float(), target


def real_epochs(x_uint8: np.ndarray, y: np.ndarray, mean, std, device) -> Callable[[int], tuple]:
    """The same real images every epoch (augmentation makes them differ)."""
    x = Pixels.from_numpy(x_uint8, mean, std).to(device)  # uint8 [N, C, H, W], normalised per batch
    target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    return lambda epoch: (x, target)


def pixel_mean_std(x_uint8: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean / std in [0, 1] units of uint8 images [N, C, H, W]."""
    from d3fmt.sources.stats import array_stats

    return array_stats(x_uint8)


# ---------------------------------------------------------------------------------------
# Training and testing
# ---------------------------------------------------------------------------------------


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """ceil(n / batch_size) near-equal batches: never a batch of one (BatchNorm needs two)."""
    count = max(1, math.ceil(n / batch_size))
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def train_model(model, epochs_fn, cfg: EvalConfig, lr: float, seed: int, progress=None,
                labeller=None) -> torch.nn.Module:
    """SGD with momentum and weight decay, lr / 10 at half; DSA on every batch.

    Sees training data only: no test data is passed in, so nothing can be selected on it.
    ``cfg.epochs`` passes over ``epochs_fn(pass)`` (lr / 10 from pass epochs // 2 on), or
    with ``cfg.steps`` set exactly that many SGD steps (lr / 10 from step steps // 2 on)
    over as many passes of fresh data as they need, the last one cut short.
    ``labeller`` (normalised images -> label vectors [N, K]), when given, labels every
    augmented batch as it is trained on: a stored teacher labels the very view the model sees.
    """
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    aug = DSAParams(strategy=cfg.dsa)
    g = torch.Generator().manual_seed(seed)
    step, epoch, total_steps, half = 0, 0, None, None
    while total_steps is None or step < total_steps:
        x, target = epochs_fn(epoch)
        bounds = batch_bounds(x.shape[0], cfg.batch_size)
        if total_steps is None:  # the first pass: the data size fixes the schedule
            if cfg.steps is None:
                total_steps, half = cfg.epochs * len(bounds), max(1, cfg.epochs // 2) * len(bounds)
            else:
                total_steps, half = cfg.steps, max(1, cfg.steps // 2)
        order = torch.randperm(x.shape[0], generator=g).to(x.device)
        total, count = 0.0, 0
        for start, stop in bounds[: total_steps - step]:
            if step == half:
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1
            idx = order[start:stop]
            xb = dsa(x[idx].to(device), aug, generator=g)
            yb = target[idx].to(device) if labeller is None else labeller(xb)
            loss = _loss(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            step, count = step + 1, count + 1
        if progress is not None:
            progress(epoch, total / count)
        epoch += 1
    return model.eval()


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.int64:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()  # soft cross-entropy


@torch.no_grad()
def test_accuracy(model, x_uint8: np.ndarray, y: np.ndarray, mean, std, device, batch_size=500) -> float:
    """Accuracy of ``model`` (in eval mode) on real uint8 images [N, C, H, W] with labels [N]."""
    model.eval()
    device = torch.device(device)
    y = np.asarray(y)
    correct = 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x_uint8[start : start + batch_size])).float().div_(255)
        xb = normalize(xb, mean, std).to(device)  # [b, C, H, W]
        pred = model(xb).argmax(1).cpu().numpy()
        correct += int((pred == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


@dataclass
class _EvalTask:
    """What one evaluation trains on and tests on."""

    make_epochs: Callable[[int], Callable]  # run seed -> (epoch -> training batch of the epoch)
    lr: float
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    test: tuple  # (x uint8 [N,C,H,W], y [N], mean, std)
    labeller: Callable | None = None  # labels each augmented batch (a stored teacher); None: the data's labels


def _run_all(task: _EvalTask, cfg: EvalConfig, progress) -> tuple[list[float], list]:
    accs, models = [], []
    c, h, _ = task.shape
    for run in range(cfg.runs):
        seed = cfg.seed * 1000 + run
        torch.manual_seed(seed)
        model = build_model(cfg, c, task.num_classes, h)
        tick = None if progress is None else (lambda e, loss, r=run: progress(r, e, loss))
        model = train_model(model, task.make_epochs(seed), cfg, task.lr, seed, tick, task.labeller)
        accs.append(test_accuracy(model, *task.test, device=cfg.device))  # the final model, once
        if cfg.keep_models:
            models.append(model)
    return accs, models


def stored_lr(rep: Representation) -> float:
    """The student learning rate the distiller learned, or DEFAULT_LR."""
    train = rep.header.get("train")
    lr = train.get("lr") if isinstance(train, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0 else DEFAULT_LR


def _protocol(cfg: EvalConfig, lr: float, data: str, per_epoch: int) -> str:
    width = f" width={cfg.width}"
    steps = "" if cfg.steps is None else f" {cfg.schedule(per_epoch)}"
    return (f"{data}; {cfg.model}{width} from scratch; dsa={cfg.dsa or 'none'}; sgd lr={lr:.4g} mom={cfg.momentum} "
            f"wd={cfg.weight_decay} bs={cfg.batch_size}{steps} lr/10@half; final model")


def evaluate_representation(rep: Representation, test_x, test_y, cfg: EvalConfig, progress=None) -> EvalResult:
    """Train ``cfg.runs`` fresh models on the decoded stream only; test each final model.

    ``progress(run, epoch, mean_loss)`` is called after every epoch.
    """
    cfg.validate()
    lr = cfg.lr if cfg.lr is not None else stored_lr(rep)
    c, h, w = rep.image_shape
    if tuple(np.shape(test_x)[1:]) != (c, h, w):
        raise ConfigError(f"test images are {list(np.shape(test_x)[1:])}, the file's are {[c, h, w]}; "
                          "resize the test set to the file's image size")
    mean, std = rep.normalization
    mode = label_mode(rep, cfg.labels)
    per_epoch = len(StreamEpochs(rep, cfg, 0).plan)
    labeller = rep.teacher_labels if mode == "teacher" else None
    task = _EvalTask(lambda seed: StreamEpochs(rep, cfg, seed, "hard" if labeller else None), lr, (c, h, w),
                     rep.num_classes, (test_x, test_y, mean, std), labeller)
    accs, models = _run_all(task, cfg, progress)
    data = f"d3 stream {per_epoch} fresh samples/epoch (labels {mode})"
    details = {"samples_per_epoch": per_epoch, "labels": mode, "width": cfg.width,
               "test_images": len(test_y)}
    return EvalResult(cfg.model_name, accs, cfg.passes(per_epoch), _protocol(cfg, lr, data, per_epoch), lr, details,
                      models, cfg.steps, recipe_of(cfg))


def evaluate_real(train_x, train_y, test_x, test_y, num_classes, mean, std, cfg: EvalConfig,
                  progress=None, labeller=None) -> EvalResult:
    """Train ``cfg.runs`` fresh models on real uint8 images [N, C, H, W]; test each final model
    (``labeller``: a teacher labelling every augmented batch, see :func:`train_model`)."""
    cfg.validate()
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR
    shape = tuple(int(v) for v in np.shape(train_x)[1:])
    if tuple(np.shape(test_x)[1:]) != shape:
        raise ConfigError(f"test images are {list(np.shape(test_x)[1:])}, training images {list(shape)}; "
                          "use the same image size for both")
    epochs_fn = real_epochs(train_x, train_y, mean, std, torch.device(cfg.device))
    task = _EvalTask(lambda seed: epochs_fn, lr, shape, num_classes, (test_x, test_y, mean, std), labeller)
    accs, models = _run_all(task, cfg, progress)
    data = f"{len(train_y)} real images"
    details = {"train_images": len(train_y), "width": cfg.width, "test_images": len(test_y)}
    return EvalResult(cfg.model_name, accs, cfg.passes(len(train_y)), _protocol(cfg, lr, data, len(train_y)), lr,
                      details, models, cfg.steps, recipe_of(cfg))


def evaluate_file(path, test_spec: str, cfg: EvalConfig, *, progress=None, record: bool = True,
                  cache=None) -> tuple[EvalResult, TestSet]:
    """``d3 eval``: evaluate a .d3 file on ``test_spec`` and (``record``) append the record.

    The record is added with :func:`d3fmt.format.append_eval`: an atomic rewrite whose
    section bytes are copied unchanged and whose hashes are recomputed.
    """
    from d3fmt.format import D3Reader, append_eval

    cfg.validate()
    with D3Reader(path) as reader:
        header = reader.header
        prov = header.get("provenance") or {}
        settings = prov.get("settings") if isinstance(prov.get("settings"), dict) else {}
        test = load_test_set(test_spec, header["image_shape"], int(header["num_classes"]),
                             train_hash=prov.get("source_hash"), holdout=settings.get("holdout"),
                             seed=int(settings.get("seed") or 0), cache=cache)
        rep = Representation.from_reader(reader, device=cfg.device)
    result = evaluate_representation(rep, test.x, test.y, cfg, progress=progress)
    if record:
        append_eval(path, result.record(test.name))
    return result, test


def file_convnet_width(path) -> int:
    """The ConvNet width a .d3 file was distilled with (provenance settings), else 128.

    Evaluating with the distillation width is the like-for-like ConvNet number."""
    from d3fmt.format import D3Reader

    with D3Reader(path) as reader:
        settings = (reader.header.get("provenance") or {}).get("settings")
    experts = settings.get("experts") if isinstance(settings, dict) else None
    width = experts.get("width") if isinstance(experts, dict) else None
    return width if isinstance(width, int) and not isinstance(width, bool) and width > 0 else 128
