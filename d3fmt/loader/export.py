"""Look at and materialise decoded samples: a PNG grid, webdataset shards, an ImageFolder.

All three draw items with the loader's sampling contract (``d3fmt.loader.dataset``), so sample
j of class c in a grid or an export is exactly item ``position(c) * n + j`` of a
``D3Dataset`` with the same seed, epoch and samples per class. Library functions only;
``d3 sample`` and ``d3 export`` call them.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field

import numpy as np
import torch

from d3fmt.errors import ConfigError
from d3fmt.format.container import atomic_write
from d3fmt.loader.dataset import SampleOptions, decode_items, make_plan, open_representation
from d3fmt.png import png_bytes

FORMATS = ("webdataset", "folder")
MEAN_BORDER = (230, 57, 70)  # prior means: red frame
SAMPLE_BORDER = (40, 40, 40)  # noise draws: dark grey frame
DECODE_BATCH = 256


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] float in [0, 1] -> [N, H, W, C] uint8 (round to nearest)."""
    x = (images01.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ---------------------------------------------------------------------------------------
# Sample grid.
# ---------------------------------------------------------------------------------------


@dataclass
class GridInfo:
    """What ``sample_grid`` wrote."""

    path: str
    classes: list[int]  # one row per class, top to bottom
    columns: int
    cell: int  # side of one cell in pixels (image * scale + 2 * border)
    width: int
    height: int


def sample_grid(
    d3_path,
    out_png,
    *,
    columns: int = 8,
    classes=None,
    seed: int = 0,
    epoch: int = 0,
    mark_means: bool = True,
    scale: int | None = None,
    border: int = 2,
) -> GridInfo:
    """Write a PNG grid: a row per class, ``columns`` samples each.

    With ``mark_means`` a row starts with up to ``columns // 2`` of the class's L prior
    means (framed in red) and the other cells are noise draws (framed in dark grey), so
    draws are always shown. ``scale`` (default: about 48 px per image) enlarges small
    images with nearest-neighbour.
    """
    if not isinstance(columns, int) or columns < 1:
        raise ConfigError(f"columns={columns!r} must be a positive integer")
    rep = open_representation(d3_path, classes=classes)
    picked = None if classes is None else list(classes)
    latents = max(rep.latents_per_class(c) for c in (picked or rep.classes))
    per_class = latents + columns if mark_means else columns  # slots 0..L-1 are the means
    options = SampleOptions(per_class, seed, epoch, "hard", mark_means, picked)
    plan = make_plan(rep, options)
    c, h, w = rep.image_shape
    scale = max(1, round(48 / max(h, w))) if scale is None else int(scale)
    if scale < 1 or border < 0:
        raise ConfigError("scale must be >= 1 and border >= 0")
    cell_h, cell_w = h * scale + 2 * border, w * scale + 2 * border
    rows = len(plan.classes)
    cells = torch.tensor([r * per_class + slot for r, cls in enumerate(plan.classes)
                          for slot in _grid_slots(rep.latents_per_class(cls), columns, mark_means)])  # [rows*cols]
    canvas = np.zeros((rows * cell_h, columns * cell_w, 3), dtype=np.uint8)
    for start in range(0, len(cells), DECODE_BATCH):
        index = cells[start : start + DECODE_BATCH]
        images, _ = decode_items(rep, plan, options, index)
        pixels = _as_rgb(to_uint8(images))  # [n, h, w, 3]
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
        draw = plan.locate(index, epoch=options.epoch)
        for k in range(len(index)):
            r, col = divmod(start + k, columns)
            y, x = r * cell_h, col * cell_w
            canvas[y : y + cell_h, x : x + cell_w] = MEAN_BORDER if bool(draw.is_mean[k]) else SAMPLE_BORDER
            canvas[y + border : y + border + h * scale, x + border : x + border + w * scale] = pixels[k]
    atomic_write(out_png, png_bytes(canvas))
    return GridInfo(os.fspath(out_png), list(plan.classes), columns, cell_h, canvas.shape[1], canvas.shape[0])


def _grid_slots(latents: int, columns: int, mark_means: bool) -> list[int]:
    """A row's plan slots: some prior means (slots < L), then noise draws (slots >= L)."""
    if not mark_means:
        return list(range(columns))
    means = min(latents, columns // 2)
    return list(range(means)) + list(range(latents, latents + columns - means))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> [N, H, W, 3]: grey replicated, RGB kept, other counts show channel 0."""
    if pixels.shape[-1] == 3:
        return pixels
    return np.repeat(pixels[..., :1], 3, axis=-1)


# ---------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------


@dataclass
class ExportInfo:
    """What ``export_samples`` wrote."""

    out: str
    format: str
    count: int  # images written
    soft: bool  # soft labels written alongside
    files: list[str] = field(default_factory=list)  # shards (webdataset) or index files (folder)


def export_samples(
    d3_path,
    out_dir,
    *,
    format: str = "folder",
    samples_per_class: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    classes=None,
    include_means: bool = False,
    soft: bool | None = None,
    force: bool = False,
    shard_size: int = 10000,
    progress: bool = True,
) -> ExportInfo:
    """Decode N samples per class and write them as webdataset shards or an ImageFolder.

    webdataset: ``OUT/shard-000000.tar`` ..., each sample ``{key}.png``, ``{key}.cls``
    (the class index as text) and, with soft labels, ``{key}.soft.json``; keys are
    ``c{class:05d}_{slot:08d}``. folder: ``OUT/{class:04d}_{name}/{slot:06d}.png`` (the
    class-index prefix keeps ImageFolder's alphabetical class order equal to ours).
    Both write ``OUT/labels.json`` (class names, files or shards, labels); soft labels
    also go to ``OUT/soft_labels.npy`` [count, num_classes] float32, rows in file order.
    ``soft=None`` writes soft labels when the file has them.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is unknown; use one of {', '.join(FORMATS)}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size={shard_size!r} must be a positive integer")
    out_dir = os.fspath(out_dir)
    _prepare_out(out_dir, force)
    rep = open_representation(d3_path, classes=classes)
    if soft is None:
        soft = rep.has_soft
    options = SampleOptions(samples_per_class, seed, epoch, "soft" if soft else "hard", include_means,
                            None if classes is None else list(classes))  # fmt: skip
    plan = make_plan(rep, options)
    names = _class_dirs(rep.header.get("class_names") or [], rep.num_classes)
    writer = _ShardWriter(out_dir, shard_size) if format == "webdataset" else None
    files, labels, soft_rows = [], [], []
    from tqdm import tqdm

    with tqdm(total=len(plan), unit="img", desc=f"export {format}", disable=not progress) as bar:
        for start in range(0, len(plan), DECODE_BATCH):
            index = torch.arange(start, min(start + DECODE_BATCH, len(plan)))
            images, lab = decode_items(rep, plan, options, index)
            draw = plan.locate(index, epoch=options.epoch)
            pixels = to_uint8(images)
            for k in range(index.shape[0]):
                cls, slot = int(draw.cls[k]), int(draw.slot[k])
                soft_vec = lab[k].tolist() if soft else None
                if writer is not None:
                    name = writer.add(f"c{cls:05d}_{slot:08d}", png_bytes(pixels[k]), cls, soft_vec)
                else:
                    name = f"{names[cls]}/{slot:06d}.png"
                    os.makedirs(os.path.join(out_dir, names[cls]), exist_ok=True)
                    atomic_write(os.path.join(out_dir, name), png_bytes(pixels[k]))
                files.append(name)
                labels.append(cls)
                if soft:
                    soft_rows.append(lab[k].numpy())
            bar.update(index.shape[0])
    written = writer.close() if writer is not None else []
    index_files = _write_index(out_dir, rep, format, files, labels, soft_rows, written, options)
    return ExportInfo(out_dir, format, len(files), bool(soft), written or index_files)


def _prepare_out(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not a directory; choose another -o")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ConfigError(f"{out_dir} is not empty; choose an empty or new -o, or pass --force to write into it")
    os.makedirs(out_dir, exist_ok=True)


def _class_dirs(class_names: list, num_classes: int) -> list[str]:
    """Safe directory names: class index prefix + the class name stripped to [A-Za-z0-9_-]."""
    dirs = []
    for c in range(num_classes):
        name = class_names[c] if c < len(class_names) and isinstance(class_names[c], str) else ""
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:48]
        dirs.append(f"{c:04d}_{safe}" if safe else f"{c:04d}")
    return dirs


def _write_index(out_dir, rep, format, files, labels, soft_rows, shards, options) -> list[str]:
    index = {
        "format": format,
        "count": len(files),
        "num_classes": rep.num_classes,
        "class_names": list(rep.header.get("class_names") or []),
        "seed": options.seed,
        "epoch": options.epoch,
        "shards": shards,
        "files": files,  # webdataset: sample keys; folder: relative PNG paths
        "labels": labels,
    }
    written = ["labels.json"]
    if soft_rows:
        arr = np.stack(soft_rows).astype(np.float32)  # [count, num_classes]
        with open(os.path.join(out_dir, "soft_labels.npy"), "wb") as f:
            np.save(f, arr, allow_pickle=False)
        written.append("soft_labels.npy")
    atomic_write(os.path.join(out_dir, "labels.json"), json.dumps(index, indent=1).encode("utf-8"))
    return written


class _ShardWriter:
    """Plain tar shards in webdataset layout, deterministic (fixed mtime/owner)."""

    def __init__(self, out_dir: str, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.shards: list[str] = []
        self.tar: tarfile.TarFile | None = None
        self.in_shard = 0

    def add(self, key: str, png: bytes, cls: int, soft: list | None) -> str:
        if self.tar is None or self.in_shard >= self.shard_size:
            self._next_shard()
        self._member(f"{key}.png", png)
        self._member(f"{key}.cls", str(cls).encode("ascii"))
        if soft is not None:
            self._member(f"{key}.soft.json", json.dumps(soft).encode("ascii"))
        self.in_shard += 1
        return key

    def _next_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
        name = f"shard-{len(self.shards):06d}.tar"
        self.shards.append(name)
        self.tar = tarfile.open(os.path.join(self.out_dir, name), "w", format=tarfile.USTAR_FORMAT)
        self.in_shard = 0

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> list[str]:
        if self.tar is not None:
            self.tar.close()
        return self.shards


def parse_classes(text: str | None) -> list[int] | None:
    """``"0,3,5"`` -> [0, 3, 5]; None or "" -> None (all classes). ConfigError otherwise."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--classes {text!r} is not a comma-separated list of class indices, e.g. 0,3,5") from None
