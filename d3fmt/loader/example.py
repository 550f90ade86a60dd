"""A random, decodable container: :func:`d3fmt.format.example.example_container`'s header
and section names, with torch-initialised decoders and random priors.

For tests, docs and loader benchmarks: decode speed does not depend on trained values.
"""

from __future__ import annotations

import torch

from d3fmt.format import D3Container
from d3fmt.format.example import example_container
from d3fmt.models.decoder import build_decoder


def random_container(
    num_classes: int = 4,
    image_shape: tuple[int, int, int] = (1, 8, 8),
    *,
    family: str = "small",
    width: int = 16,
    z_dim: int = 8,
    latents_per_class: int = 2,
    num_subtasks: int = 1,
    soft: bool = False,
    samples_per_class: int = 10,
    seed: int = 0,
    encoding: str = "float32",
) -> D3Container:
    """A valid container with freshly initialised decoders (seeded) and random priors
    (mu ~ N(0, 1), logvar ~ -1 + 0.1 N(0, 1)); classes dealt round-robin to subtasks."""
    container = example_container(num_classes, image_shape, num_subtasks, latents_per_class, z_dim, soft, encoding,
                                  seed, family, width, samples_per_class=samples_per_class)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # decoder init draws from the global generator
        for entry in container.header["subtasks"]:
            _fill_subtask(container, entry, num_classes, gen)
    return container


def _fill_subtask(container: D3Container, entry: dict, num_classes: int, gen: torch.Generator) -> None:
    names, z_dim = entry["tensors"], entry["z_dim"]
    rows = len(entry["classes"]) * entry["latents_per_class"]
    arrays = {}
    if "soft" in names:
        arrays[names["soft"]] = torch.softmax(torch.randn(rows, num_classes, generator=gen) * 2, dim=1)  # [rows, K]
    state = build_decoder(entry["decoder"]).state_dict()
    arrays.update({names["decoder"][param]: value for param, value in state.items()})
    arrays[names["mu"]] = torch.randn(rows, z_dim, generator=gen)  # [rows, z]
    arrays[names["logvar"]] = torch.full((rows, z_dim), -1.0) + 0.1 * torch.randn(rows, z_dim, generator=gen)
    for name, value in arrays.items():
        container.tensors[name] = value.detach().float().contiguous().numpy()
