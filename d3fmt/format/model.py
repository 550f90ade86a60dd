"""The header of a .d3 file as typed dataclasses, to and from its JSON (torch-free).

:class:`Header` holds every header key except ``sections`` (spec/format.md); its parts
are :class:`Subtask` (with its :class:`TensorNames`), :class:`BudgetRecord`,
:class:`Provenance` and :class:`EvalRecord`. ``from_json(d).to_json() == d`` for every
valid header: optional keys stay absent when they were, and keys this version does not
know are kept in ``extra`` and written back. Validation stays in
:mod:`d3fmt.format.header` (the JSON Schema and the cross-checks); these classes give
the keys names and types. Section names come from :mod:`d3fmt.format.sections`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

from d3fmt.errors import ConfigError
from d3fmt.format.budget import Budget
from d3fmt.format.sections import tensor_names


def utc_now() -> str:
    """The time as header fields spell it (``provenance.created``): 2025-01-01T00:00:00Z.

    ``SOURCE_DATE_EPOCH`` (seconds since 1970, the reproducible-builds convention) pins it,
    so that two packs of the same data and settings are the same bytes: the header is
    compressed, so even a one-second difference can change the file's size."""
    pinned = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if pinned:
        if not pinned.isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {pinned!r}; unset it or fix it")
        when = datetime.fromtimestamp(int(pinned), timezone.utc)
    else:
        when = datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Record:
    """JSON in and out for the dataclasses below: own fields by name, other keys in ``extra``."""

    OPTIONAL: tuple[str, ...] = ()  # fields written only when not None

    @classmethod
    def from_json(cls, d: dict):
        own, extra = _split(cls, d)
        return cls(**own, extra=extra)

    def to_json(self) -> dict:
        return _json(self, optional=self.OPTIONAL)


def _split(cls, d: dict) -> tuple[dict, dict]:
    """(the dataclass's own fields, the other keys) of a JSON object."""
    names = {f.name for f in fields(cls)} - {"extra"}
    d = copy.deepcopy(d)
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _json(obj, optional: tuple[str, ...] = ()) -> dict:
    """A dataclass as JSON: its fields (``optional`` ones only when not None) plus ``extra``."""
    out = {}
    for f in fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        if f.name in optional and value is None:
            continue
        out[f.name] = value.to_json() if hasattr(value, "to_json") else copy.deepcopy(value)
    out.update(copy.deepcopy(obj.extra))
    return out


@dataclass
class TensorNames(_Record):
    """Which sections hold a subtask's priors, soft labels and decoder parameters."""

    mu: str
    logvar: str
    decoder: dict[str, str]  # decoder parameter name -> section name
    soft: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, i: int, decoder_params, soft: bool = False) -> TensorNames:
        """The standard names of subtask ``i`` (``s{i}.mu``, ...)."""
        return cls.from_json(tensor_names(i, decoder_params, soft))

    OPTIONAL = ("soft",)


@dataclass
class Subtask(_Record):
    """One class subset: its priors (``latents_per_class`` per class) and its decoder."""

    id: int
    classes: list[int]
    latents_per_class: int
    z_dim: int
    decoder: dict  # DecoderConfig JSON (d3fmt.models.decoder)
    tensors: TensorNames
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Subtask:
        own, extra = _split(cls, d)
        own["tensors"] = TensorNames.from_json(own["tensors"])
        return cls(**own, extra=extra)


@dataclass
class BudgetRecord(_Record):
    """The byte cap and the file size, also in images-per-class equivalents."""

    ipc: float
    max_bytes: int
    bytes_used: int
    ipc_equivalent_fp32: float
    ipc_equivalent_uint8: float
    choices: dict | None = None  # what the budget fitter chose
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("choices",)

    @classmethod
    def of(cls, budget: Budget, choices: dict | None = None) -> BudgetRecord:
        """The block of a file not written yet (bytes_used 0: the writer fills it in)."""
        return cls.from_json(budget.fields(0, choices))

    def budget(self, num_classes: int, image_shape) -> Budget:
        """The byte budget this block records."""
        return Budget(self.ipc, self.max_bytes, int(num_classes), tuple(int(v) for v in image_shape))


@dataclass
class Provenance(_Record):
    """Where the file came from: the source, the settings, the version, the time."""

    source: str
    source_hash: str
    settings: dict
    d3fmt_version: str
    created: str
    part: dict | None = None  # a partial container's place in its federated job
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("part",)


@dataclass
class EvalRecord(_Record):
    """One evaluation: a model trained on the file alone, tested on real data."""

    model: str
    protocol: str
    test_set: str
    accuracy: float
    std: float
    runs: int
    epochs: int
    date: str
    extra: dict = field(default_factory=dict)


@dataclass
class Header(_Record):
    """Every header key except ``sections``."""

    image_shape: list[int]  # [C, H, W]
    num_classes: int
    class_names: list[str]
    normalization: dict  # {"mean": [C], "std": [C]}, pixels in [0, 1]
    labels: str  # "hard" | "soft"
    samples_per_class: int  # the default stream size
    subtasks: list[Subtask]
    budget: BudgetRecord
    provenance: Provenance
    evals: list[EvalRecord] = field(default_factory=list)
    train: dict | None = None  # {"lr": learned student learning rate}
    partial: bool | None = None  # a part of a federated job
    teacher: dict | None = None  # the labelling teacher (format 1.1; d3fmt.models.teacher.header_entry)
    anchors: dict | None = None  # real images as context-coded levels (format 1.2; d3fmt.distill.anchors)
    extra: dict = field(default_factory=dict)

    OPTIONAL = ("train", "partial", "teacher", "anchors")

    @classmethod
    def new(cls, *, image_shape, class_names: list[str], mean, std, samples_per_class: int,
            subtasks: list[Subtask], budget: Budget, provenance: Provenance, choices: dict | None = None,
            train_lr: float | None = None, partial: bool | None = None, anchors: dict | None = None) -> Header:
        """The one header builder of a file not written yet: no evaluation, bytes_used 0;
        the labels are "soft" exactly when every subtask stores soft labels."""
        soft = bool(subtasks) and all(s.tensors.soft is not None for s in subtasks)
        return cls(
            image_shape=[int(v) for v in image_shape],
            num_classes=len(class_names),
            class_names=list(class_names),
            normalization={"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            labels="soft" if soft else "hard",
            samples_per_class=int(samples_per_class),
            subtasks=subtasks,
            budget=BudgetRecord.of(budget, choices),
            provenance=provenance,
            evals=[],
            train=None if train_lr is None else {"lr": float(train_lr)},
            partial=partial,
            anchors=anchors,
        )

    @classmethod
    def from_json(cls, d: dict) -> Header:
        own, extra = _split(cls, {k: v for k, v in d.items() if k != "sections"})
        own["subtasks"] = [Subtask.from_json(s) for s in own["subtasks"]]
        own["budget"] = BudgetRecord.from_json(own["budget"])
        own["provenance"] = Provenance.from_json(own["provenance"])
        own["evals"] = [EvalRecord.from_json(e) for e in own.get("evals", [])]
        return cls(**own, extra=extra)

    def to_json(self) -> dict:
        out = _json(self, optional=self.OPTIONAL)
        out["subtasks"] = [s.to_json() for s in self.subtasks]
        out["evals"] = [e.to_json() for e in self.evals]
        return out
