"""In-memory data as a `d3 pack` source: numpy arrays ``(x, y)`` or a map-style dataset.

A dataset is anything with ``len()`` and ``[i] -> (image, label)`` (a torch ``Dataset``,
torchvision datasets, Hugging Face ``datasets`` with a torch format). Images may be PIL
images, numpy arrays or torch tensors; their layout follows the library they come from:

- PIL images and numpy arrays: [H, W] or [H, W, C] (channels last), uint8 0..255 or
  floats in [0, 1] (a PIL image in another mode than L or RGB: convert it first);
- torch tensors: [H, W] or [C, H, W] (channels first, as ``ToTensor`` gives), uint8 or
  floats in [0, 1].

Arrays ``x`` are [N, H, W], [N, H, W, C] or [N, C, H, W] (C in 1, 3, channels last when
both fit, like a .npz source). The data is written once to a content-addressed ``.npz``
file (:func:`as_arrays`, then :func:`npz_spec`), which every process of a job opens like any other source, so the
same data always gives the same source hash and the same file.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy

from d3fmt.errors import SourceError
from d3fmt.format.container import atomic_write
from d3fmt.sources.arrays import to_uint8


def is_in_memory(source) -> bool:
    """True for ``(x, y)`` arrays or a map-style dataset; False for a spec (str / path)."""
    return not isinstance(source, (str, Path))


def as_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels [N, H, W] or [N, H, W, C], int64 labels [N]) of arrays or a dataset."""
    if isinstance(source, tuple) and len(source) == 2 and _is_array(source[0]):
        x, y = (_numpy(v) for v in source)
        return _channels_last(to_uint8(x, "x")), _labels(y, len(x))
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise SourceError(f"cannot pack a {type(source).__name__}; pass a source spec, arrays (x, y) "
                          "or a map-style dataset of (image, label)")
    if len(source) == 0:
        raise SourceError("the dataset is empty; it needs at least one image per class")
    images, labels = zip(*(_item(source[i], i) for i in range(len(source))))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise SourceError(f"the dataset's images differ in shape ({sorted(shapes)[:3]}...); "
                          "resize them to one size first (e.g. a transform)")
    return _channels_last(np.stack(images)), _labels(np.asarray(labels), len(labels))


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("torch")


def _numpy(value) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _item(item, i: int) -> tuple[np.ndarray, int]:
    """One (image, label) pair -> (uint8 [H, W] or [H, W, C], int)."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise SourceError(f"dataset item {i} is a {type(item).__name__}, not an (image, label) pair")
    image, label = item
    channels_first = type(image).__module__.startswith("torch")  # torch: [C, H, W]
    array = _numpy(image)
    if channels_first and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise SourceError(f"dataset item {i}: an image of shape {list(array.shape)}; use [H, W], [H, W, C] "
                          "(PIL, numpy) or [C, H, W] (torch) with C = 1 or 3")
    return to_uint8(array, f"dataset item {i}"), int(_numpy(label))


def _channels_last(x: np.ndarray) -> np.ndarray:
    """[N, H, W] for grey images, [N, H, W, 3] for colour: one layout for one content."""
    if x.ndim == 4 and x.shape[3] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # [N, C, H, W] -> [N, H, W, C]
    return x[..., 0] if x.ndim == 4 and x.shape[3] == 1 else x


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise SourceError(f"labels must be {n} integers (one per image), got {y.dtype} {list(y.shape)}")
    return y.astype(np.int64)


def npz_spec(x: np.ndarray, y: np.ndarray, class_names: list[str], directory) -> str:
    """The path (a source spec) of a ``.npz`` file holding images ``x``, labels ``y`` and
    the class names (:func:`as_arrays`), written once under ``directory`` (named by its content)."""
    members = {"x": x, "y": y, "class_names": np.array([str(n) for n in class_names])}  # unicode, never pickled
    digest = hashlib.blake2b(digest_size=12)
    for key, value in members.items():
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    path = Path(directory) / "arrays" / f"{digest.hexdigest()}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, _npz_bytes(members))
    return str(path)


def _npz_bytes(members: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (as np.savez writes) with fixed member times: same arrays, same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for key, value in members.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                npy.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    return buffer.getvalue()
