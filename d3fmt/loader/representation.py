"""The torch view of a .d3 container: latent priors + decoders -> images.

Also the one place that defines how decoder output becomes pixels (the distiller imports
these too, so training and loading can never disagree):

- the decoder ends in tanh, t in [-1, 1]; pixels are ``x01 = (t + 1) / 2`` in [0, 1]
  (ToTensor convention). Mapping the *full* pixel range onto tanh's range means black and
  white are reachable, which tanh inside a mean/std-normalised space would not allow.
- the "training normalisation" is ``(x01 - mean) / std`` per channel, with the header's
  ``normalization`` (mean/std in [0, 1] pixel units, like torchvision).

Priors of subtask t are stored class-major: row r of its ``mu``/``logvar`` belongs to class
``subtask["classes"][r // L]``, latent ``r % L``. A sample is ``G_t(mu + exp(logvar/2) * eps)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3fmt.errors import ConfigError, D3Error, FormatError
from d3fmt.models.decoder import Decoder, build_decoder
from d3fmt.models.teacher import build_teacher, teacher_probs

# ---------------------------------------------------------------------------------------
# Pixel conventions (shared with the distiller).
# ---------------------------------------------------------------------------------------


def tanh_to_unit(t: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> pixels in [0, 1]."""
    return ((t + 1.0) * 0.5).clamp_(0.0, 1.0)


