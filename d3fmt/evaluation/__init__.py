"""The evaluation side: how good a file is, against what it competes with.

``evaluate`` (train a fresh model on a decoded stream, test on real data), ``codecs``
(the same-bytes competitor codec family, torch-free) and ``baseline`` (random subset,
every codec, full data).
"""
