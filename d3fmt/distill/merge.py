"""Re-aggregation of federated distillation: partial containers -> one .d3 file.

A *part* is a partial container (``partial: true``, ``provenance.part``) holding one or
more subtasks of a job: priors and decoder in their stored encodings, hard labels. Parts
come from ``d3 pack --subtasks S --subtask i`` (job arrays), from torchrun ranks (sent as
bytes) or from the subtasks one process ran one after another; every mode ends here, so
every mode produces the same file.

:func:`check_parts` refuses parts that do not belong together (a :class:`MergeError`
naming the part and what differs); :func:`combine` takes the union of their subtasks;
:func:`finish` assigns soft labels over the full label space from one expert trained on
all classes (:func:`d3fmt.distill.labels.label_teacher`; cached in ``work_dir``), checks the
byte cap for the whole file, evaluates the stored representation and writes the file
atomically. :func:`merge` is ``d3 merge``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from d3fmt.device import resolve_device
from d3fmt.distill.assemble import EVAL_RESERVE, fit_to_cap
from d3fmt.distill.budget import BudgetPlan
from d3fmt.distill.job import PackResult, open_pack_source, partition_classes, partition_hash
from d3fmt.distill.labels import add_teacher, label_teacher, soft_labels
from d3fmt.distill.settings import PackConfig, config_from_settings, run_key
from d3fmt.errors import BudgetError, ConfigError, D3Error, FormatError, MergeError
from d3fmt.evaluation.evaluate import EvalConfig, EvalResult, evaluate_representation
from d3fmt.format import D3Container, D3Reader, encode_d3, read_d3, write_d3
from d3fmt.format.container import atomic_write
from d3fmt.format.model import BudgetRecord, Header, Subtask, utc_now
from d3fmt.format.sections import soft_section
from d3fmt.loader.representation import Representation
from d3fmt.progress import bar

# Settings that may differ between parts: where the data and the test set live, and how
# the merged file is evaluated (decided at the merge).
FREE_SETTINGS = ("source", "test", "evaluation")
# Header fields every part of one job must share, with the words used in messages.
SHARED_FIELDS = (
    (("provenance", "source_hash"), "source hash"),
    (("num_classes",), "class count"),
    (("class_names",), "class names"),
    (("image_shape",), "image shape"),
    (("normalization",), "normalisation"),
    (("samples_per_class",), "samples_per_class"),
    (("provenance", "part", "of"), "number of subtasks"),
    (("provenance", "part", "partition"), "class partition"),
    (("budget", "ipc"), "budget (ipc)"),
    (("budget", "max_bytes"), "byte cap"),
    (("budget", "choices"), "budget plan"),
)


@dataclass
class Part:
    """One partial container, read back and decoded."""

    name: str  # the path as given, for messages
    container: D3Container

    @property
    def header(self) -> dict:
        return self.container.header

    @property
    def info(self) -> dict:
        return self.container.header["provenance"]["part"]

    @property
    def ids(self) -> list[int]:
        return [entry["id"] for entry in self.header["subtasks"]]


@dataclass
class MergeConfig:
    """`d3 merge` options; the distiller settings come from the parts themselves."""

    output: str
    source: str | None = None  # the source the parts were packed from (soft labels, evaluation)
    test: str | None = None  # a separate held-out source for the evaluation
    work_dir: str = ".d3cache"  # reuses a cached all-class expert
    device: str = "auto"
    evaluate: bool = True
    eval_epochs: int | None = None  # None: what the parts recorded (else EvalConfig's default)
    eval_runs: int | None = None
    quiet: bool = False
    cache_dir: str | None = None  # decoded-image cache: None: <work_dir>/sources; "": none
    workers: int | None = None  # processes decoding into the cache


# ---------------------------------------------------------------------------------------
# Reading and checking parts
# ---------------------------------------------------------------------------------------


def read_part(path) -> Part:
    """A partial container from disk; refuses finished files and malformed ones."""
    try:
        container = read_d3(path)
    except FormatError as exc:
        raise type(exc)(f"part {path}: {exc}") from None
    prov = container.header["provenance"]
    if not container.header.get("partial") or not isinstance(prov.get("part"), dict):
        raise MergeError(f"{path} is not a part of a federated job; merge the files written by "
                         "`d3 pack --subtasks S --subtask i`")
    info = prov["part"]
    ids = [entry["id"] for entry in container.header["subtasks"]]
    if info.get("subtasks") != ids or len(info.get("lr", [])) != len(ids):
        raise MergeError(f"{path}: provenance.part does not describe its subtasks; the part is damaged, pack it again")
    return Part(str(path), container)


def _get(header: dict, path: tuple[str, ...]):
    for key in path:
        header = header.get(key) if isinstance(header, dict) else None
    return header


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _settings_difference(a: dict, b: dict, prefix: str = "settings") -> str | None:
    """The first setting (dotted name) that differs, with both values, or None."""
    for key in sorted(set(a) | set(b)):
        if prefix == "settings" and key in FREE_SETTINGS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _settings_difference(va, vb, f"{prefix}.{key}")
            if found:
                return found
        elif va != vb:
            return f"{prefix}.{key} ({_short(vb)} vs {_short(va)})"
    return None


def _class_span(classes: list[int]) -> str:
    return f"{classes[0]}-{classes[-1]}" if len(classes) > 1 else str(classes[0])


def check_parts(parts: list[Part]) -> list[Part]:
    """The parts sorted by subtask, after checking that they belong together: same
    source, settings and budget plan, the same class partition, every subtask exactly once."""
    if not parts:
        raise MergeError("no parts given; pass the part files written by `d3 pack --subtask i`")
    parts = sorted(parts, key=lambda p: min(p.ids))
    ref = parts[0]
    for part in parts[1:]:
        for path, words in SHARED_FIELDS:
            a, b = _get(ref.header, path), _get(part.header, path)
            if a != b:
                raise MergeError(f"{part.name} does not belong with {ref.name}: its {words} differs "
                                 f"({_short(b)} vs {_short(a)})")
        diff = _settings_difference(ref.header["provenance"]["settings"], part.header["provenance"]["settings"])
        if diff:
            raise MergeError(f"{part.name} does not belong with {ref.name}: its {diff} differs; "
                             "pack every part with the same options")
    count = ref.info["of"]
    partition = partition_classes(ref.header["num_classes"], count)
    if ref.info["partition"] != partition_hash(partition):
        raise MergeError(f"{ref.name}: its class partition is not the balanced contiguous one of "
                         f"{ref.header['num_classes']} classes in {count} subtasks; pack it with this d3fmt version")
    owner: dict[int, str] = {}
    for part in parts:
        for entry in part.header["subtasks"]:
            i = entry["id"]
            if i in owner:
                raise MergeError(f"{part.name} and {owner[i]} both hold subtask {i}; pass each part once")
            if i >= count or entry["classes"] != partition[i]:
                raise MergeError(f"{part.name}: subtask {i} does not hold the classes the partition gives it; "
                                 "the part is damaged, pack it again")
            owner[i] = part.name
    missing = [i for i in range(count) if i not in owner]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MergeError(f"subtask {missing[0]} of {count} (classes {_class_span(partition[missing[0]])}) is "
                         f"missing{more}; run `d3 pack ... --subtasks {count} --subtask {missing[0]}` and "
                         "pass its file too")
    return parts


# ---------------------------------------------------------------------------------------
# Combining
# ---------------------------------------------------------------------------------------


def combine(parts: list[Part], complete: bool = True) -> D3Container:
    """The union of the parts' subtasks: a finished container (``complete``, hard labels
    for now, no evaluation) or a bigger partial one (what a torchrun rank sends)."""
    ref = parts[0].header
    entries, tensors, encodings, lrs, accs = [], {}, {}, {}, {}
    for part in parts:
        for entry, lr, acc in zip(part.header["subtasks"], part.info["lr"],
                                  part.info.get("expert_accuracy") or [[]] * len(part.ids)):
            entries.append(copy.deepcopy(entry))
            lrs[entry["id"]], accs[entry["id"]] = float(lr), list(acc)
        tensors.update(part.container.tensors)
        encodings.update(part.container.encodings)
    entries.sort(key=lambda e: e["id"])
    ids = [e["id"] for e in entries]
    header = Header.from_json(ref)
    header.subtasks = [Subtask.from_json(e) for e in entries]
    header.labels = "hard"
    header.evals = []
    header.train = {"lr": float(np.mean([lrs[i] for i in ids]))}
    record = header.budget
    header.budget = BudgetRecord.of(record.budget(header.num_classes, header.image_shape),
                                    record.choices if record.choices is not None else {})
    header.provenance.created = utc_now()
    prov = header.provenance
    if complete:
        header.partial = None
        prov.part = None
    else:
        prov.part = {**prov.part, "subtasks": ids, "lr": [lrs[i] for i in ids],
                     "expert_accuracy": [accs[i] for i in ids]}
    return D3Container(header.to_json(), tensors, encodings)


def expert_accuracy(parts: list[Part]) -> list[float]:
    return [a for p in parts for accs in (p.info.get("expert_accuracy") or []) for a in accs if a is not None]


# ---------------------------------------------------------------------------------------
# Finishing: soft labels, the cap, evaluation, the file
# ---------------------------------------------------------------------------------------


def plan_of(header: dict) -> BudgetPlan:
    """The budget plan recorded in a header (budget.choices + the decoder configs)."""
    names = {f.name for f in fields(BudgetPlan)} - {"decoders"}
    choices = header["budget"].get("choices", {})
    return BudgetPlan(**{k: v for k, v in choices.items() if k in names},
                      decoders=[e["decoder"] for e in header["subtasks"]])


def add_soft_labels(container: D3Container, teacher, device) -> None:
    """Store soft labels over all classes for every prior (encoding from the plan)."""
    header = container.header
    encoding = header["budget"].get("choices", {}).get("soft_encoding", "int8")
    for i, probs in soft_labels(teacher, container, device).items():
        entry = next(e for e in header["subtasks"] if e["id"] == i)
        name = soft_section(i)
        entry["tensors"]["soft"] = name
        container.tensors[name] = probs
        container.encodings[name] = encoding
    header["labels"] = "soft"


def evaluate_pending(container: D3Container, test_x, test_y, cfg: PackConfig, device, run_dir: Path) -> EvalResult:
    """Evaluate what the file will hold (after quantisation), via a pending file."""
    pending = run_dir / "pending.d3"
    write_d3(pending, container)
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


def compare_codecs(container: D3Container, source, test_x, test_y, cfg: PackConfig, device):
    """The same-bytes codec family (d3fmt.evaluation.baseline.compare_same_bytes) at the file's bytes,
    trained and tested like the file's own evaluation (`d3 pack --compare`)."""
    from d3fmt.evaluation.baseline import compare_same_bytes
    from d3fmt.evaluation.evaluate import TestSet

    x, y = source.view("train")  # a cached source: only the records the codecs pick are read
    test = TestSet(test_x, np.asarray(test_y, np.int64), f"{source.info.name} [test split]")
    ecfg = replace(cfg.evaluation, device=str(device))
    with bar(cfg.quiet, total=None, desc="same-bytes codecs", unit="codec") as pbar:
        return compare_same_bytes(x, np.asarray(y, np.int64), test, container.header["num_classes"],
                                  len(encode_d3(container)), ecfg, seed=cfg.seed,
                                  on_codec=lambda name: (pbar.update(1), pbar.set_postfix(codec=name)))


