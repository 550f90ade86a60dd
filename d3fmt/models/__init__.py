"""Torch model code: the D3 decoder (and, from other modules, the evaluation networks)."""

from d3fmt.models.decoder import (  # noqa: F401
    Decoder,
    DecoderConfig,
    build_decoder,
    decoder_param_count,
    decoder_param_shapes,
)
