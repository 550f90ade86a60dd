"""`d3 pack`: read a source, fit the budget, train experts, distil, label, evaluate, write.

The pipeline (federated distillation, method.md; the launch modes are in
:mod:`d3fmt.distill.federated`, the re-aggregation in :mod:`d3fmt.distill.merge`):

1. open the source; the byte cap is ``budget * K * C * H * W * 4`` (or ``max_bytes``);
2. partition the classes into ``subtasks`` balanced, contiguous, deterministic subsets;
3. fit ONE budget for the whole file (every decoder included) before any training
   (:mod:`d3fmt.distill.budget`), measuring a same-shaped dummy container, so an
   impossible budget fails in seconds;
4. per subtask: load that subset only, train (or reuse) its experts in ``work_dir``,
   distil priors + decoder with checkpoints (``resume`` continues after a crash), and
   write the subtask as a *partial container* (``partial: true``, hard labels, the
   tensors already in their stored encodings). Every subtask's randomness depends only
   on (seed, subtask index), never on which process or machine ran it;
5. merge the parts: soft labels over all classes from one expert trained on a bounded
   per-class sample of the whole source, the byte cap checked for the whole file;
6. evaluate the *stored* representation on the held-out real split via a pending file in
   the run directory, and only then write the output atomically: Ctrl-C or a crash never
   leaves a file there.

Memory: pixels are held for one class subset at a time (step 4), for ``STATS_PER_CLASS``
images of one class at a time (normalisation statistics) and for ``label_sample`` images
per class (the soft-label expert of step 5, ``5 * label_sample * K * C * H * W`` bytes as
uint8 + float32); never for the whole source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from d3fmt import __version__
from d3fmt.distill.autoencoder import pretrain_cached
from d3fmt.distill.budget import BudgetPlan, BudgetRequest, fit_budget, gaussian_ratios
from d3fmt.distill.experts import ExpertConfig, Trajectories, train_experts
from d3fmt.distill.trainer import DistillConfig, DistillResult, distill, initial_result
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.evaluate import EvalConfig, EvalResult, evaluate_representation
from d3fmt.format import D3Container, D3Reader, budget_bytes, budget_fields, encode_d3, write_d3
from d3fmt.models.convnet import ConvNet, load_flat_
from d3fmt.models.decoder import DecoderConfig, build_decoder
from d3fmt.progress import bar
from d3fmt.representation import Representation, tanh_to_normalized
from d3fmt.sources import open_source

EVAL_RESERVE = 384  # header bytes kept free for evaluation records added later
STATS_PER_CLASS = 64  # images per class behind the stored normalisation (mean, std)
MIN_STREAM_PER_CLASS = 50  # the default stream's samples per class and epoch, at least
LABEL_BATCH = 1024  # priors decoded at once when assigning soft labels


@dataclass
class PackConfig:
    """Everything `d3 pack` needs; the CLI fills it from its options."""

    source: str
    output: str
    budget: float | None = None  # images per class
    max_bytes: int | None = None  # alternative to budget: an explicit byte cap
    image_size: int | None = None
    test: str | None = None
    holdout: float | None = None
    skip_bad: bool = False
    subtasks: int = 1
    subtask: int | None = None  # only this subtask: write a partial container (a job-array part)
    seed: int = 0
    device: str = "auto"
    devices: list[str] | None = None  # one worker process per device; None: one per GPU when several
    work_dir: str = ".d3cache"
    resume: bool = False
    soft_labels: bool = False  # per-prior soft labels from an all-class teacher (`--soft-labels`)
    label_sample: int = 100  # real images per class (the first ones) the soft-label expert trains on
    samples_per_class: int | None = None  # default stream size stored in the file
    # budget overrides (None = the fitter chooses)
    family: str | None = None
    z_dim: int | None = None
    latents_per_class: int | None = None
    decoder_width: int | None = None
    encoding: str | None = None
    # experts, distillation, evaluation
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluation: EvalConfig | None = field(default_factory=EvalConfig)  # None = --no-eval
    quiet: bool = False


@dataclass
class PackResult:
    path: Path | None  # None on a torchrun rank other than 0 (rank 0 writes the file)
    file_bytes: int
    max_bytes: int
    plan: BudgetPlan
    evaluation: EvalResult | None
    expert_accuracy: list[float]
    subtasks: list[int] = field(default_factory=list)  # the subtasks this process distilled
    partial: bool = False  # a partial container (--subtask) was written


@dataclass
class PackContext:
    """What every subtask of one job shares, computed identically by every process."""

    cfg: PackConfig
    source: object  # d3fmt.sources.Source
    info: object  # d3fmt.sources.SourceInfo
    ipc: float
    max_bytes: int
    partition: list[list[int]]
    plan: BudgetPlan
    mean: list[float]
    std: list[float]
    run_dir: Path


# ---------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device torch knows; use auto, cpu or cuda[:N]") from None


def partition_classes(num_classes: int, subtasks: int) -> list[list[int]]:
    """Balanced, contiguous, deterministic class subsets (sizes differ by at most one)."""
    if not 1 <= subtasks <= num_classes:
        raise ConfigError(f"--subtasks must be between 1 and the class count {num_classes}, got {subtasks}")
    return [part.tolist() for part in np.array_split(np.arange(num_classes), subtasks)]


def partition_hash(partition: list[list[int]]) -> str:
    """A short digest naming a class partition (parts of one job must agree on it)."""
    blob = json.dumps(partition, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def derive_seed(seed: int, *tags) -> int:
    """A seed that depends only on (seed, tags), e.g. (seed, "experts", subtask index)."""
    blob = json.dumps([int(seed), *tags], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 2


def max_bytes_of(cfg: PackConfig, num_classes: int, image_shape) -> tuple[float, int]:
    """(ipc, max_bytes) from --budget or --max-bytes."""
    if (cfg.budget is None) == (cfg.max_bytes is None):
        raise ConfigError("give exactly one of --budget (images per class) or --max-bytes")
    if cfg.budget is not None:
        return float(cfg.budget), budget_bytes(cfg.budget, num_classes, image_shape)
    if cfg.max_bytes <= 0:
        raise ConfigError(f"--max-bytes must be positive, got {cfg.max_bytes}")
    return cfg.max_bytes / budget_bytes(1, num_classes, image_shape), int(cfg.max_bytes)


# Fields that say how or where a process runs, not what it computes.
RUN_ONLY_FIELDS = ("output", "work_dir", "resume", "quiet", "device", "devices", "subtask")


def settings_json(cfg: PackConfig) -> dict:
    """The distiller settings recorded in the file's provenance."""
    d = asdict(cfg)
    for key in RUN_ONLY_FIELDS:
        d.pop(key)
    return json.loads(json.dumps(d, default=str))