def finish(container: D3Container, cfg: PackConfig, source, device, run_dir: Path,
           expert_acc: list[float] | None = None) -> PackResult:
    """Soft labels, the cap, evaluation of the stored file, then one atomic write."""
    header = container.header
    max_bytes = header["budget"]["max_bytes"]
    if cfg.soft_labels:
        norm = header["normalization"]
        teacher = label_teacher(source, cfg, norm["mean"], norm["std"], device)
        add_soft_labels(container, teacher, device)
    add_teacher(container, cfg, source, device)
    fit_to_cap(container, max_bytes - EVAL_RESERVE)
    evaluation = None
    if cfg.evaluation is not None:
        test_x, test_y = source.view("test")  # streamed in batches from a cached source
        evaluation = evaluate_pending(container, test_x, test_y, cfg, device, run_dir)
        info = source.info
        record = evaluation.record(f"{info.name} [test split, {info.num_test} images]")
        if cfg.compare:
            record["compare"] = compare_codecs(container, source, test_x, test_y, cfg, device).best.compare_record()
        header["evals"].append(record)
    data = encode_d3(container)
    if len(data) > max_bytes:
        raise BudgetError(f"the merged file needs {len(data)} bytes, over the cap of {max_bytes}; "
                          "pack again with a smaller --decoder-width or a larger --budget")
    atomic_write(cfg.output, data)
    ids = [e["id"] for e in header["subtasks"]]
    return PackResult(Path(cfg.output), len(data), max_bytes, plan_of(header), evaluation,
                      list(expert_acc or []), subtasks=ids)


