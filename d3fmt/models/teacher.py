"""The labelling teacher: a compact classifier stored in the .d3 file (a d3fmt addition).

method.md labels a decoded sample with its prior's class, or with one soft-label vector
per prior (a teacher's softmax on the decoded prior *mean*). Both give every sample of a
prior the same label, however far its noise draw wanders. A file may instead carry the
teacher itself: a small ConvNet trained on the real images, its bytes counted against the
budget like everything else. Every decoded sample is then labelled on the fly with

    p(x) = softmax(teacher((x - mean) / std) / temperature)        [K]

so a blurred, ambiguous or off-class draw gets the label it deserves, and the stream
transfers what the teacher knows about the *real* data to the student -- which no stored
prototype or per-prior label can do (measured: ``benchmarks/fmnist-ablation.md``).

The teacher is a :class:`d3fmt.models.convnet.ConvNet` with instance normalisation (no
batch dependence: a sample's label does not depend on the rest of its batch), rebuilt
from its JSON config plus named tensors, like a decoder. Header entry (spec/format.md):

    "teacher": {"model": "convnet", "config": ConvNetConfig JSON, "temperature": T,
                "tensors": {param name: section name}}     sections "teacher.{param name}"
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from d3fmt.errors import ConfigError, D3Error, FormatError
from d3fmt.models.convnet import ConvNet, ConvNetConfig

SECTION_PREFIX = "teacher."
MAX_TEACHER_WIDTH = 1024  # hostile configs must not allocate giant modules
AUTO_TEACHER = -1  # `--teacher-width auto`: the budget fitter's choice
MIN_TEACHER_STEPS = 1000  # SGD steps a teacher trains at least, however small the data (a weak teacher hurts)


def section_name(param: str) -> str:
    """The section that stores teacher parameter ``param``."""
    return f"{SECTION_PREFIX}{param}"


@dataclass
class TeacherConfig:
    """How the teacher is trained (``d3 pack --teacher-width/--teacher-epochs``)."""

    width: int = 0  # ConvNet width; 0 = no teacher (labels hard or per-prior soft)
    epochs: int = 6  # passes over the real training images (at least MIN_TEACHER_STEPS SGD steps)
    per_class: int = 6000  # the first images of every class it trains on (bounds its memory: per_class * K images)
    batch: int = 256
    lr: float = 0.01
    temperature: float = 1.0  # stored; labels are softmax(logits / temperature)

    def __post_init__(self):
        if self.width < 0 or self.width > MAX_TEACHER_WIDTH:
            raise ConfigError(f"--teacher-width must be in [0, {MAX_TEACHER_WIDTH}] (0 = no teacher), got {self.width}")
        if self.epochs < 1 or self.batch < 2 or self.per_class < 1:
            raise ConfigError(f"--teacher-epochs must be >= 1 (got {self.epochs}), the teacher batch >= 2 and its "
                              f"images per class >= 1 (got {self.per_class})")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("the teacher lr and temperature must be positive numbers")

    @property
    def enabled(self) -> bool:
        return self.width > 0

    def to_json(self) -> dict:
        return asdict(self)


def teacher_config(channels: int, num_classes: int, image_size: int, width: int) -> ConvNetConfig:
    """The teacher architecture: the library ConvNet (instance norm, average pooling)."""
    return ConvNetConfig(channels=channels, num_classes=num_classes, image_size=image_size, width=width)


def teacher_param_shapes(cfg: ConvNetConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, without building the module (for the budget fitter)."""
    shapes, c_in = {}, cfg.channels
    for i in range(cfg.depth):
        shapes[f"blocks.{i}.conv.weight"] = (cfg.width, c_in, 3, 3)
        shapes[f"blocks.{i}.conv.bias"] = (cfg.width,)
        if cfg.norm != "none":
            shapes[f"blocks.{i}.norm.weight"] = (cfg.width,)
            shapes[f"blocks.{i}.norm.bias"] = (cfg.width,)
        c_in = cfg.width
    shapes["classifier.weight"] = (cfg.num_classes, cfg.feature_dim)
    shapes["classifier.bias"] = (cfg.num_classes,)
    return shapes


def header_entry(model: ConvNet, temperature: float) -> dict:
    """The header's ``teacher`` object for ``model`` (tensor names included)."""
    return {"model": "convnet", "config": model.cfg.to_json(), "temperature": float(temperature),
            "tensors": {name: section_name(name) for name in model.state_dict()}}


def build_teacher(entry, get_tensor, *, num_classes: int, image_shape) -> tuple[ConvNet, float]:
    """Rebuild the teacher from its header entry and ``get_tensor(section) -> ndarray``.

    Validates the entry against the file (class count, image shape, tensor shapes) and
    raises FormatError naming what is wrong. Returns (model in eval mode, temperature).
    """
    if not isinstance(entry, dict) or entry.get("model") != "convnet":
        raise FormatError("the header's teacher is not a {'model': 'convnet', ...} object; the file is corrupt")
    temperature, names, raw = entry.get("temperature"), entry.get("tensors"), entry.get("config")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise FormatError("the teacher's temperature must be a positive number; the file is corrupt")
    if not isinstance(raw, dict) or not isinstance(names, dict):
        raise FormatError("the teacher lacks its config or tensor names; the file is corrupt")
    try:
        cfg = ConvNetConfig.from_json(raw)
    except (TypeError, D3Error) as exc:
        raise FormatError(f"the teacher's config is invalid ({exc}); the file is corrupt") from None
    c, h, w = (int(v) for v in image_shape)
    if (cfg.channels, cfg.image_size, cfg.num_classes) != (c, h, num_classes) or h != w or cfg.width > MAX_TEACHER_WIDTH:
        raise FormatError("the teacher's config does not match the file's image shape / class count; the file is corrupt")
    shapes = teacher_param_shapes(cfg)
    if set(names) != set(shapes):
        raise FormatError(f"the teacher's tensors {sorted(names)[:4]}... are not those of its config; the file is corrupt")
    state = {}
    for param, shape in shapes.items():
        array = get_tensor(names[param])
        if tuple(array.shape) != shape:
            raise FormatError(f"teacher tensor {param} has shape {list(array.shape)}, its config implies "
                              f"{list(shape)}; the file is corrupt")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if not torch.isfinite(tensor).all():
            raise FormatError(f"teacher tensor {param} holds NaN or infinite values; the file is corrupt")
        state[param] = tensor
    model = ConvNet(cfg)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), float(temperature)


def teacher_probs(model: ConvNet, x_normalized: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(teacher(x) / T): [N, C, H, W] normalised images -> [N, K] label vectors."""
    with torch.inference_mode():
        logits = model(x_normalized.to(next(model.parameters()).dtype))  # [N, K]
        return torch.softmax(logits.float() / temperature, dim=1)


def section_encoding(shape, weight_encoding: str, vector_encoding: str) -> str:
    """Matrices and convolution kernels in ``weight_encoding``, vectors in ``vector_encoding``."""
    return weight_encoding if len(shape) >= 2 else vector_encoding


def attach_teacher(container, model: ConvNet, temperature: float, *, weight_encoding: str = "int8",
                   vector_encoding: str = "float16") -> None:
    """Store ``model`` in ``container`` (a :class:`d3fmt.format.D3Container`) as its teacher."""
    container.header["teacher"] = header_entry(model, temperature)
    for param, value in model.state_dict().items():
        array = value.detach().cpu().float().numpy()
        container.tensors[section_name(param)] = np.ascontiguousarray(array)
        container.encodings[section_name(param)] = section_encoding(array.shape, weight_encoding, vector_encoding)