def config_from_settings(settings: dict, **run) -> PackConfig:
    """The PackConfig behind recorded settings (plus run-only fields such as output)."""
    d = dict(settings)
    d["experts"] = ExpertConfig(**d["experts"])
    d["distill"] = DistillConfig(**d["distill"])
    d["evaluation"] = EvalConfig(**d["evaluation"]) if d.get("evaluation") is not None else None
    try:
        return PackConfig(**d, **run)
    except TypeError as exc:
        raise ConfigError(f"recorded settings do not fit this d3fmt version ({exc}); use the version that wrote them") from None


def run_key(cfg: PackConfig, source_hash: str) -> str:
    blob = json.dumps({"source": source_hash, "settings": settings_json(cfg)}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------
# The container
# ---------------------------------------------------------------------------------------


def subtask_entry(i: int, classes: list[int], plan: BudgetPlan, soft: bool) -> dict:
    dec = plan.decoders[i]
    names = build_decoder(dec).state_dict().keys()
    tensors = {"mu": f"s{i}.mu", "logvar": f"s{i}.logvar", "decoder": {n: f"s{i}.dec.{n}" for n in names}}
    if soft:
        tensors["soft"] = f"s{i}.soft"
    return {"id": i, "classes": classes, "latents_per_class": plan.latents_per_class, "z_dim": plan.z_dim,
            "decoder": dec, "tensors": tensors}


def default_stream_size(latents_per_class: int) -> int:
    """Samples per class and epoch a file offers by default: one turn of the stream (every
    prior mean once, then every prior drawn once), at least ``MIN_STREAM_PER_CLASS``."""
    return max(MIN_STREAM_PER_CLASS, 2 * latents_per_class)


def make_header(info, parts, plan, ipc, max_bytes, mean, std, cfg: PackConfig, lr: float) -> dict:
    soft = cfg.soft_labels
    return {
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "labels": "soft" if soft else "hard",
        "samples_per_class": cfg.samples_per_class or default_stream_size(plan.latents_per_class),
        "train": {"lr": float(lr)},
        "subtasks": [subtask_entry(i, p, plan, soft) for i, p in enumerate(parts)],
        "budget": {**budget_fields(ipc, info.num_classes, info.image_shape, 0), "max_bytes": max_bytes,
                   "choices": plan.choices()},
        "provenance": {"source": info.name, "source_hash": info.content_hash, "settings": settings_json(cfg),
                       "d3fmt_version": __version__,
                       "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "evals": [],
    }


def tensors_of(header: dict, plan: BudgetPlan, results: list[DistillResult], soft: list[np.ndarray] | None):
    """Section name -> (array, encoding) for every subtask's priors, decoder and soft labels."""
    tensors, encodings = {}, {}
    for i, (entry, res) in enumerate(zip(header["subtasks"], results)):
        names = entry["tensors"]
        arrays = {names["mu"]: (res.mu, "mu"), names["logvar"]: (res.logvar, "logvar")}
        for param, section in names["decoder"].items():
            arrays[section] = (res.decoder_state[param], "dec")
        if soft is not None:
            arrays[names["soft"]] = (soft[i], "soft")
        for section, (value, kind) in arrays.items():
            array = value.detach().cpu().float().numpy() if torch.is_tensor(value) else np.asarray(value, np.float32)
            tensors[section] = np.ascontiguousarray(array)
            encodings[section] = plan.tensor_encoding(kind, array.ndim)
    return tensors, encodings


def dummy_results(header: dict, plan: BudgetPlan) -> tuple[list[DistillResult], list[np.ndarray] | None]:
    """Random tensors of the planned shapes: measures the file size before training.

    Decoder matrices are a (seeded) freshly initialised decoder's: uniform initial
    weights compress worse in int8 than Gaussian ones, and a short run stays close to
    them, so the measured size is an upper bound in practice. Vectors, priors and soft
    labels are Gaussian (trained norms and biases are not constant like initial ones)."""
    rng = np.random.default_rng(0)
    results, soft = [], []
    for i, entry in enumerate(header["subtasks"]):
        rows = len(entry["classes"]) * plan.latents_per_class
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            init = build_decoder(plan.decoders[i]).state_dict()
        state = {n: p if p.dim() >= 2 else torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32))
                 for n, p in init.items()}
        mu = torch.from_numpy(rng.standard_normal((rows, plan.z_dim)).astype(np.float32))
        results.append(DistillResult(mu, mu.clone(), state, 0.01, {}, 0, 0.0))
        logits = rng.standard_normal((rows, header["num_classes"])).astype(np.float32)
        soft.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return results, (soft if header["labels"] == "soft" else None)


