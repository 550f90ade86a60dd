"""`d3 pack`: read a source, fit the budget, train experts, distil, label, evaluate, write.

The pipeline, one subtask (class subset) after another:

1. open the source; the byte cap is ``budget * K * C * H * W * 4`` (or ``max_bytes``);
2. partition the classes into ``subtasks`` balanced, contiguous, deterministic subsets;
3. fit the budget before any training (:mod:`d3fmt.distill.budget`), measuring a
   same-shaped dummy container, so an impossible budget fails in seconds;
4. per subtask: load that subset only, train (or reuse) its experts in ``work_dir``,
   distil priors + decoder with checkpoints (``resume`` continues after a crash);
5. soft labels: an expert on all classes labels the decoded prior means (softmax);
6. build the container, write it to a pending file in the run directory, evaluate the
   *stored* (quantised) representation on the held-out real split, add the record, and
   only then write the output atomically: Ctrl-C or a crash never leaves a file there.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from d3fmt import __version__
from d3fmt.distill.budget import BudgetPlan, BudgetRequest, fit_budget, gaussian_ratios
from d3fmt.distill.experts import ExpertConfig, Trajectories, train_experts
from d3fmt.distill.trainer import DistillConfig, DistillResult, distill
from d3fmt.errors import BudgetError, ConfigError
from d3fmt.evaluate import EvalConfig, EvalResult, evaluate_representation
from d3fmt.format import D3Container, D3Reader, budget_fields, encode_d3, write_d3
from d3fmt.models.convnet import ConvNet, load_flat_
from d3fmt.models.decoder import DecoderConfig, build_decoder
from d3fmt.progress import bar
from d3fmt.representation import Representation, normalize, tanh_to_normalized
from d3fmt.sources import open_source, pixel_stats

EVAL_RESERVE = 384  # header bytes kept free for evaluation records added later


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
    seed: int = 0
    device: str = "auto"
    work_dir: str = ".d3cache"
    resume: bool = False
    soft_labels: bool = True
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
    path: Path
    file_bytes: int
    max_bytes: int
    plan: BudgetPlan
    evaluation: EvalResult | None
    expert_accuracy: list[float]


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


def max_bytes_of(cfg: PackConfig, num_classes: int, image_shape) -> tuple[float, int]:
    """(ipc, max_bytes) from --budget or --max-bytes."""
    per_ipc = num_classes * math.prod(image_shape) * 4
    if (cfg.budget is None) == (cfg.max_bytes is None):
        raise ConfigError("give exactly one of --budget (images per class) or --max-bytes")
    if cfg.budget is not None:
        if not cfg.budget > 0:
            raise ConfigError(f"--budget must be > 0 images per class, got {cfg.budget}")
        return float(cfg.budget), int(cfg.budget * per_ipc)
    if cfg.max_bytes <= 0:
        raise ConfigError(f"--max-bytes must be positive, got {cfg.max_bytes}")
    return cfg.max_bytes / per_ipc, int(cfg.max_bytes)


def settings_json(cfg: PackConfig) -> dict:
    """The distiller settings recorded in the file's provenance."""
    d = asdict(cfg)
    for key in ("output", "work_dir", "resume", "quiet", "device"):
        d.pop(key)
    return json.loads(json.dumps(d, default=str))


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


def make_header(info, parts, plan, ipc, max_bytes, mean, std, cfg: PackConfig, lr: float) -> dict:
    soft = cfg.soft_labels
    return {
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "labels": "soft" if soft else "hard",
        "samples_per_class": cfg.samples_per_class or max(10, 10 * plan.latents_per_class),
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
    """Random tensors of the planned shapes: measures the file size before training."""
    rng = np.random.default_rng(0)
    results, soft = [], []
    for i, entry in enumerate(header["subtasks"]):
        rows = len(entry["classes"]) * plan.latents_per_class
        state = {n: torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32))
                 for n, p in build_decoder(plan.decoders[i]).state_dict().items()}
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
# Distillation of one subtask, soft labels
# ---------------------------------------------------------------------------------------


