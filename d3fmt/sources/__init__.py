"""Dataset sources for ``d3 pack SRC``: ImageFolder, webdataset shards, IDX, npz, digits.

Every source streams uint8 [N, C, H, W] batches with int64 global class ids, in a fixed
order, and knows its classes, shape, split sizes and a content hash before decoding a
pixel. The per-kind rules live in the module of that kind; the shared rules are:

- SRC forms and test-split resolution: :mod:`d3fmt.sources.spec`. A source without its
  own test split gets a stratified holdout (default 0.2, seed 0; ``digits`` is such a
  source), disjoint from the train records that remain.
- Channels: grey sources (IDX, digits, [N, H, W] npz) give C=1; ImageFolder/webdataset
  look at the headers of up to 64 files spread over the train records: all grey -> 1,
  else 3 (RGBA drops alpha, palette is expanded; a colour file in a grey source
  becomes grey).
- Size: every image is resized to a square ``image_size`` with Pillow BILINEAR (which
  antialiases when shrinking); non-square images are squashed, not cropped. Default
  side: the shorter side of the (most common) source size.
- Bad images: a SourceError naming the file, or with ``skip_bad`` skipped and counted
  in ``Source.skipped`` (distinct files found so far; ``info.num_train`` and
  ``class_counts`` count listed files, as nothing is decoded at open).
- content_hash: :mod:`d3fmt.sources.hashing` (file names + sizes, plus full bytes when
  the files total <= 64 MiB; the arrays' bytes for digits).
- Memory: labels and a per-record index are held; pixels are streamed one batch at a
  time, and a class subset reads only its own files (ImageFolder, webdataset).
- Decoded-image cache (``open_source(..., cache=CacheConfig(dir))``, ``d3 prepare``):
  ImageFolder / webdataset pixels decoded once per size, in parallel, into uint8 arrays
  read back instead of the files (:mod:`d3fmt.sources.cache`).

Generated test data: :mod:`d3fmt.sources.synthetic` (and ``tools/make_shapes.py``).
"""

from d3fmt.sources.base import Source, SourceInfo
from d3fmt.sources.spec import DEFAULT_HOLDOUT, open_source
from d3fmt.sources.stats import pixel_stats

__all__ = ["Source", "SourceInfo", "open_source", "pixel_stats", "DEFAULT_HOLDOUT"]
