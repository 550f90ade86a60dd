"""Fit a D3 representation into a byte budget.

A budget of B images per class is ``B * K * C * H * W * 4`` bytes for the *whole* .d3
file (priors, decoders, soft labels, header). The fitter picks, before any training:

- ``latents_per_class`` L and ``z_dim``: L is ``LATENTS_PER_IPC`` latents per image-per-class,
  between ``MIN_LATENTS`` and ``MAX_DEFAULT_LATENTS``; z_dim starts at the reference 64 and shrinks
  (not below ``MIN_PREFERRED_Z`` while fewer latents would allow it), then L shrinks,
  until the priors take at most ``PRIOR_SHARE`` of the budget. Many latents of a moderate
  z_dim are what the autoencoder start (:mod:`d3fmt.distill.autoencoder`) turns into
  diverse samples: on Fashion-MNIST at budget 1, small decoder z 32 with L 5 gave 73.4%
  against 66.8% for the former choice (large decoder, z 196, L 1); at budget 10, L 100
  (z 32) and L 20 (z 64) were within noise of each other with hard labels (76.9% and 77.3%),
  and the many-latent rule is what the 79.7% budget-1 scoreboard row used (see
  ``benchmarks/fmnist-ablation.md``);
- the decoder family and its width k: the widest "small" decoder that fits what is left
  ("large" only when no small one fits) and whose decode cost stays under
  ``max_decode_mflop`` per image (default :func:`default_decode_mflop`: ``DECODE_KFLOP_PER_PIXEL``
  kFLOP per output pixel, 15.7 MFLOP at 28x28, 81.9 at 64x64), so that a CPU DataLoader
  decodes faster than a small model trains: without the cap, Fashion-MNIST at budget 50
  bought a 42 MFLOP decoder that one core decodes at 1,100-1,600 images/s, no faster than a
  width-32 ConvNet trains (``benchmarks/loader.md``). Bytes the capped decoder leaves go
  to more latents per class and a more precise weight encoding;
- tensor encodings: priors and norm/bias vectors in float16, soft labels int8 per row,
  decoder matrices float32 when even then the decoder is at least ``MIN_F32_WIDTH`` wide,
  else float16 when that still leaves a width >= ``MIN_F16_WIDTH``, else int8 with
  per-channel scales (twice the parameters of float16 for the same bytes);
- when even the widest decoder (``MAX_WIDTH``) leaves the file under ``FILL`` of the
  budget, more latents per class fill the rest (up to ``MAX_LATENTS``).

Section sizes are the raw sizes times the zstd ratio that Gaussian values of each
encoding reach (``ratios``; 1.0 gives a strict upper bound, since the writer only uses
zstd when it is smaller). Trained weights are heavier-tailed than Gaussians and compress
at least as well, so files land a little under the target. A ``measure`` callback that
encodes a same-shaped dummy container with Gaussian tensors gives the exact size with
the header, and the fitter shrinks the width until that fits. A small ``reserve`` keeps
room for the evaluation records that ``d3 pack``/``d3 eval`` add afterwards. After
training, :func:`d3fmt.distill.assemble.fit_to_cap` guarantees the cap whatever the ratios.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from d3fmt.errors import BudgetError, ConfigError
from d3fmt.format.budget import Budget
from d3fmt.format.decoders import FAMILIES
from d3fmt.format.encoding import FLOAT_ENCODINGS
from d3fmt.models.decoder import DecoderConfig, decode_mflop, decoder_param_shapes

PRIOR_SHARE = 0.45  # at most this share of the budget goes to latent means + log-variances
MIN_F16_WIDTH = 48  # below this width, int8 decoder weights buy a wider decoder instead
MIN_F32_WIDTH = 256  # float32 weights only once the decoder is this wide anyway
MAX_WIDTH = 2048
MAX_LATENTS = 500  # when the widest decoder leaves bytes unused, more latents fill them
LATENTS_PER_IPC = 10  # default L: 10 * images-per-class, clamped to [MIN_LATENTS, MAX_DEFAULT_LATENTS]
MIN_LATENTS = 5
MAX_DEFAULT_LATENTS = 500
MIN_PREFERRED_Z = 16  # fewer latents rather than a z_dim below this
FILL = 0.90  # below this share of the budget, the fitter adds latents per class
MIN_WIDTH = 4
Z_CHOICES = (64, 32, 16, 8)
ALIGN = 8
HEADER_BASE = 1600  # JSON header without sections: names, budget, provenance (raw bytes)
HEADER_PER_SECTION = 150  # one section entry in the JSON header (raw bytes)
ENCODINGS = FLOAT_ENCODINGS  # the decoder weight encodings the fitter may choose
DECODE_KFLOP_PER_PIXEL = 20.0  # default decode cap: kFLOP per output pixel (H * W), see default_decode_mflop


@dataclass
class BudgetRequest:
    """What the fitter must fit: the byte cap (with the data's shape) and the subtasks."""

    budget: Budget  # the byte cap, the class count and the image shape
    subtask_classes: list[int]  # number of classes in each subtask
    soft_labels: bool = True
    reserve: int = 0  # bytes kept free for later evaluation records
    # user overrides (None = let the fitter choose)
    family: str | None = None
    z_dim: int | None = None
    latents_per_class: int | None = None
    width: int | None = None
    weight_encoding: str | None = None
    ratios: dict[str, float] | None = None  # expected stored/raw bytes per encoding; None = 1.0
    max_decode_mflop: float | None = None  # decode cost cap per image; None = default_decode_mflop, 0 = none

    @property
    def decode_cap(self) -> float | None:
        """The MFLOP-per-image cap in force (None: no cap)."""
        if self.max_decode_mflop is None:
            return default_decode_mflop(self.image_shape)
        return self.max_decode_mflop if self.max_decode_mflop > 0 else None

    @property
    def num_classes(self) -> int:
        return self.budget.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:  # (C, H, W)
        return self.budget.image_shape

    @property
    def max_bytes(self) -> int:
        return self.budget.max_bytes


@dataclass
class BudgetPlan:
    """The fitter's choices; recorded in the file under ``budget.choices``."""

    family: str
    z_dim: int
    latents_per_class: int
    width: int
    weight_encoding: str  # decoder matrices (ndim >= 2)
    vector_encoding: str = "float16"  # decoder biases / norm parameters (ndim == 1)
    prior_encoding: str = "float16"  # mu and logvar
    soft_encoding: str = "int8"  # soft labels, one scale per row
    estimated_bytes: int = 0  # upper bound of the file size (all sections raw)
    max_bytes: int = 0
    teacher_width: int = 0  # the labelling teacher's ConvNet width (0: no teacher), see fit_teacher
    decode_mflop: float = 0.0  # nominal MFLOP to decode one image with the chosen decoder
    max_decode_mflop: float | None = None  # the cap the fitter worked under (None: none)
    decoders: list[dict] = field(default_factory=list)  # one DecoderConfig JSON per subtask

    def choices(self) -> dict:
        d = asdict(self)
        d.pop("decoders")
        return d

    def tensor_encoding(self, kind: str, ndim: int) -> str:
        """Encoding of a section: kind is "mu", "logvar", "soft" or "dec"."""
        if kind in ("mu", "logvar"):
            return self.prior_encoding
        if kind == "soft":
            return self.soft_encoding
        return self.weight_encoding if ndim >= 2 else self.vector_encoding


def section_bytes(shape: tuple[int, ...], encoding: str) -> int:
    """Raw stored size of one section, rounded up to the 8-byte alignment."""
    n = math.prod(shape)
    if encoding == "float32":
        size = 4 * n
    elif encoding == "float16":
        size = 2 * n
    elif encoding == "int8":
        size = n + (4 * shape[0] if len(shape) >= 1 else 4)
    else:
        raise ConfigError(f"unknown tensor encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    return -(-size // ALIGN) * ALIGN


def estimate_bytes(req: BudgetRequest, plan: BudgetPlan) -> int:
    """Expected file size of a plan from shapes alone (sections times their zstd ratio)."""
    ratios = req.ratios or {}
    sections: list[tuple[tuple[int, ...], str]] = []
    for k_i, dec in zip(req.subtask_classes, plan.decoders):
        rows = k_i * plan.latents_per_class
        sections += [((rows, plan.z_dim), plan.prior_encoding)] * 2
        if req.soft_labels:
            sections.append(((rows, req.num_classes), plan.soft_encoding))
        for shape in decoder_param_shapes(dec).values():
            sections.append((shape, plan.tensor_encoding("dec", len(shape))))
    data = sum(math.ceil(section_bytes(shape, enc) * ratios.get(enc, 1.0)) for shape, enc in sections)
    return HEADER_BASE + HEADER_PER_SECTION * len(sections) + data


def gaussian_ratios(sample: int = 1 << 16) -> dict[str, float]:
    """stored/raw bytes that zstd reaches on Gaussian values in each encoding."""
    from d3fmt.format.compression import compress
    from d3fmt.format.encoding import encode_tensor

    values = np.random.default_rng(0).standard_normal((64, sample // 64)).astype(np.float32)
    out = {}
    for enc in ENCODINGS:
        raw = encode_tensor(values, enc)
        out[enc] = min(1.0, len(compress(raw)) / len(raw))
    return out


def _decoder_json(req: BudgetRequest, family: str, z_dim: int, width: int) -> dict:
    c, h, _ = req.image_shape
    return DecoderConfig(family=family, z_dim=z_dim, channels=c, image_size=h, width=width).to_json()


def _plan(req: BudgetRequest, family: str, z_dim: int, lpc: int, width: int, enc: str) -> BudgetPlan:
    dec = _decoder_json(req, family, z_dim, width)
    plan = BudgetPlan(family=family, z_dim=z_dim, latents_per_class=lpc, width=width, weight_encoding=enc)
    plan.decoders = [dict(dec) for _ in req.subtask_classes]
    plan.decode_mflop = round(decode_mflop(dec), 3)
    plan.max_decode_mflop = req.decode_cap
    plan.estimated_bytes = estimate_bytes(req, plan)
    plan.max_bytes = req.max_bytes
    return plan


def _widest(req: BudgetRequest, family: str, z: int, lpc: int, enc: str, target: int) -> BudgetPlan | None:
    """The widest decoder of this family/z/L/encoding under ``target`` bytes (binary search)."""
    if req.width is not None:
        plan = _plan(req, family, z, lpc, req.width, enc)
        return plan if plan.estimated_bytes <= target else None
    lo, hi = MIN_WIDTH, _cheap_enough_width(req, family, z)
    if _plan(req, family, z, lpc, lo, enc).estimated_bytes > target:
        return None
    while lo < hi:  # invariant: width lo fits
        mid = (lo + hi + 1) // 2
        if _plan(req, family, z, lpc, mid, enc).estimated_bytes <= target:
            lo = mid
        else:
            hi = mid - 1
    return _plan(req, family, z, lpc, lo, enc)


def default_decode_mflop(image_shape: tuple[int, int, int]) -> float:
    """The default decode cap: ``DECODE_KFLOP_PER_PIXEL`` kFLOP per output pixel (H * W).

    Chosen from ``benchmarks/loader.md`` (decoder alone, one core): at 28x28 a 15.6 MFLOP
    decoder decodes about 2,300-3,600 images/s, two to three times what a width-32 ConvNet
    trains on a core (about 1,150), so one DataLoader worker core keeps ahead of training;
    the uncapped 42 MFLOP decoder of budget 50 (1,100-1,600 images/s) did not. Training
    cost grows with the pixel count too (ConvNet-32 trains about 120 images/s per core at
    64x64x3), hence the scaling.
    """
    _, h, w = image_shape
    return round(DECODE_KFLOP_PER_PIXEL * h * w / 1000, 3)


def _cheap_enough_width(req: BudgetRequest, family: str, z: int) -> int:
    """The widest decoder of this family/z under the decode cap (MIN_WIDTH if none is)."""
    cap = req.decode_cap
    lo, hi = MIN_WIDTH, MAX_WIDTH
    if cap is None or decode_mflop(_decoder_json(req, family, z, hi)) <= cap:
        return hi
    while lo < hi:  # invariant: lo is under the cap, or lo == MIN_WIDTH
        mid = (lo + hi + 1) // 2
        if decode_mflop(_decoder_json(req, family, z, mid)) <= cap:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _z_options(req: BudgetRequest, family: str) -> list[int]:
    if req.z_dim is not None:
        return [req.z_dim]
    if family == "large":  # z is reshaped to [z / s^2, s, s]: a few channels at the start side
        s = DecoderConfig(family="small", z_dim=1, channels=1, image_size=req.image_shape[1], width=8).start_size
        return [c * s * s for c in (8, 4, 2, 1)]
    return list(Z_CHOICES)


def _lpc_default(req: BudgetRequest) -> int:
    if req.latents_per_class is not None:
        return req.latents_per_class
    return int(min(MAX_DEFAULT_LATENTS, max(MIN_LATENTS, round(LATENTS_PER_IPC * req.budget.ipc))))


def _prior_bytes(req: BudgetRequest, z: int, lpc: int) -> int:
    return 2 * section_bytes((req.num_classes * lpc, z), "float16")


def _candidates(req: BudgetRequest, target: int):
    """(family, z, L) in order of preference, each with priors under PRIOR_SHARE.

    The most latents whose priors fit with a z_dim >= MIN_PREFERRED_Z first (largest z
    first); then fewer latents, in case no decoder fits beside those priors; failing all
    that, any z_dim.
    """
    families = [req.family] if req.family else ["small", "large"]
    for family in families:
        options = _z_options(req, family)
        if req.latents_per_class is not None:
            fits = [z for z in options if _prior_bytes(req, z, req.latents_per_class) <= PRIOR_SHARE * target]
            for z in fits or options:
                yield family, z, req.latents_per_class
            continue
        for min_z in (MIN_PREFERRED_Z, 1):
            zs_allowed = [z for z in options if z >= min_z] or options
            for lpc in range(_lpc_default(req), 0, -1):
                for z in zs_allowed:
                    if _prior_bytes(req, z, lpc) <= PRIOR_SHARE * target:
                        yield family, z, lpc


def _encodings(req: BudgetRequest) -> list[str]:
    return [req.weight_encoding] if req.weight_encoding else ["float32", "float16", "int8"]


MIN_ACCEPTED_WIDTH = {"float32": MIN_F32_WIDTH, "float16": MIN_F16_WIDTH, "int8": 0}


def _search(req: BudgetRequest, target: int) -> BudgetPlan | None:
    """The first (family, z, L) candidate that fits, at the widest decoder of its best encoding."""
    for family, z, lpc in _candidates(req, target):
        best: BudgetPlan | None = None
        for enc in _encodings(req):
            plan = _widest(req, family, z, lpc, enc, target)
            if plan is None:
                continue
            best = plan
            capped = plan.width >= _cheap_enough_width(req, family, z)  # a smaller encoding buys no width
            if plan.width >= MIN_ACCEPTED_WIDTH[enc] or capped or req.weight_encoding is not None:
                break  # else a smaller encoding gives a wider decoder: try it next
        if best is not None:
            return best
    return None


def smallest_bytes(req: BudgetRequest) -> int:
    """Bytes of the smallest configuration the fitter would accept (for the error message)."""
    lpc = req.latents_per_class or 1
    z = req.z_dim or min(_z_options(req, req.family or "small"))
    plan = _plan(req, req.family or "small", z, lpc, req.width or MIN_WIDTH, req.weight_encoding or "int8")
    return plan.estimated_bytes + req.reserve


def fit_budget(req: BudgetRequest, measure: Callable[[BudgetPlan], int] | None = None) -> BudgetPlan:
    """Choose the configuration that uses the budget best; raise BudgetError if none fits.

    ``measure(plan)`` returns the exact size of a same-shaped container written with all
    sections raw (an upper bound of the real file); when given, the width is shrunk until
    the measured size fits under ``max_bytes - reserve``.
    """
    _check_request(req)
    target = req.max_bytes - req.reserve
    plan = _search(req, target)
    if plan is None:
        raise _too_small(req)
    plan = _fill_with_latents(req, plan, target)
    if measure is not None:
        plan = _shrink_to_measured(req, plan, target, measure)
    return plan


def _fill_with_latents(req: BudgetRequest, plan: BudgetPlan, target: int) -> BudgetPlan:
    """Add latents per class while the widest decoder leaves the budget under-used."""
    if req.latents_per_class is not None:
        return plan
    while plan.estimated_bytes < FILL * target and plan.latents_per_class < MAX_LATENTS:
        bigger = _widest(req, plan.family, plan.z_dim, plan.latents_per_class + 1, plan.weight_encoding, target)
        if bigger is None or bigger.width < plan.width:
            break
        plan = bigger
    return plan


def _shrink_to_measured(req, plan, target, measure) -> BudgetPlan:
    size = measure(plan)
    while size > target:
        if plan.width <= MIN_WIDTH or req.width is not None:
            raise _too_small(req)
        # shrink the analytic target by the overshoot and search again
        shrunk = _widest(req, plan.family, plan.z_dim, plan.latents_per_class, plan.weight_encoding,
                         plan.estimated_bytes - (size - target) - ALIGN)
        if shrunk is None:
            raise _too_small(req)
        plan, size = shrunk, measure(shrunk)
    plan.estimated_bytes = size
    return plan


def _check_request(req: BudgetRequest) -> None:
    if req.weight_encoding is not None and req.weight_encoding not in ENCODINGS:
        raise ConfigError(f"unknown encoding {req.weight_encoding!r}; use one of {', '.join(ENCODINGS)}")
    if req.max_decode_mflop is not None and not req.max_decode_mflop >= 0:
        raise ConfigError(f"the decode cap must be >= 0 MFLOP per image (0: none), got {req.max_decode_mflop}")
    if req.family is not None and req.family not in FAMILIES:
        raise ConfigError(f"unknown decoder family {req.family!r}; use one of {', '.join(FAMILIES)}")


TEACHER_SHARE = 0.25  # at most this share of the budget goes to the labelling teacher
MAX_AUTO_TEACHER_WIDTH = 64  # the fitter's widest teacher (wider ones cost CPU time more than they add)
MIN_TEACHER_WIDTH = 4


def teacher_bytes(num_classes: int, image_shape: tuple[int, int, int], width: int) -> int:
    """Upper bound of what a teacher of ``width`` adds to a file: its sections (raw, int8
    kernels and matrices, float16 vectors) plus their header entries."""
    from d3fmt.models.teacher import section_encoding, teacher_config, teacher_param_shapes

    c, h, _ = image_shape
    shapes = teacher_param_shapes(teacher_config(c, num_classes, h, width))
    data = sum(section_bytes(s, section_encoding(s, "int8", "float16")) for s in shapes.values())
    # header: a section entry + a name-map entry per tensor and the config, about half of
    # HEADER_PER_SECTION each once the header is compressed (measured: 2,354 bytes in all
    # for a width-8 teacher on 8x8 images, estimated 3,100)
    return data + HEADER_PER_SECTION * len(shapes) // 2 + 256


def fit_teacher(num_classes: int, image_shape: tuple[int, int, int], max_bytes: int, width: int | None) -> int:
    """The teacher width: ``width`` when given (0: none), else the widest up to
    ``MAX_AUTO_TEACHER_WIDTH`` whose bytes stay under ``TEACHER_SHARE`` of the cap (0 when
    not even ``MIN_TEACHER_WIDTH`` fits)."""
    if width is not None:
        return width
    fits = [w for w in range(MIN_TEACHER_WIDTH, MAX_AUTO_TEACHER_WIDTH + 1)
            if teacher_bytes(num_classes, image_shape, w) <= TEACHER_SHARE * max_bytes]
    return max(fits, default=0)


def _too_small(req: BudgetRequest) -> BudgetError:
    need = smallest_bytes(req)
    ipc = req.budget.ipc_of(need)
    return BudgetError(
        f"no configuration fits in {req.max_bytes} bytes; the smallest needs about {need} bytes "
        f"(--budget {math.ceil(ipc * 100) / 100:g} or --max-bytes {need})"
    )


