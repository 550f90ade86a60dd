"""Named bundles of `d3 pack` settings, so a run fits the machine it is on.

``reference`` is method.md's setting (hours on a GPU for ImageNet-scale data);
``standard`` is a GPU run of about an hour for Fashion-MNIST-sized data; ``fast`` is sized
for a laptop CPU (minutes for ``digits``). ``auto`` picks ``standard`` when the run uses
CUDA and ``fast`` otherwise. Every option given explicitly on the command line wins over
the preset; the resolved values are recorded in the file's provenance.
"""

from __future__ import annotations

from d3fmt.errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    "fast": dict(convnet_width=32, num_experts=5, expert_epochs=20, iterations=300, syn_steps=10, eval_epochs=300),
    "standard": dict(convnet_width=128, num_experts=20, expert_epochs=30, iterations=2000, syn_steps=10,
                     eval_epochs=1000),
    "reference": dict(convnet_width=128, num_experts=100, expert_epochs=50, iterations=8000, syn_steps=10,
                      eval_epochs=1000),
}
NAMES = ("auto", *PRESETS)


def resolve_preset(name: str, uses_cuda: bool, given: dict[str, int | None]) -> dict[str, int]:
    """The preset's values, overridden by every option in ``given`` that is not None."""
    if name not in NAMES:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(NAMES)}")
    if name == "auto":
        name = "standard" if uses_cuda else "fast"
    values = dict(PRESETS[name])
    unknown = set(given) - set(values)
    if unknown:
        raise ConfigError(f"options {sorted(unknown)} are not preset settings")
    values.update({k: v for k, v in given.items() if v is not None})
    return values
