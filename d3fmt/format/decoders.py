"""Decoder configurations without torch: validate a decoder's JSON config and compute the
shape of every parameter it needs (``decoder_param_shapes``), so that ``D3Reader.verify``
and ``d3 inspect --verify`` can check a file's decoders without building them, and the
budget fitter can size decoders cheaply. d3fmt.models.decoder builds the torch modules
from these configs; the family descriptions and state-dict names are documented there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from d3fmt.errors import ConfigError, FormatError

FAMILIES = ("small", "medium", "large")
NORMS = ("group", "none")
# Hard caps, so that a hostile config cannot make us allocate a giant module.
MAX_IMAGE_SIZE = 1024
MAX_WIDTH = 4096
MAX_Z_DIM = 1 << 16
MAX_CHANNELS = 64
MAX_LATENTS_PER_CLASS = 1 << 20  # what the loader accepts (d3fmt.loader.representation)


def default_start_size(image_size: int) -> int:
    """The small side the decoder starts from: halve while even and above 4, at least twice.

    8 -> 2, 28 -> 7, 32 -> 4, 64 -> 4, 128 -> 4. Sides that cannot be halved even once
    (odd sides) have no start size; the config then raises ConfigError.
    """
    side, halvings = image_size, 0
    while side % 2 == 0 and (side > 4 or (halvings < 2 and side > 1)):
        side //= 2
        halvings += 1
    return side


@dataclass
class DecoderConfig:
    """Everything that defines a decoder's architecture; stored as JSON in the header."""

    family: str  # "small" | "medium" | "large"
    z_dim: int  # latent size
    channels: int  # output image channels C
    image_size: int  # output side H == W
    width: int  # base channel count k at the first stage
    start_size: int = 0  # side s the stages start from; 0 = default_start_size(image_size)
    min_channels: int = 8  # floor of every stage's channel count
    norm: str = "group"  # "group" (GroupNorm, batch-independent) | "none"
    norm_groups: int = 8  # GroupNorm groups = gcd(norm_groups, channels of that layer)

    def __post_init__(self):
        if self.start_size == 0 and isinstance(self.image_size, int) and self.image_size > 0:
            self.start_size = default_start_size(self.image_size)
        self.validate()

    # -- derived architecture -------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Number of resolution-doubling stages n: image_size = start_size * 2**n."""
        return int(round(math.log2(self.image_size // self.start_size)))

    @property
    def input_channels(self) -> int:
        """Channels of the [c, s, s] tensor that enters the first stage."""
        if self.family == "large":
            return self.z_dim // (self.start_size * self.start_size)
        return self.width

    def stage_channels(self) -> list[int]:
        """Output channels of each stage, in order."""
        shift = 0 if self.family == "large" else 1
        return [max(self.min_channels, self.width >> (i + shift)) for i in range(self.num_stages)]

    def groups(self, channels: int) -> int:
        return math.gcd(self.norm_groups, channels)

    # -- validation and JSON --------------------------------------------------------
    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            want = str if f.name in ("family", "norm") else int
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigError(
                    f"decoder config field {f.name!r} must be {want.__name__}, got {value!r}; fix the decoder config"
                )
        if self.family not in FAMILIES:
            raise ConfigError(f"decoder family {self.family!r} is unknown; use one of {', '.join(FAMILIES)}")
        if self.norm not in NORMS:
            raise ConfigError(f"decoder norm {self.norm!r} is unknown; use one of {', '.join(NORMS)}")
        _check_range("z_dim", self.z_dim, 1, MAX_Z_DIM)
        _check_range("channels", self.channels, 1, MAX_CHANNELS)
        _check_range("image_size", self.image_size, 2, MAX_IMAGE_SIZE)
        _check_range("width", self.width, 1, MAX_WIDTH)
        _check_range("min_channels", self.min_channels, 1, MAX_WIDTH)
        _check_range("norm_groups", self.norm_groups, 1, MAX_WIDTH)
        _check_range("start_size", self.start_size, 1, self.image_size // 2)
        ratio = self.image_size // self.start_size
        if self.image_size % self.start_size or ratio & (ratio - 1):
            raise ConfigError(
                f"decoder image_size {self.image_size} is not start_size {self.start_size} times a power of two; "
                "pick a start_size that halves down from the image side"
            )
        if self.family == "large" and self.z_dim % (self.start_size**2):
            raise ConfigError(
                f"large decoder needs z_dim divisible by start_size^2 = {self.start_size**2}, got {self.z_dim}; "
                "choose z_dim as a multiple of it"
            )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "DecoderConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"decoder config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"decoder config has unknown keys {unknown}; remove them or upgrade d3fmt")
        missing = [k for k in ("family", "z_dim", "channels", "image_size", "width") if k not in d]
        if missing:
            raise ConfigError(f"decoder config is missing keys {missing}; the file or config is incomplete")
        return cls(**d)


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"decoder {name}={value} is out of range [{lo}, {hi}]; fix the decoder config")


def _as_config(cfg) -> DecoderConfig:
    return cfg if isinstance(cfg, DecoderConfig) else DecoderConfig.from_json(cfg)


# ---------------------------------------------------------------------------------------
# Parameter shapes without building the module (the budget fitter calls this a lot).
# ---------------------------------------------------------------------------------------


def decoder_param_shapes(cfg: DecoderConfig | dict) -> dict[str, tuple[int, ...]]:
    """State-dict name -> shape, in state-dict order, computed without building anything."""
    cfg = _as_config(cfg)
    grouped = cfg.norm == "group"
    s, k = cfg.start_size, cfg.width
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.family != "large":
        shapes["fc.weight"] = (k * s * s, cfg.z_dim)
        shapes["fc.bias"] = (k * s * s,)
        if grouped:
            shapes["fc_norm.weight"] = (k,)
            shapes["fc_norm.bias"] = (k,)
    c_in = cfg.input_channels
    outs = cfg.stage_channels()
    for i, c_out in enumerate(outs):
        upsample = cfg.family != "small" and i == len(outs) - 1
        if upsample:
            shapes[f"stages.{i}.conv.weight"] = (c_out, c_in, 3, 3)
        else:
            kernel = 4 if cfg.family == "small" else 3
            shapes[f"stages.{i}.conv.weight"] = (c_in, c_out, kernel, kernel)
        if grouped:
            shapes[f"stages.{i}.norm.weight"] = (c_out,)
            shapes[f"stages.{i}.norm.bias"] = (c_out,)
        else:
            shapes[f"stages.{i}.conv.bias"] = (c_out,)
        c_in = c_out
    shapes["head.weight"] = (cfg.channels, c_in, 3, 3)
    shapes["head.bias"] = (cfg.channels,)
    return shapes


def decoder_param_count(cfg: DecoderConfig | dict) -> int:
    """Exact number of stored values of a decoder (parameters; it has no buffers)."""
    return sum(math.prod(shape) for shape in decoder_param_shapes(cfg).values())


def check_param_shapes(cfg: DecoderConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """FormatError unless ``shapes`` (parameter name -> shape) are exactly the config's."""
    want = decoder_param_shapes(cfg)
    missing = [n for n in want if n not in shapes]
    unexpected = sorted(n for n in shapes if n not in want)
    if missing:
        raise FormatError(f"decoder tensors missing: {missing[:5]}; the file is incomplete or its config is wrong")
    if unexpected:
        raise FormatError(f"unexpected decoder tensors: {unexpected[:5]}; the file does not match its decoder config")
    for name, shape in want.items():
        got = tuple(shapes[name])
        if got != shape:
            raise FormatError(
                f"decoder tensor {name!r} has shape {list(got)}, config needs {list(shape)}; the file is inconsistent"
            )


def check_decoders(header: dict, sections: dict) -> None:
    """FormatError unless d3fmt can build every subtask's decoder from the file, torch-free.

    ``header`` has passed the reader's checks; ``sections`` maps section names to
    SectionInfo. Each decoder config must be valid, match the subtask's z_dim and the
    header's image_shape, and its sections must be exactly the parameters the config
    implies, with their shapes (what D3Dataset checks before building anything).
    """
    image_shape = tuple(header["image_shape"])
    for i, sub in enumerate(header["subtasks"]):
        if sub["latents_per_class"] > MAX_LATENTS_PER_CLASS:
            raise FormatError(
                f"subtask {i} has {sub['latents_per_class']} latents per class, more than the "
                f"{MAX_LATENTS_PER_CLASS} d3fmt loads"
            )
        try:
            cfg = DecoderConfig.from_json(sub["decoder"])
        except ConfigError as exc:
            raise FormatError(f"subtask {i} decoder config is invalid ({exc})") from None
        if cfg.z_dim != sub["z_dim"] or (cfg.channels, cfg.image_size, cfg.image_size) != image_shape:
            raise FormatError(
                f"subtask {i} decoder does not match z_dim / image_shape in the header; the file is corrupt"
            )
        try:
            check_param_shapes(cfg, {p: sections[n].shape for p, n in sub["tensors"]["decoder"].items()})
        except FormatError as exc:
            raise FormatError(f"subtask {i}: {exc}") from None