def load_subset(source, classes: list[int], split: str, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images [N, C, H, W] and *local* labels 0..len(classes)-1."""
    x, y = source.load(split, classes=classes)
    local = np.full(source.info.num_classes, -1, dtype=np.int64)
    local[classes] = np.arange(len(classes))
    xt = normalize(torch.from_numpy(x).float().div_(255), mean, std)
    return xt, torch.from_numpy(local[y])


def distill_subtask(source, i, classes, plan, cfg: PackConfig, mean, std, device, run_dir: Path):
    x, y = load_subset(source, classes, "train", mean, std)
    tx, ty = _test_subset(source, classes, mean, std)
    with bar(cfg.quiet, total=cfg.experts.num_experts * cfg.experts.epochs,
             desc=f"experts {i + 1}/{cfg.subtasks}", unit="epoch") as pbar:
        traj = train_experts(x, y, len(classes), cfg.experts, Path(cfg.work_dir) / "experts", device=device,
                             progress=pbar, data_id=f"{source.info.content_hash}:{source.info.image_shape}",
                             classes=classes, x_test=tx, y_test=ty)
    dcfg = replace(cfg.distill, mean=tuple(mean), std=tuple(std))
    with bar(cfg.quiet, total=dcfg.iterations, desc=f"distil {i + 1}/{cfg.subtasks}", unit="it") as pbar:
        result = distill(x, y, len(classes), DecoderConfig.from_json(plan.decoders[i]), plan.latents_per_class,
                         traj, dcfg, device=device, checkpoint_dir=run_dir / f"subtask{i}", resume=cfg.resume,
                         progress=pbar)
    return result, traj


def _test_subset(source, classes, mean, std):
    if not source.info.num_test:
        return None, None
    return load_subset(source, classes, "test", mean, std)


def teacher_for_all(source, parts, trajs: list[Trajectories], cfg: PackConfig, mean, std, device) -> ConvNet:
    """A ConvNet on all classes: the single subtask's expert, or one trained on everything."""
    if len(parts) == 1:
        traj = trajs[0]
    else:
        x, y = load_subset(source, list(range(source.info.num_classes)), "train", mean, std)
        one = replace(cfg.experts, num_experts=1)
        with bar(cfg.quiet, total=one.epochs, desc="soft-label expert", unit="epoch") as pbar:
            traj = train_experts(x, y, source.info.num_classes, one, Path(cfg.work_dir) / "experts", device=device,
                                 progress=pbar, data_id=f"{source.info.content_hash}:all",
                                 classes=list(range(source.info.num_classes)))
    net = ConvNet(traj.convnet)
    return load_flat_(net, traj.final(0)).to(device).eval()


@torch.no_grad()
def soft_labels(teacher, results, plan, mean, std, device) -> list[np.ndarray]:
    """softmax(teacher(decode(prior mean))) for every prior of every subtask."""
    out = []
    for i, res in enumerate(results):
        dec = build_decoder(plan.decoders[i], res.decoder_state).to(device)
        t = dec(res.mu.to(device))  # [rows, C, H, W] tanh space
        probs = torch.softmax(teacher(tanh_to_normalized(t, mean, std)), dim=1)
        out.append(probs.cpu().numpy().astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------


def pack(cfg: PackConfig) -> PackResult:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    source = open_source(cfg.source, image_size=cfg.image_size, skip_bad=cfg.skip_bad, test=cfg.test,
                         holdout=cfg.holdout, seed=0)  # the held-out split is the data's, not the run's
    info = source.info
    ipc, max_bytes = max_bytes_of(cfg, info.num_classes, info.image_shape)
    parts = partition_classes(info.num_classes, cfg.subtasks)
    plan = fit(cfg, info, parts, ipc, max_bytes)
    mean, std = pixel_stats(source)
    run_dir = Path(cfg.work_dir) / "runs" / run_key(cfg, info.content_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    results, trajs = [], []
    for i, classes in enumerate(parts):
        res, traj = distill_subtask(source, i, classes, plan, cfg, mean, std, device, run_dir)
        results.append(res)
        trajs.append(traj)
    lr = float(np.mean([r.lr for r in results]))
    header = make_header(info, parts, plan, ipc, max_bytes, mean, std, cfg, lr)
    soft = None
    if cfg.soft_labels:
        teacher = teacher_for_all(source, parts, trajs, cfg, mean, std, device)
        soft = soft_labels(teacher, results, plan, mean, std, device)
    tensors, encodings = tensors_of(header, plan, results, soft)
    container = D3Container(header, tensors, encodings)
    fit_to_cap(container, max_bytes - EVAL_RESERVE)
    evaluation = None
    if cfg.evaluation is not None:
        evaluation = evaluate_pending(container, source, cfg, device, run_dir)
        header["evals"].append(evaluation.record(f"{info.name} [test split, {info.num_test} images]"))
    size = write_d3(cfg.output, container)
    expert_acc = [a for t in trajs for a in (t.test_accuracy or []) if a is not None]
    return PackResult(Path(cfg.output), size, max_bytes, plan, evaluation, expert_acc)


def fit(cfg: PackConfig, info, parts, ipc: float, max_bytes: int) -> BudgetPlan:
    req = BudgetRequest(
        num_classes=info.num_classes, image_shape=tuple(info.image_shape), max_bytes=max_bytes,
        subtask_classes=[len(p) for p in parts], soft_labels=cfg.soft_labels, ipc=ipc, reserve=EVAL_RESERVE,
        family=cfg.family, z_dim=cfg.z_dim, latents_per_class=cfg.latents_per_class, width=cfg.decoder_width,
        weight_encoding=cfg.encoding, ratios=gaussian_ratios(),
    )
    ones = [0.5] * info.image_shape[0]
    return fit_budget(req, measure=lambda plan: measure_plan(
        lambda p: make_header(info, parts, p, ipc, max_bytes, ones, ones, cfg, 0.01), plan))


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