def measure_plan(header_of, plan: BudgetPlan) -> int:
    """Exact size of a same-shaped container holding Gaussian tensors."""
    header = header_of(plan)
    results, soft = dummy_results(header, plan)
    tensors, encodings = tensors_of(header, plan, results, soft)
    return len(encode_d3(D3Container(header, tensors, encodings)))


DOWNGRADE = {"float32": "float16", "float16": "int8"}


def fit_to_cap(container: D3Container, max_bytes: int) -> int:
    """Guarantee the cap after training: re-encode the largest float sections one step
    down (float32 -> float16 -> int8) until the file fits; record what was changed."""
    size = len(encode_d3(container))
    changed = []
    while size > max_bytes:
        names = [n for n, e in container.encodings.items() if e in DOWNGRADE and container.tensors[n].ndim >= 1]
        if not names:
            raise BudgetError(f"the trained file needs {size} bytes, over the cap of {max_bytes}, with every "
                              "tensor already int8; pass a smaller --decoder-width or a larger --budget")
        name = max(names, key=lambda n: container.tensors[n].size * (4 if container.encodings[n] == "float32" else 2))
        container.encodings[name] = DOWNGRADE[container.encodings[name]]
        changed.append(name)
        size = len(encode_d3(container))
    if changed:
        container.header["budget"]["choices"]["downgraded_to_fit"] = changed
    return size


