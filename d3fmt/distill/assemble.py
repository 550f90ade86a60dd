"""Assembling a container from distilled tensors: the header, the sections, the cap.

:func:`make_header` writes the header of a job's file; :func:`tensors_of` turns the
distilled tensors into named sections in their planned encodings; :func:`measure_plan`
sizes a same-shaped container before any training (the budget fitter's measure);
:func:`fit_to_cap` re-encodes sections until the trained file fits.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import torch

from d3fmt import __version__
from d3fmt.distill.budget import BudgetPlan
from d3fmt.distill.settings import PackConfig, settings_json
from d3fmt.distill.trainer import DistillResult
from d3fmt.errors import BudgetError
from d3fmt.evaluation.evaluate import EvalConfig
from d3fmt.format import Budget, D3Container, encode_d3
from d3fmt.format.model import Header, Provenance, Subtask, TensorNames, utc_now
from d3fmt.models.decoder import build_decoder

EVAL_RESERVE = 384  # header bytes kept free for evaluation records added later
MIN_STREAM_PER_CLASS = 50  # the default stream's samples per class and epoch, at least


def subtask_entry(i: int, classes: list[int], plan: BudgetPlan, soft: bool) -> Subtask:
    dec = plan.decoders[i]
    names = build_decoder(dec).state_dict().keys()
    return Subtask(id=i, classes=classes, latents_per_class=plan.latents_per_class, z_dim=plan.z_dim, decoder=dec,
                   tensors=TensorNames.of(i, names, soft))


def default_stream_size(latents_per_class: int) -> int:
    """Samples per class and epoch a file offers by default: one turn of the stream (every
    prior mean once, then every prior drawn once), at least ``MIN_STREAM_PER_CLASS``."""
    return max(MIN_STREAM_PER_CLASS, 2 * latents_per_class)


def make_header(info, parts, plan: BudgetPlan, budget: Budget, mean, std, cfg: PackConfig, lr: float) -> dict:
    """The header (as JSON) of a job's file, before training: no evaluation yet, bytes_used 0."""
    return Header.new(
        image_shape=info.image_shape, class_names=info.class_names, mean=mean, std=std,
        samples_per_class=cfg.samples_per_class or default_stream_size(plan.latents_per_class),
        subtasks=[subtask_entry(i, p, plan, cfg.soft_labels) for i, p in enumerate(parts)],
        budget=budget, choices=plan.choices(), train_lr=lr,
        provenance=Provenance(source=info.name, source_hash=info.content_hash, settings=settings_json(cfg),
                              d3fmt_version=__version__, created=utc_now()),
    ).to_json()


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
        if header["labels"] == "soft":
            logits = rng.standard_normal((rows, header["num_classes"])).astype(np.float32)
            soft.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        else:  # the same random stream without the [rows, classes] arrays (5.8 GB at 1000 classes, budget 2)
            _skip_normals(rng, rows * header["num_classes"])
    return results, (soft if header["labels"] == "soft" else None)


def _skip_normals(rng: np.random.Generator, n: int, chunk: int = 1 << 20) -> None:
    """Advance ``rng`` as ``rng.standard_normal(n)`` would, holding at most ``chunk`` values."""
    for start in range(0, n, chunk):
        rng.standard_normal(min(chunk, n - start))


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
