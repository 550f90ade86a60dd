"""``d3fmt.pack()``: distil a dataset into a .d3 file from Python; `d3 pack` calls it.

    result = d3fmt.pack("digits", "digits.d3", budget=2)
    result = d3fmt.pack((x, y), "mine.d3", budget=2, class_names=names)     # numpy arrays
    result = d3fmt.pack(torch_dataset, "mine.d3", budget=2)                 # (image, label) items
    result.path, result.bytes, result.choices, result.accuracy
"""

from __future__ import annotations

from pathlib import Path

from d3fmt.errors import ConfigError


def pack(source, output, *, budget: float | None = None, max_bytes: int | None = None,
         class_names: list[str] | None = None, **settings):
    """Distil ``source`` into ``output`` within ``budget`` images per class (or ``max_bytes``).

    ``source``: anything `d3 pack` takes (``"digits"``, an ImageFolder directory, IDX files,
    ``data.npz``, webdataset shards), numpy arrays ``(x, y)``, or a map-style dataset of
    ``(image, label)`` (PIL image, uint8 array or tensor; see :mod:`d3fmt.sources.memory`).
    ``class_names`` name the classes of arrays or a dataset (default "0".."K-1"); ``test``
    may be in-memory too. ``settings`` are `d3 pack`'s options by their Python names
    (:func:`d3fmt.distill.settings.pack_config`: ``iterations``, ``num_experts``,
    ``evaluate=False`` for ``--no-eval``, ``device``, ``work_dir``, ...).

    Returns a :class:`d3fmt.distill.job.PackResult`: ``path``, ``bytes``, ``max_bytes``,
    ``choices`` (the fitter's), ``accuracy`` (None without evaluation), ``evaluation``.
    """
    from d3fmt.distill.launch import pack as run
    from d3fmt.distill.presets import DEFAULTS
    from d3fmt.distill.settings import pack_config
    from d3fmt.sources.memory import is_in_memory

    work_dir = settings.get("work_dir") or DEFAULTS["work_dir"]
    spec, names = source_spec(source, class_names, work_dir)
    if settings.get("test") is not None and is_in_memory(settings["test"]):
        settings["test"] = source_spec(settings["test"], names, work_dir)[0]
    cfg = pack_config(spec, str(output), budget=budget, max_bytes=max_bytes, **settings)
    return run(cfg)


def source_spec(source, class_names: list[str] | None, work_dir) -> tuple[str, list[str] | None]:
    """(the spec `d3 pack` opens, the class names given or chosen for in-memory data)."""
    from d3fmt.sources.memory import as_arrays, is_in_memory, npz_spec

    if not is_in_memory(source):
        if class_names is not None:
            raise ConfigError("class_names name the classes of arrays or a dataset; a source spec names its own")
        return str(Path(source)) if isinstance(source, Path) else source, None
    x, y = as_arrays(source)
    names = list(class_names) if class_names is not None else [str(k) for k in range(int(y.max()) + 1)]
    return npz_spec(x, y, names, work_dir), names
