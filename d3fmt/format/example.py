"""A tiny, valid, deterministic container for tests, docs and the golden file.

Its decoder block is by default a stand-in, family "linear" (the format treats it as
opaque JSON apart from "family"; d3fmt cannot sample from it); family="small" (or
"medium", "large") gives a real d3fmt decoder config with tensors of the shapes it
implies, built without torch. The tensors are seeded random numbers, so the same
arguments always give the same container and therefore the same file bytes.
"""

from __future__ import annotations

import numpy as np

from d3fmt.format.budget import Budget
from d3fmt.format.container import D3Container
from d3fmt.format.decoders import DecoderConfig, decoder_param_shapes
from d3fmt.format.model import Header, Provenance, Subtask, TensorNames
from d3fmt.format.sections import tensor_names


def example_container(
    num_classes: int = 3,
    image_shape: tuple[int, int, int] = (1, 4, 4),
    num_subtasks: int = 1,
    latents_per_class: int = 1,
    z_dim: int = 2,
    soft: bool = False,
    encoding: str = "float32",
    seed: int = 0,
    family: str = "linear",
    width: int = 8,
    samples_per_class: int = 10,
) -> D3Container:
    """num_classes classes split round-robin over num_subtasks subtasks, one linear decoder each."""
    rng = np.random.default_rng(seed)
    c, h, w = image_shape
    subtasks = []
    tensors: dict[str, np.ndarray] = {}
    encodings: dict[str, str] = {}
    for i in range(num_subtasks):
        classes = list(range(i, num_classes, num_subtasks))
        rows = len(classes) * latents_per_class
        if family == "linear":
            decoder = {"family": "linear", "z_dim": z_dim, "channels": c, "image_size": h}
            shapes = {"fc.weight": (c * h * w, z_dim), "fc.bias": (c * h * w,)}  # [CHW, z], [CHW]
        else:
            decoder = DecoderConfig(family=family, z_dim=z_dim, channels=c, image_size=h, width=width).to_json()
            shapes = decoder_param_shapes(decoder)
        names = tensor_names(i, list(shapes), soft)  # dict: the writer below indexes it
        tensors[names["mu"]] = rng.standard_normal((rows, z_dim)).astype(np.float32)  # [K_i*L, z]
        tensors[names["logvar"]] = rng.standard_normal((rows, z_dim)).astype(np.float32) - 2  # [K_i*L, z]
        for param, shape in shapes.items():
            tensors[names["decoder"][param]] = rng.standard_normal(shape).astype(np.float32)
        if soft:
            logits = rng.standard_normal((rows, num_classes))  # [K_i*L, K]
            tensors[names["soft"]] = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        for name in names.values():
            for n in (name.values() if isinstance(name, dict) else [name]):
                encodings[n] = encoding
        subtasks.append(Subtask(
            id=i,
            classes=classes,
            latents_per_class=latents_per_class,
            z_dim=z_dim,
            decoder=decoder,
            tensors=TensorNames.from_json(names),
        ))
    header = Header.new(
        image_shape=image_shape, class_names=[f"class{k}" for k in range(num_classes)], mean=[0.5] * c,
        std=[0.25] * c, samples_per_class=samples_per_class, subtasks=subtasks, budget=Budget.of(num_classes, image_shape, budget=1),
        provenance=Provenance(source="example", source_hash="0" * 16, settings={"seed": seed},
                              d3fmt_version="0.1.0", created="2025-01-01T00:00:00Z"),
    )
    return D3Container(header.to_json(), tensors, encodings)
