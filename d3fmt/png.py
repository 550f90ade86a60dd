"""PNG encoding: the one place d3fmt turns pixels into PNG bytes (Pillow, torch-free).

Used by the sample grid and exports (:mod:`d3fmt.loader.export`), the same-bytes PNG baseline
(:mod:`d3fmt.evaluation.baseline`) and the loader benchmark. Deterministic: Pillow's default
encoder settings, no timestamps or other metadata.
"""

from __future__ import annotations

import io

import numpy as np

from d3fmt.errors import ConfigError

PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def png_bytes(pixels: np.ndarray) -> bytes:
    """One uint8 image [H, W, C] (C = 1..4) as PNG bytes."""
    from PIL import Image

    c = pixels.shape[-1]
    if c not in PNG_MODES:
        raise ConfigError(f"images with {c} channels cannot be written as PNG; use 1 to 4 channels")
    img = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if c == 1 else pixels), PNG_MODES[c])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
