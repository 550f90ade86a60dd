"""The settings of one `d3 pack` job: :class:`PackConfig`, built one way, recorded one way.

:func:`pack_config` is the one way to build a PackConfig from flat settings (the names
of `d3 pack`'s options): a preset (:mod:`d3fmt.distill.presets`) fills the settings left
out, every setting has its one default in :data:`DEFAULTS`, and the result is validated
on construction. :func:`settings_json` is what a file records in
``provenance.settings``; :func:`config_from_settings` reads it back (workers, `d3 merge`).

The first link of the distiller's one-way chain: settings -> :mod:`~d3fmt.distill.assemble`
-> :mod:`~d3fmt.distill.job` -> :mod:`~d3fmt.distill.subtask` -> :mod:`~d3fmt.distill.labels`
-> :mod:`~d3fmt.distill.merge` -> :mod:`~d3fmt.distill.launch` (which owns ``pack()``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from d3fmt.augment import DSAParams
from d3fmt.device import resolve_device
from d3fmt.distill.autoencoder import AutoencoderConfig
from d3fmt.distill.experts import ExpertConfig
from d3fmt.distill.memory import CHOOSABLE, parse_bytes
from d3fmt.distill.presets import DEFAULTS, REPRESENTATIONS, resolve_preset
from d3fmt.distill.trainer import DistillConfig
from d3fmt.errors import ConfigError
from d3fmt.evaluation.evaluate import EvalConfig
from d3fmt.format.budget import check_budget_args
from d3fmt.models.teacher import AUTO_TEACHER, MAX_TEACHER_WIDTH, TeacherConfig
from d3fmt.sources.cache import cache_dir_setting


@dataclass
class PackConfig:
    """Everything `d3 pack` needs; build it with :func:`pack_config`. Validated on
    construction (a ConfigError naming the option). The field order is the order of
    ``provenance.settings`` in the files written, so fields are only ever appended."""

    source: str
    output: str
    budget: float | None = None  # images per class
    max_bytes: int | None = None  # alternative to budget: an explicit byte cap
    image_size: int | None = None
    test: str | None = None
    holdout: float | None = None
    skip_bad: bool = DEFAULTS["skip_bad"]
    subtasks: int = DEFAULTS["subtasks"]
    subtask: int | None = None  # only this subtask: write a partial container (a job-array part)
    seed: int = DEFAULTS["seed"]
    device: str = DEFAULTS["device"]
    devices: list[str] | None = None  # one worker process per device; None: one per GPU when several
    work_dir: str = DEFAULTS["work_dir"]
    resume: bool = DEFAULTS["resume"]
    soft_labels: bool = DEFAULTS["soft_labels"]  # per-prior soft labels from an all-class teacher (`--soft-labels`)
    label_sample: int = DEFAULTS["label_sample"]  # real images per class (the first ones) the soft-label expert trains on
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
    quiet: bool = DEFAULTS["quiet"]
    # the labelling teacher stored in the file (d3fmt.models.teacher): its width, 0 = none (the default),
    # AUTO_TEACHER = the budget fitter's choice
    teacher_width: int = DEFAULTS["teacher_width"]
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    compare: bool = DEFAULTS["compare"]  # the final evaluation also trains the same-bytes codec family
    max_decode_mflop: float | None = None  # the fitter's decode cap per image; None: its default, 0: none
    # the decoded-image cache of ImageFolder / webdataset sources (d3fmt.sources.cache):
    cache_dir: str | None = DEFAULTS["cache_dir"]  # None: <work_dir>/sources; "": no cache (--no-cache)
    workers: int | None = DEFAULTS["workers"]  # processes decoding into the cache; None: the usable CPUs
    # what the file holds: "latent" (the paper's priors + decoders) or "anchors" (real images as
    # context-coded levels, d3fmt.distill.anchors) with anchor_bits bits per pixel value
    representation: str = DEFAULTS["representation"]
    anchor_bits: int = DEFAULTS["anchor_bits"]
    # the memory plan (d3fmt.distill.memory): its bound in bytes (None: the device's memory minus a
    # margin) and the settings it may choose (those not given; emptied once chosen)
    max_memory: int | None = DEFAULTS["max_memory"]
    planned: tuple[str, ...] = ()

    def __post_init__(self):
        check_budget_args(self.budget, self.max_bytes)
        if self.budget is not None:
            self.budget = float(self.budget)  # the same header ipc from Python as from the CLI
        if self.subtasks < 1:
            raise ConfigError(f"--subtasks must be at least 1, got {self.subtasks}")
        if self.subtask is not None and not 0 <= self.subtask < self.subtasks:
            raise ConfigError(f"--subtask must be in 0..{self.subtasks - 1} for --subtasks {self.subtasks}, "
                              f"got {self.subtask}")
        if self.teacher_width != AUTO_TEACHER and not 0 <= self.teacher_width <= MAX_TEACHER_WIDTH:
            raise ConfigError(f"--teacher-width must be auto or in 0..{MAX_TEACHER_WIDTH} (0: no teacher), "
                              f"got {self.teacher_width}")
        if self.compare and self.evaluation is None:
            raise ConfigError("--compare trains the codec family beside the final evaluation; drop --no-eval")
        if self.max_decode_mflop is not None and not self.max_decode_mflop >= 0:
            raise ConfigError(f"--max-decode-mflop must be >= 0 (0: no cap), got {self.max_decode_mflop}")
        if self.representation not in REPRESENTATIONS:
            raise ConfigError(f"--representation must be one of {', '.join(REPRESENTATIONS)}, got {self.representation!r}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory must be positive, got {self.max_memory} bytes")
        self.planned = tuple(self.planned)
        if set(self.planned) - set(CHOOSABLE):
            raise ConfigError(f"planned settings must be among {CHOOSABLE}, got {list(self.planned)}")
        if self.label_sample < 1:
            raise ConfigError(f"--label-sample must be >= 1 image per class, got {self.label_sample}")


# Settings of the distillation loop that `d3 pack` does not expose; None keeps DistillConfig's default.
ADVANCED = ("batch_syn", "mmd_samples", "mmd_real", "mmd_classes")


def pack_config(source: str, output: str, *, convnet_width: int | None = None,
                num_experts: int | None = None, expert_epochs: int | None = None, iterations: int | None = None,
                syn_steps: int | None = None, eval_epochs: int | None = None, devices: list[str] | None = None,
                samples_per_class: int | None = None, **settings) -> PackConfig:
    """The one way to build a :class:`PackConfig`: the ``preset`` setting fills the preset settings
    left None (``auto``: ``standard`` on CUDA, else ``fast``), :data:`DEFAULTS` every
    other setting left out, ``settings`` (the names of `d3 pack`'s options) override.

    ``warmup`` is a share of the iterations in [0, 1); ``evaluate=False`` is ``--no-eval``;
    ``match_epochs`` is the M expert epochs the student covers (``expert_epochs`` is the
    length of an expert's trajectory)."""
    unknown = set(settings) - set(DEFAULTS) - set(ADVANCED)
    if unknown:
        raise ConfigError(f"unknown pack settings {sorted(unknown)}")
    s = {**DEFAULTS, **{k: v for k, v in settings.items() if k in DEFAULTS and v is not None}}
    advanced = {k: settings[k] for k in ADVANCED if settings.get(k) is not None}
    cache_dir = cache_dir_setting(s["cache_dir"], s["no_cache"])
    if not 0 <= s["warmup"] < 1:
        raise ConfigError(f"--warmup is a share of the iterations in [0, 1), got {s['warmup']}")
    p = resolve_preset(s["preset"], resolve_device(s["device"]).type == "cuda", {
        "convnet_width": convnet_width, "num_experts": num_experts, "expert_epochs": expert_epochs,
        "iterations": iterations, "syn_steps": syn_steps, "eval_epochs": eval_epochs})
    seed, width, iterations = s["seed"], p["convnet_width"], p["iterations"]
    # what the memory plan chooses: the settings not given (--subtasks also counts as given with --subtask)
    planned = tuple(name for name in CHOOSABLE if settings.get(name) is None
                    and not (name == "subtasks" and settings.get("subtask") is not None))
    max_memory = None if s["max_memory"] is None else parse_bytes(s["max_memory"])
    return PackConfig(
        source=source, output=output, budget=s["budget"], max_bytes=s["max_bytes"], image_size=s["image_size"],
        test=s["test"], holdout=s["holdout"], skip_bad=s["skip_bad"], subtasks=s["subtasks"], subtask=s["subtask"],
        label_sample=s["label_sample"], seed=seed, device=s["device"], devices=devices, work_dir=s["work_dir"],
        resume=s["resume"], soft_labels=s["soft_labels"], samples_per_class=samples_per_class, family=s["family"],
        z_dim=s["z_dim"], latents_per_class=s["latents_per_class"], decoder_width=s["decoder_width"],
        encoding=s["encoding"], quiet=s["quiet"], teacher_width=s["teacher_width"],
        teacher=TeacherConfig(epochs=s["teacher_epochs"]), compare=s["compare"],
        max_decode_mflop=s["max_decode_mflop"],
        cache_dir=cache_dir, workers=s["workers"], representation=s["representation"], anchor_bits=s["anchor_bits"],
        max_memory=max_memory, planned=planned,
        experts=ExpertConfig(num_experts=p["num_experts"], epochs=p["expert_epochs"], width=width, seed=seed),
        distill=DistillConfig(iterations=iterations, syn_steps=p["syn_steps"], expert_epochs=s["match_epochs"],
                              max_start_epoch=s["max_start_epoch"], mmd_weight=s["mmd_weight"], seed=seed,
                              warmup=round(s["warmup"] * iterations),
                              autoencoder=AutoencoderConfig(steps=s["pretrain_steps"], priors=s["priors"]),
                              checkpoint_every=s["checkpoint_every"], dsa=DSAParams(), **advanced),
        evaluation=EvalConfig(epochs=p["eval_epochs"], runs=s["eval_runs"], width=width, seed=seed)
        if s["evaluate"] else None,
    )


# Fields that say how or where a process runs, not what it computes.
RUN_ONLY_FIELDS = ("output", "work_dir", "resume", "quiet", "device", "devices", "subtask", "cache_dir", "workers",
                   "max_memory", "planned")


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
    if "teacher" in d:
        d["teacher"] = TeacherConfig(**d["teacher"])
    try:
        return PackConfig(**d, **run)
    except TypeError as exc:
        raise ConfigError(f"recorded settings do not fit this d3fmt version ({exc}); use the version that wrote them") from None


def config_to_json(cfg: PackConfig) -> dict:
    """All of ``cfg`` as JSON (a worker process's job config)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def run_key(cfg: PackConfig, source_hash: str) -> str:
    blob = json.dumps({"source": source_hash, "settings": settings_json(cfg)}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()
