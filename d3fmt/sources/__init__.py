"""Dataset sources for ``d3 pack SRC``: ImageFolder, webdataset shards, IDX, npz, digits.

Every source streams uint8 [N, C, H, W] batches with int64 global class ids, in a fixed
order, and knows its classes, shape, split sizes and a content hash without decoding.
The rules for each kind are in the module of that kind and in docs/sources.md.
Generated test data: :mod:`d3fmt.sources.synthetic`.
"""

from d3fmt.sources.base import Source, SourceInfo
from d3fmt.sources.spec import DEFAULT_HOLDOUT, open_source
from d3fmt.sources.stats import pixel_stats

__all__ = ["Source", "SourceInfo", "open_source", "pixel_stats", "DEFAULT_HOLDOUT"]
