"""The defaults of `d3 pack`'s settings: one default per setting, and named presets.

``reference`` is method.md's setting (hours on a GPU for ImageNet-scale data);
``standard`` is a GPU run of about an hour for Fashion-MNIST-sized data; ``fast`` is sized
for a laptop CPU (minutes for ``digits``). ``auto`` picks ``standard`` when the run uses
CUDA and ``fast`` otherwise. Every setting given explicitly wins over the preset; the
resolved values are recorded in the file's provenance.

Torch-free, so the CLI can show these defaults without importing the distiller. The
names are those of :func:`d3fmt.distill.settings.pack_config` (and `d3 pack`'s options).
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

# Every other setting's one default (None: chosen later, by the budget fitter or the source).
REPRESENTATIONS = ("latent", "anchors")  # what a file holds (d3 pack --representation)

DEFAULTS: dict[str, object] = dict(
    budget=None, max_bytes=None, image_size=None, test=None, holdout=None, skip_bad=False,
    subtasks=1, subtask=None, label_sample=100, preset="auto",
    match_epochs=2, max_start_epoch=0, mmd_weight=1.0, warmup=0.9, pretrain_steps=1500,
    family=None, z_dim=None, latents_per_class=None, decoder_width=None, encoding=None, soft_labels=False,
    evaluate=True, eval_runs=1, device="auto", seed=0, work_dir=".d3cache", checkpoint_every=50,
    resume=False, quiet=False, teacher_width=0, teacher_epochs=6, priors="kmeans",
    compare=False, max_decode_mflop=None, cache_dir=None, no_cache=False, workers=None,
    representation="latent", anchor_bits=2,
    max_memory=None,
)


def preset_values(key: str) -> str:
    """``fast 300, standard 2000, reference 8000``: a preset setting's values, for help texts."""
    values = [(name, p[key]) for name, p in PRESETS.items()]
    if len({v for _, v in values}) == 1:
        return str(values[0][1])
    return ", ".join(f"{name} {v}" for name, v in values)


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