def unit_to_tanh(x01: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the decoder's [-1, 1] space (how real images are compared)."""
    return x01 * 2.0 - 1.0


def normalize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    """Pixels in [0, 1] [..., C, H, W] -> training normalisation (x - mean) / std per channel."""
    mean = torch.as_tensor(mean, dtype=x01.dtype, device=x01.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x01.dtype, device=x01.device).reshape(-1, 1, 1)
    return (x01 - mean) / std


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    return x * std + mean


def tanh_to_normalized(t: torch.Tensor, mean, std) -> torch.Tensor:
    """Decoder output -> training normalisation, through the pixel range."""
    return normalize(tanh_to_unit(t), mean, std)


LABEL_MODES = ("hard", "soft", "teacher")  # the class index, the stored soft labels, the stored teacher
CPU_CHUNK = 32  # samples per decoder call on CPU (cache-sized activations)

# ---------------------------------------------------------------------------------------
# The representation.
# ---------------------------------------------------------------------------------------


@dataclass
class PriorRef:
    """Where the priors of a batch of (class, latent) pairs live."""

    subtask: torch.Tensor  # [N] int64, index into header["subtasks"]
    row: torch.Tensor  # [N] int64, row of that subtask's mu / logvar / soft


@dataclass
class SubtaskView:
    """One subtask as torch tensors: its priors and its decoder, already on the target device
    (the header entry it comes from is :class:`d3fmt.format.model.Subtask`)."""

    classes: list[int]
    latents_per_class: int
    z_dim: int
    mu: torch.Tensor  # [K_t * L, z] float32
    logvar: torch.Tensor  # [K_t * L, z] float32
    soft: torch.Tensor | None  # [K_t * L, num_classes] float32
    decoder: Decoder


@dataclass
class Anchors:
    """The file's anchors (format 1.2): real images kept as a few levels, class-major."""

    pixels: torch.Tensor  # [A, C, H, W] uint8, each level as its value (a quarter of float32's memory)
    counts: torch.Tensor  # [K] int64, anchors of each class (0 for classes not loaded)
    starts: torch.Tensor  # [K] int64, row of each class's first anchor

    @classmethod
    def empty(cls, num_classes: int, image_shape) -> "Anchors":
        zeros = torch.zeros(num_classes, dtype=torch.int64)
        return cls(torch.zeros((0, *image_shape), dtype=torch.uint8), zeros, zeros.clone())

    @classmethod
    def from_entry(cls, entry: dict, num_classes: int, image_shape, get_tensor, wanted=None) -> "Anchors":
        """Decode the stream (FormatError if it is corrupt); keep only the ``wanted`` classes."""
        from d3fmt.format.levelcode import anchor_pixels

        counts = torch.tensor([int(n) for n in entry["counts"]], dtype=torch.int64)
        if counts.shape[0] != num_classes or bool((counts < 0).any()):
            raise FormatError(f"anchors list counts for {counts.shape[0]} classes, the file has {num_classes}")
        pixels = torch.from_numpy(anchor_pixels(entry, image_shape, get_tensor))  # [A, C, H, W] uint8
        starts = torch.cumsum(counts, 0) - counts
        if wanted is not None:
            keep = torch.tensor([c in wanted for c in range(num_classes)])
            counts = torch.where(keep, counts, torch.zeros_like(counts))
        return cls(pixels, counts, starts)

    def to(self, device) -> "Anchors":
        return Anchors(self.pixels.to(device), self.counts.to(device), self.starts.to(device))

    def count(self, cls: int) -> int:
        return int(self.counts[int(cls)])

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in (self.counts > 0).nonzero().flatten().tolist()]

    def images(self, cls: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Anchor ``index`` of each class -> [N, C, H, W] pixels in [0, 1]."""
        return self.pixels[self.starts[cls] + index].float().div_(255)


class Representation:
    """Priors and decoders of one container, ready to decode on a device.

    Build it with :meth:`from_reader` (a lazily read file) or :meth:`from_container`
    (an in-memory container). Only the subtasks that hold one of ``classes`` are loaded.
    """

    def __init__(self, header: dict, subtasks: dict[int, SubtaskView], device, dtype, teacher=None,
                 anchors: "Anchors | None" = None):
        self.header = header
        self.subtasks = subtasks  # subtask index -> SubtaskView (only the loaded ones)
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_classes = int(header["num_classes"])
        self.image_shape = tuple(int(v) for v in header["image_shape"])
        self.labels = header.get("labels", "hard")
        self.z_max = max((s.z_dim for s in subtasks.values()), default=0)
        # class -> (subtask, position of the class inside it, L); -1 for classes not loaded.
        sub = torch.full((self.num_classes,), -1, dtype=torch.int64)
        pos = torch.full((self.num_classes,), -1, dtype=torch.int64)
        lpc = torch.zeros((self.num_classes,), dtype=torch.int64)
        for t, s in subtasks.items():
            for p, c in enumerate(s.classes):
                sub[c], pos[c], lpc[c] = t, p, s.latents_per_class
        self._class_subtask = sub.to(self.device)
        self._class_pos = pos.to(self.device)
        self._class_lpc = lpc.to(self.device)
        self.has_soft = bool(subtasks) and all(s.soft is not None for s in subtasks.values())
        self.anchors = anchors.to(self.device) if anchors is not None else Anchors.empty(self.num_classes,
                                                                                         self.image_shape)
        # (ConvNet on the device, temperature) when the file stores a labelling teacher.
        self.teacher = teacher
        self.has_teacher = teacher is not None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_reader(cls, reader, device="cpu", dtype=torch.float32, classes=None) -> "Representation":
        return cls._build(reader.header, reader.tensor, device, dtype, classes)

    @classmethod
    def from_container(cls, container, device="cpu", dtype=torch.float32, classes=None) -> "Representation":
        def get(name):
            if name not in container.tensors:
                raise FormatError(f"section {name!r} named in the header is missing; the file is incomplete")
            return container.tensors[name]

        return cls._build(container.header, get, device, dtype, classes)

    @classmethod
    def _build(cls, header, get_tensor, device, dtype, classes) -> "Representation":
        num_classes, image_shape = _check_header(header)
        wanted = None if classes is None else {int(c) for c in classes}
        seen: set[int] = set()
        subtasks: dict[int, SubtaskView] = {}
        for t, entry in enumerate(header["subtasks"]):
            entry_classes = _subtask_classes(entry, t, num_classes, seen)
            if wanted is not None and wanted.isdisjoint(entry_classes):
                continue
            subtasks[t] = _load_subtask(entry, t, entry_classes, num_classes, image_shape, get_tensor, device, dtype)
        anchors = None
        if header.get("anchors") is not None:
            anchors = Anchors.from_entry(header["anchors"], num_classes, image_shape, get_tensor, wanted)
            seen |= set(anchors.classes)
        if wanted is not None and wanted - seen:
            raise ConfigError(
                f"classes {sorted(wanted - seen)[:10]} are not in this file (it holds {len(seen)} of "
                f"{num_classes} classes); choose classes it holds"
            )
        if wanted is None and not header.get("partial") and len(seen) != num_classes:
            raise FormatError(f"the subtasks cover {len(seen)} of {num_classes} classes; the file is incomplete")
        teacher = None
        if header.get("teacher") is not None:
            model, temperature = build_teacher(header["teacher"], get_tensor, num_classes=num_classes,
                                               image_shape=image_shape)
            teacher = (model.to(device=device, dtype=dtype), temperature)
        return cls(header, subtasks, device, dtype, teacher, anchors)

    # -- queries --------------------------------------------------------------------
    def latents_per_class(self, cls: int) -> int:
        """Latent priors of class ``cls`` (0 for a class held by anchors only)."""
        value = int(self._class_lpc[int(cls)])
        if value == 0 and self.anchors.count(cls) == 0:
            raise ConfigError(f"class {cls} is not loaded in this representation; include it in `classes`")
        return value

    def anchors_per_class(self, cls: int) -> int:
        return self.anchors.count(cls)

    def pixels(self, cls: torch.Tensor, component: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """Component ``component`` of each class's mixture -> pixels [N, C, H, W] in [0, 1].

        Components ``0 .. A_c - 1`` are the class's anchors (their stored pixels); component
        ``A_c + l`` is latent prior l, decoded from ``mu + sigma * eps`` (``eps`` None: the mean)."""
        cls, component = cls.to(self.device), component.to(self.device)
        count = self.anchors.counts[cls]  # [N] A_c
        is_anchor = component < count
        out = torch.empty((cls.shape[0], *self.image_shape), device=self.device, dtype=self.dtype)
        if bool(is_anchor.any()):
            out[is_anchor] = self.anchors.images(cls[is_anchor], component[is_anchor]).to(self.dtype)
        rest = (~is_anchor).nonzero().flatten()
        if rest.numel():
            e = None if eps is None else eps[rest]
            t = self.decode(cls[rest], component[rest] - count[rest], e)
            out[rest] = tanh_to_unit(t)
        return out

    def prior_of(self, cls: torch.Tensor, prior: torch.Tensor) -> PriorRef:
        """(class, latent index) -> (subtask, row). [N] int64 each."""
        cls, prior = cls.to(self.device), prior.to(self.device)
        return PriorRef(self._class_subtask[cls], self._class_pos[cls] * self._class_lpc[cls] + prior)

    def decode(self, cls: torch.Tensor, prior: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """Decode z = mu + sigma * eps for each (class, latent). Returns [N, C, H, W] in tanh space.

        ``eps`` [N, z] may be wider than a subtask's z_dim (subtasks can differ): each
        subtask uses its first z_dim columns. ``None`` decodes the prior means. Runs the
        decoders in inference mode; the output is an inference tensor.
        """
        ref = self.prior_of(cls, prior)
        n = ref.row.shape[0]
        out = torch.empty((n, *self.image_shape), device=self.device, dtype=self.dtype)  # [N, C, H, W]
        with torch.inference_mode():
            for t, sub in self.subtasks.items():
                members = (ref.subtask == t).nonzero().flatten() if len(self.subtasks) > 1 else None
                rows = ref.row if members is None else ref.row[members]
                if rows.numel() == 0:
                    continue
                z = sub.mu[rows]  # [n_t, z]
                if eps is not None:
                    e = eps.to(self.device, torch.float32)
                    e = e[:, : sub.z_dim] if members is None else e[members, : sub.z_dim]
                    z = z + torch.exp(0.5 * sub.logvar[rows]) * e
                x = self._run_decoder(sub.decoder, z.to(self.dtype))  # [n_t, C, H, W]
                if members is None:
                    out = x
                else:
                    out[members] = x
        return out

    def _run_decoder(self, decoder: Decoder, z: torch.Tensor) -> torch.Tensor:
        """Decode in chunks on CPU: small chunks keep activations in cache (~1.5-2x faster)."""
        if self.device.type != "cpu" or z.shape[0] <= CPU_CHUNK:
            return decoder(z)
        return torch.cat([decoder(part) for part in z.split(CPU_CHUNK)])

    def label_mode(self, labels: str) -> str:
        """The labels a sample gets: one of :data:`LABEL_MODES`, or "auto" (the stored teacher,
        else the stored soft labels, else hard); ConfigError for a mode this file cannot serve."""
        if labels == "auto":
            return "teacher" if self.has_teacher else "soft" if self.has_soft else "hard"
        if labels not in LABEL_MODES:
            raise ConfigError(f"labels={labels!r} is unknown; use 'auto', {', '.join(map(repr, LABEL_MODES))}")
        if labels == "soft" and not self.has_soft:
            raise ConfigError("this file stores no soft labels; use labels='hard'")
        if labels == "teacher" and not self.has_teacher:
            raise ConfigError("this file stores no teacher; use labels='hard' (or 'soft' when it stores soft labels)")
        return labels

    def soft_labels(self, cls: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """The stored soft-label vector of each prior. [N, num_classes] float32."""
        self.label_mode("soft")
        ref = self.prior_of(cls, prior)
        out = torch.empty((ref.row.shape[0], self.num_classes), device=self.device)
        for t, sub in self.subtasks.items():
            mask = ref.subtask == t
            out[mask] = sub.soft[ref.row[mask]]
        return out

    def teacher_labels(self, x_normalized: torch.Tensor) -> torch.Tensor:
        """The stored teacher's label vector of each image [N, C, H, W] (training
        normalisation): softmax(teacher(x) / T). [N, num_classes] float32."""
        self.label_mode("teacher")
        model, temperature = self.teacher
        probs = teacher_probs(model, x_normalized.to(self.device), temperature)
        return probs.clone() if probs.is_inference() else probs  # usable as a training target

    @property
    def classes(self) -> list[int]:
        """The loaded classes, ascending."""
        return sorted({c for s in self.subtasks.values() for c in s.classes} | set(self.anchors.classes))

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        norm = self.header.get("normalization")
        if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
            raise FormatError("the header has no normalization {mean, std}; ask for [0, 1] pixels instead")
        return [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]


# ---------------------------------------------------------------------------------------
# Header checks (the reader validates structure; here: cross-checks the tensors need).
# ---------------------------------------------------------------------------------------


def _check_header(header: dict) -> tuple[int, tuple[int, int, int]]:
    try:
        num_classes = int(header["num_classes"])
        image_shape = tuple(int(v) for v in header["image_shape"])
        subtasks = header["subtasks"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"header lacks a valid {exc} entry; the file is not a complete .d3 file") from None
    if num_classes < 1 or len(image_shape) != 3 or min(image_shape) < 1 or not isinstance(subtasks, list):
        raise FormatError("header num_classes / image_shape / subtasks are invalid; the file is corrupt")
    return num_classes, image_shape


def _subtask_classes(entry: dict, t: int, num_classes: int, seen: set[int]) -> list[int]:
    classes = entry.get("classes") if isinstance(entry, dict) else None
    if not isinstance(classes, list) or not classes:
        raise FormatError(f"subtask {t} has no class list; the file is corrupt")
    for c in classes:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes or c in seen:
            raise FormatError(f"subtask {t} lists an invalid or repeated class {c!r}; the file is corrupt")
        seen.add(c)
    return classes


def _load_subtask(entry, t, classes, num_classes, image_shape, get_tensor, device, dtype) -> SubtaskView:
    try:
        lpc, z_dim, names = int(entry["latents_per_class"]), int(entry["z_dim"]), entry["tensors"]
        dec_names = names["decoder"]
        config = entry["decoder"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"subtask {t} lacks {exc}; the file is not a complete .d3 file") from None
    if not (1 <= lpc <= 1 << 20 and 1 <= z_dim <= 1 << 20) or not isinstance(dec_names, dict):
        raise FormatError(f"subtask {t} has invalid latents_per_class / z_dim / decoder tensor names; the file is corrupt")
    rows = len(classes) * lpc
    mu = _prior_tensor(get_tensor(names["mu"]), (rows, z_dim), f"subtask {t} mu")
    logvar = _prior_tensor(get_tensor(names["logvar"]), (rows, z_dim), f"subtask {t} logvar")
    soft = None
    if names.get("soft"):
        soft = _prior_tensor(get_tensor(names["soft"]), (rows, num_classes), f"subtask {t} soft labels")
    try:
        decoder = build_decoder(config, {p: get_tensor(s) for p, s in dec_names.items()})
    except FormatError:
        raise
    except D3Error as exc:
        raise FormatError(f"subtask {t} decoder config is invalid ({exc})") from None
    cfg = decoder.cfg
    if cfg.z_dim != z_dim or (cfg.channels, cfg.image_size, cfg.image_size) != tuple(image_shape):
        raise FormatError(f"subtask {t} decoder does not match z_dim / image_shape in the header; the file is corrupt")
    decoder = decoder.to(device=device, dtype=dtype).eval().requires_grad_(False).optimize_for_inference()
    return SubtaskView(list(classes), lpc, z_dim, mu.to(device), logvar.to(device), None if soft is None else soft.to(device), decoder)


def _prior_tensor(array, shape, what) -> torch.Tensor:
    if tuple(array.shape) != shape:
        raise FormatError(f"{what} has shape {list(array.shape)}, header implies {list(shape)}; the file is corrupt")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        raise FormatError(f"{what} holds NaN or infinite values; the file is corrupt")
    return tensor