# ---------------------------------------------------------------------------------------
# Preparation shared by every process of a job
# ---------------------------------------------------------------------------------------


def open_pack_source(cfg: PackConfig, spec: str | None = None, test: str | None = None):
    return open_source(spec or cfg.source, image_size=cfg.image_size, skip_bad=cfg.skip_bad,
                       test=test or cfg.test, holdout=cfg.holdout, seed=cfg.seed)


def prepare(cfg: PackConfig) -> PackContext:
    """Open the source, fit the budget, compute the normalisation: the same in every process."""
    if cfg.label_sample < 1:
        raise ConfigError(f"--label-sample must be >= 1 image per class, got {cfg.label_sample}")
    source = open_pack_source(cfg)
    info = source.info
    ipc, max_bytes = max_bytes_of(cfg, info.num_classes, info.image_shape)
    partition = partition_classes(info.num_classes, cfg.subtasks)
    if cfg.subtask is not None and not 0 <= cfg.subtask < cfg.subtasks:
        raise ConfigError(f"--subtask must be in 0..{cfg.subtasks - 1} for --subtasks {cfg.subtasks}, got {cfg.subtask}")
    plan = fit(cfg, info, partition, ipc, max_bytes)
    mean, std = sample_stats(source, STATS_PER_CLASS)
    run_dir = Path(cfg.work_dir) / "runs" / run_key(cfg, info.content_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    return PackContext(cfg, source, info, ipc, max_bytes, partition, plan, mean, std, run_dir)


def fit(cfg: PackConfig, info, parts, ipc: float, max_bytes: int) -> BudgetPlan:
    req = BudgetRequest(
        num_classes=info.num_classes, image_shape=tuple(info.image_shape), max_bytes=max_bytes,
        subtask_classes=[len(p) for p in parts], soft_labels=cfg.soft_labels, ipc=ipc, reserve=EVAL_RESERVE,
        family=cfg.family, z_dim=cfg.z_dim, latents_per_class=cfg.latents_per_class, width=cfg.decoder_width,
        weight_encoding=cfg.encoding, ratios=gaussian_ratios(),
    )
    ones = [0.5] * info.image_shape[0]
    return fit_budget(req, measure=lambda plan: measure_plan(
        lambda p: placeholders(make_header(info, parts, p, ipc, max_bytes, ones, ones, cfg, 0.01)), plan))


# Stand-ins for the header fields that may vary between the processes of one job (the
# time, where the source and test set live, how the merged file is evaluated), so that
# every process measures the same size and fits the same plan. The reserve and fit_to_cap
# still guarantee the cap when the real values are longer.
PLACEHOLDER = hashlib.blake2b(b"d3fmt placeholder", digest_size=48).hexdigest()  # 96 chars
CREATED_PLACEHOLDER = "2000-01-01T00:00:00Z"


def placeholders(header: dict) -> dict:
    prov = header["provenance"]
    prov["created"] = CREATED_PLACEHOLDER
    prov["source"] = PLACEHOLDER
    prov["settings"]["source"] = PLACEHOLDER
    if prov["settings"].get("test") is not None:
        prov["settings"]["test"] = PLACEHOLDER
    prov["settings"]["evaluation"] = asdict(EvalConfig())
    return header


def class_heads(source, per_class: int, split: str = "train"):
    """The first ``per_class`` images of each class, one class at a time: yields
    (uint8 [n, C, H, W], int64 [n]). Only those files are decoded (ImageFolder, shards)."""
    for c in range(source.info.num_classes):
        batch = next(iter(source.iter_batches(split, classes=[c], batch_size=per_class)), None)
        if batch is not None:
            yield batch


def sample_stats(source, per_class: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (pixels in [0, 1]) over the first ``per_class`` train
    images of every class: deterministic, the same in every part of a federated job, and
    bounded work on an ImageNet-sized source (a full pass would decode every image)."""
    channels = source.info.image_shape[0]
    total = np.zeros(channels, dtype=np.float64)
    squares = np.zeros(channels, dtype=np.float64)
    count = 0
    for images, _ in class_heads(source, per_class):
        flat = images.transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64)  # [C, n*H*W]
        total += flat.sum(axis=1)
        squares += np.square(flat).sum(axis=1)
        count += flat.shape[1]
    if count == 0:
        raise ConfigError(f"source {source.info.name} has no training images")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return (mean / 255.0).tolist(), np.maximum(std / 255.0, 1e-3).tolist()


# ---------------------------------------------------------------------------------------
# Distillation of one subtask
# ---------------------------------------------------------------------------------------


def normalized_float(x: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 (x / 255 - mean) / std, computed in place: one float
    copy of a subset in memory, not three (same values as representation.normalize)."""
    t = torch.from_numpy(x).float().div_(255)  # [N, C, H, W]
    t.sub_(torch.tensor(mean, dtype=t.dtype).reshape(-1, 1, 1))
    return t.div_(torch.tensor(std, dtype=t.dtype).reshape(-1, 1, 1))


def load_subset(source, classes: list[int], split: str, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images [N, C, H, W] and *local* labels 0..len(classes)-1."""
    x, y = source.load(split, classes=classes)
    local = np.full(source.info.num_classes, -1, dtype=np.int64)
    local[classes] = np.arange(len(classes))
    return normalized_float(x, mean, std), torch.from_numpy(local[y])


def distill_subtask(ctx: PackContext, i: int, device) -> tuple[DistillResult, Trajectories | None]:
    """Experts + autoencoder + distillation of subtask ``i``; randomness from (seed, i) only.

    With ``iterations == 0`` the autoencoder's decoder and priors are the result and no
    experts are trained (the trajectories returned are then None).
    """
    cfg, classes, source = ctx.cfg, ctx.partition[i], ctx.source
    x, y = load_subset(source, classes, "train", ctx.mean, ctx.std)  # [N_i, C, H, W], [N_i]
    dcfg = replace(cfg.distill, mean=tuple(ctx.mean), std=tuple(ctx.std),
                   seed=derive_seed(cfg.distill.seed, "distill", i))
    traj = _subtask_experts(ctx, i, x, y, device) if dcfg.iterations else None
    decoder_cfg, run_dir = DecoderConfig.from_json(ctx.plan.decoders[i]), ctx.run_dir / f"subtask{i}"
    init = None
    if dcfg.autoencoder.steps:
        with bar(cfg.quiet, total=dcfg.autoencoder.steps, desc=f"autoencoder {i + 1}/{cfg.subtasks}",
                 unit="step") as pbar:
            init = pretrain_cached(run_dir, x.to(device), y, len(classes), decoder_cfg, ctx.plan.latents_per_class,
                                   dcfg.autoencoder, ctx.mean, ctx.std, derive_seed(dcfg.seed, "autoencoder"),
                                   progress=pbar)
    if not dcfg.iterations:
        return initial_result(init, dcfg), None
    with bar(cfg.quiet, total=dcfg.iterations, desc=f"distil {i + 1}/{cfg.subtasks}", unit="it") as pbar:
        result = distill(x, y, len(classes), decoder_cfg, ctx.plan.latents_per_class, traj, dcfg, device=device,
                         checkpoint_dir=run_dir, resume=cfg.resume, progress=pbar, init=init)
    return result, traj


def _subtask_experts(ctx: PackContext, i: int, x, y, device) -> Trajectories:
    cfg, classes, source = ctx.cfg, ctx.partition[i], ctx.source
    tx, ty = _test_subset(source, classes, ctx.mean, ctx.std)
    ecfg = replace(cfg.experts, seed=derive_seed(cfg.experts.seed, "experts", i))
    with bar(cfg.quiet, total=ecfg.num_experts * ecfg.epochs,
             desc=f"experts {i + 1}/{cfg.subtasks}", unit="epoch") as pbar:
        return train_experts(x, y, len(classes), ecfg, Path(cfg.work_dir) / "experts", device=device,
                             progress=pbar, data_id=f"{source.info.content_hash}:{source.info.image_shape}",
                             classes=classes, x_test=tx, y_test=ty)


def _test_subset(source, classes, mean, std):
    if not source.info.num_test:
        return None, None
    return load_subset(source, classes, "test", mean, std)


# ---------------------------------------------------------------------------------------
# Soft labels over all classes (after the merge)
# ---------------------------------------------------------------------------------------


def label_sample(source, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` train images of every class: uint8 [n, C, H, W], int64 [n]."""
    xs, ys = zip(*class_heads(source, per_class))
    return np.concatenate(xs), np.concatenate(ys)


def label_teacher(source, cfg: PackConfig, mean, std, device) -> ConvNet:
    """One ConvNet on all classes, trained (or reused from ``work_dir``) on a bounded
    sample: the first ``cfg.label_sample`` images of every class, so its memory is
    ``label_sample * K`` images whatever the size of the source. Seeded by (seed, "labels")."""
    info = source.info
    n = cfg.label_sample
    x, y = label_sample(source, n)
    xt = normalized_float(x, mean, std)  # [n*K, C, H, W]
    del x
    # A teacher, not a trajectory: momentum makes it accurate in the same epochs, and its
    # accuracy is what soft labels are worth (trajectory experts keep plain SGD).
    one = replace(cfg.experts, num_experts=1, seed=derive_seed(cfg.experts.seed, "labels"), momentum=0.9)
    with bar(cfg.quiet, total=one.epochs, desc="soft-label expert", unit="epoch") as pbar:
        traj = train_experts(xt, torch.from_numpy(y), info.num_classes, one, Path(cfg.work_dir) / "experts",
                             device=device, progress=pbar,
                             data_id=f"{info.content_hash}:{info.image_shape}:first{n}",
                             classes=list(range(info.num_classes)))
    net = ConvNet(traj.convnet)
    return load_flat_(net, traj.final(0)).to(device).eval()


@torch.no_grad()
def soft_labels(teacher, container: D3Container, device) -> dict[int, np.ndarray]:
    """softmax(teacher(decode(prior mean))) for every prior of every subtask, computed
    from the tensors as stored (quantised), so every launch mode gets the same labels."""
    header = container.header
    mean, std = header["normalization"]["mean"], header["normalization"]["std"]
    out = {}
    for entry in header["subtasks"]:
        names = entry["tensors"]
        state = {p: container.tensors[s] for p, s in names["decoder"].items()}
        dec = build_decoder(entry["decoder"], state).to(device)
        mu = torch.from_numpy(container.tensors[names["mu"]]).float()  # [rows, z]
        probs = []
        for start in range(0, mu.shape[0], LABEL_BATCH):
            t = dec(mu[start:start + LABEL_BATCH].to(device))  # [b, C, H, W] tanh space
            probs.append(torch.softmax(teacher(tanh_to_normalized(t, mean, std)).float(), dim=1).cpu())
        out[entry["id"]] = torch.cat(probs).numpy().astype(np.float32)  # [rows, K]
    return out


# ---------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------


def pack(cfg: PackConfig) -> PackResult:
    """Run `d3 pack`: all subtasks here (one device or one worker per device), one subtask
    (``cfg.subtask``: a partial container), or this rank's share under torchrun."""
    from d3fmt.distill.federated import run_pack

    return run_pack(cfg)


def evaluate_pending(container: D3Container, source, cfg: PackConfig, device, run_dir: Path) -> EvalResult:
    """Evaluate what the file will hold (after quantisation), via a pending file."""
    pending = run_dir / "pending.d3"
    write_d3(pending, container)
    test_x, test_y = source.load("test")
    ecfg = replace(cfg.evaluation, device=str(device))
    with D3Reader(pending) as reader:
        rep = Representation.from_reader(reader, device=device)
        with bar(cfg.quiet, total=ecfg.runs * ecfg.epochs, desc="evaluate", unit="epoch") as pbar:
            def tick(run, epoch, loss):
                pbar.update(1)
                pbar.set_postfix(run=run + 1, loss=f"{loss:.3f}")
            result = evaluate_representation(rep, test_x, test_y, ecfg, progress=tick)
    pending.unlink(missing_ok=True)
    return result