def merge_config(ref: dict, mcfg: MergeConfig) -> PackConfig:
    """The job's PackConfig (recorded in the parts) with the merge's run options."""
    cfg = config_from_settings(ref["provenance"]["settings"], output=mcfg.output, work_dir=mcfg.work_dir,
                               device=mcfg.device, quiet=mcfg.quiet, cache_dir=mcfg.cache_dir,
                               workers=mcfg.workers)
    if not mcfg.evaluate:
        cfg.evaluation = None
        return cfg
    # parts packed with --no-eval recorded none: the merged file is evaluated all the same
    base = cfg.evaluation or EvalConfig(width=cfg.experts.width, seed=cfg.seed)
    cfg.evaluation = replace(base, epochs=mcfg.eval_epochs or base.epochs, runs=mcfg.eval_runs or base.runs)
    return cfg


def open_merge_source(cfg: PackConfig, mcfg: MergeConfig, ref: dict):
    """The source behind the parts: --source, else the spec the parts recorded."""
    spec = mcfg.source or cfg.source
    try:
        source = open_pack_source(cfg, spec=spec, test=mcfg.test)
    except D3Error as exc:
        if mcfg.source:
            raise
        raise ConfigError(f"merging needs the source for soft labels / the teacher / evaluation and the recorded one ({spec}) "
                          f"cannot be opened here ({exc}); pass --source SRC, or --no-eval with --hard-labels parts") from None
    want = ref["provenance"]["source_hash"]
    if source.info.content_hash != want:
        raise MergeError(f"source {spec} is not the data the parts were packed from (hash "
                         f"{source.info.content_hash[:16]} vs {want[:16]}); pass that source with --source")
    if list(source.info.image_shape) != list(ref["image_shape"]):
        raise MergeError(f"source {spec} gives {list(source.info.image_shape)} images, the parts "
                         f"{ref['image_shape']}; pass the source the parts were packed from")
    return source


def merge(paths: list, mcfg: MergeConfig) -> PackResult:
    """`d3 merge`: check the parts, combine them, label, evaluate, write ``mcfg.output``."""
    parts = check_parts([read_part(p) for p in paths])
    ref = parts[0].header
    cfg = merge_config(ref, mcfg)
    device = resolve_device(mcfg.device)
    source = None
    if cfg.soft_labels or cfg.evaluation is not None or plan_of(ref).teacher_width:
        source = open_merge_source(cfg, mcfg, ref)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.work_dir) / "runs" / run_key(cfg, ref["provenance"]["source_hash"])
    run_dir.mkdir(parents=True, exist_ok=True)
    return finish(combine(parts), cfg, source, device, run_dir, expert_accuracy(parts))
