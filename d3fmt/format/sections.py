"""Section naming: the one place that spells the name of a subtask's section.

Per subtask ``i`` (spec/format.md): ``s{i}.mu`` and ``s{i}.logvar`` [K_i*L, z] hold the
priors, ``s{i}.soft`` [K_i*L, num_classes] the optional soft labels, and
``s{i}.dec.{param}`` one decoder parameter or buffer each (the names of
``Decoder.state_dict()``). A subtask's header entry lists them under ``tensors``
(:func:`tensor_names`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable


def mu_section(i: int) -> str:
    return f"s{i}.mu"


def logvar_section(i: int) -> str:
    return f"s{i}.logvar"


def soft_section(i: int) -> str:
    return f"s{i}.soft"


def decoder_section(i: int, param: str) -> str:
    return f"s{i}.dec.{param}"


def tensor_names(i: int, decoder_params: Iterable[str], soft: bool = False) -> dict:
    """Subtask ``i``'s ``tensors`` entry: {mu, logvar, decoder: {param: section}, soft?}."""
    names = {"mu": mu_section(i), "logvar": logvar_section(i),
             "decoder": {p: decoder_section(i, p) for p in decoder_params}}
    if soft:
        names["soft"] = soft_section(i)
    return names
