"""The D3 decoder: latent z [N, z_dim] -> image [N, C, H, W] in tanh space [-1, 1].

One decoder is stored per subtask (class subset). It is rebuilt from its JSON config
plus named tensors, so the config must say everything about the architecture and the
state-dict names must never change (the .d3 file stores each tensor as a section
``s{i}.dec.{name}``).

Families (method.md, adapted to any square side ``image_size = start * 2**n``, n >= 1):

- ``small``:  ``fc`` Linear z -> k*s*s, reshape to [k, s, s], ``fc_norm`` + LeakyReLU,
  then n transposed-conv stages (kernel 4, stride 2, padding 1) that double the side
  while halving channels, then ``head`` conv3x3 -> C, tanh.
- ``medium``: the same linear start, then n-1 transposed-conv stages with kernel 3
  (stride 2, padding 1, output_padding 1) and a final upsampling stage (nearest x2 +
  conv3x3), then ``head``.
- ``large``:  no linear layer: z is reshaped to [z_dim / (s*s), s, s]; then the medium
  stages, the first one widening to k ("adds a wide stage at the top").

Stage i outputs ``max(min_channels, k >> (i + 1))`` channels (large: ``k >> i``), so the
width k can be any integer and the budget fitter can size the decoder continuously.

State-dict names (stable; part of the file format):

    fc.weight [k*s*s, z_dim], fc.bias [k*s*s]              small / medium
    fc_norm.weight [k], fc_norm.bias [k]                  small / medium, norm="group"
    stages.{i}.conv.weight  ConvTranspose2d: [c_in, c_out, K, K]; the final medium/large
                            upsampling stage is a Conv2d: [c_out, c_in, 3, 3]
    stages.{i}.conv.bias [c_out]                          only when norm="none"
    stages.{i}.norm.weight [c_out], stages.{i}.norm.bias  norm="group"
    head.weight [C, c_last, 3, 3], head.bias [C]

Normalisation never depends on the batch (method.md): GroupNorm (groups = gcd of
``norm_groups`` and the channel count) or none. A sample decoded alone equals the same
sample decoded inside any batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from d3fmt.format.decoders import (  # noqa: F401  (torch-free; re-exported here)
    FAMILIES,
    MAX_CHANNELS,
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MAX_Z_DIM,
    NORMS,
    DecoderConfig,
    _as_config,
    check_param_shapes,
    decoder_param_count,
    decoder_param_shapes,
    default_start_size,
)

LEAKY_SLOPE = 0.2


# ---------------------------------------------------------------------------------------
# The module.
# ---------------------------------------------------------------------------------------


class Stage(nn.Module):
    """One resolution-doubling stage: conv (transposed, or upsample + conv) -> norm -> LeakyReLU."""

    def __init__(self, cfg: DecoderConfig, c_in: int, c_out: int, kind: str):
        super().__init__()
        bias = cfg.norm == "none"
        if kind == "tconv4":
            self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
        elif kind == "tconv3":
            self.conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)
        else:  # "upsample": nearest x2 then a 3x3 conv
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        self.upsample = kind == "upsample"
        self.norm = nn.GroupNorm(cfg.groups(c_out), c_out) if cfg.norm == "group" else nn.Identity()
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)  # in place: one less full-size buffer
        self.phase_weight: torch.Tensor | None = None  # see Decoder.optimize_for_inference()

    def forward(self, x):  # [N, c_in, h, w] -> [N, c_out, 2h, 2w]
        if self.upsample and self.phase_weight is not None:
            x = _upsample_conv_by_phases(x, self.phase_weight, self.conv.bias)
        else:
            if self.upsample:
                x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv(x)
        return self.act(self.norm(x))


# Nearest x2 upsampling then a 3x3 conv, computed at the low resolution: output pixel
# (2m+a, 2n+b) only sees input rows/cols {m-1+a, m+a}, with the 3 kernel taps summed
# into 2 (phase a=0: [w0, w1+w2]; a=1: [w0+w1, w2]). 4 instead of 9 MACs per tap pair.
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # [phase][row][tap]


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight [c_out, c_in, 3, 3] -> 2x2 kernels [c_out * 4, c_in, 2, 2], channel o*4 + a*2 + b."""
    taps = torch.tensor(_PHASE_TAPS, dtype=weight.dtype, device=weight.device)  # [2, 2, 3]
    k = torch.einsum("arK,bsL,oiKL->oabirs", taps, taps, weight)  # [c_out, 2, 2, c_in, 2, 2]
    return k.reshape(weight.shape[0] * 4, weight.shape[1], 2, 2).contiguous(memory_format=torch.channels_last)


def _upsample_conv_by_phases(x: torch.Tensor, kernels: torch.Tensor, bias) -> torch.Tensor:
    n, _, h, w = x.shape
    c_out = kernels.shape[0] // 4
    y = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), kernels)  # [N, 4*c_out, h+1, w+1]
    y = y.permute(0, 2, 3, 1).reshape(n, h + 1, w + 1, c_out, 2, 2)  # NHWC view, phases last
    out = x.new_empty(n, h, 2, w, 2, c_out)
    for a in range(2):
        for b in range(2):
            out[:, :, a, :, b, :] = y[:, a : a + h, b : b + w, :, a, b]
    out = out.reshape(n, 2 * h, 2 * w, c_out).permute(0, 3, 1, 2)  # [N, c_out, 2h, 2w], channels-last memory
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class Decoder(nn.Module):
    """z [N, z_dim] -> x [N, C, H, W] in tanh space. See the module docstring for names."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        s, k = cfg.start_size, cfg.width
        if cfg.family != "large":
            self.fc = nn.Linear(cfg.z_dim, k * s * s)
            self.fc_norm = nn.GroupNorm(cfg.groups(k), k) if cfg.norm == "group" else nn.Identity()
            self.fc_act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        stages, c_in = [], cfg.input_channels
        outs = cfg.stage_channels()
        for i, c_out in enumerate(outs):
            if cfg.family == "small":
                kind = "tconv4"
            else:
                kind = "upsample" if i == len(outs) - 1 else "tconv3"
            stages.append(Stage(cfg, c_in, c_out, kind))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(c_in, cfg.channels, 3, padding=1)
        self.channels_last = False  # see optimize_for_inference()

    def optimize_for_inference(self) -> "Decoder":
        """Faster decoding, same values up to float round-off; call after any ``.to()``.

        Runs the conv stages in NHWC memory layout (oneDNN's convolutions skip their layout
        reorders: about 1.2-1.7x on CPU) and computes a final "upsample + conv3x3" stage at
        the low resolution (2.25x fewer multiply-adds). Weights must not change afterwards
        (the loader's decoders are frozen); the state dict is unchanged.
        """
        self.channels_last = True
        self.to(memory_format=torch.channels_last)
        for stage in self.stages:
            if stage.upsample:
                stage.phase_weight = phase_kernels(stage.conv.weight.detach())
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg, s = self.cfg, self.cfg.start_size
        n = z.shape[0]
        if cfg.family == "large":
            x = z.reshape(n, cfg.input_channels, s, s)  # [N, z/(s*s), s, s]
        else:
            x = self.fc(z).reshape(n, cfg.width, s, s)  # [N, k, s, s]
            x = self.fc_act(self.fc_norm(x))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for stage in self.stages:
            x = stage(x)  # side doubles each stage
        x = torch.tanh(self.head(x))  # [N, C, H, W] in [-1, 1]
        return x.contiguous() if self.channels_last else x


def decode_mflop(config_json: dict | DecoderConfig) -> float:
    """Nominal MFLOP (2 x multiply-accumulates) to decode one image: the linear layer and
    every convolution as written (a transposed conv: each input pixel meets the whole
    kernel; "upsample + conv3x3": each output pixel does). Norms and activations are not
    counted. The budget fitter caps this (``--max-decode-mflop``); CPU decode time is
    about proportional to it for decoders of a few MFLOP and more (benchmarks/loader.md).
    """
    cfg = _as_config(config_json)
    side, c_in = cfg.start_size, cfg.input_channels
    macs = 0 if cfg.family == "large" else cfg.z_dim * cfg.width * side * side  # fc
    outs = cfg.stage_channels()
    for i, c_out in enumerate(outs):
        upsample = cfg.family != "small" and i == len(outs) - 1
        kernel = 4 if cfg.family == "small" else 3
        pixels = (2 * side) ** 2 if upsample else side * side  # output pixels, or input pixels
        macs += c_in * c_out * kernel * kernel * pixels
        side, c_in = 2 * side, c_out
    macs += c_in * cfg.channels * 9 * side * side  # head conv3x3
    return 2 * macs / 1e6


def build_decoder(config_json: dict | DecoderConfig, tensors: dict | None = None) -> Decoder:
    """Rebuild a decoder from its JSON config and (optionally) its named tensors.

    ``tensors`` maps state-dict names to numpy arrays or torch tensors. Loading is strict:
    a missing, unexpected or wrongly shaped tensor raises FormatError, checked against the
    shapes computed from the config *before* anything is allocated. Without tensors the
    decoder is randomly initialised (what the distiller starts from). Returned in eval mode.
    """
    cfg = _as_config(config_json)
    if tensors is not None:
        _check_tensors(cfg, tensors)
    decoder = Decoder(cfg)
    if tensors is not None:
        state = {name: _to_tensor(value) for name, value in tensors.items()}
        decoder.load_state_dict(state, strict=True)
    return decoder.eval()


def _check_tensors(cfg: DecoderConfig, tensors: dict) -> None:
    check_param_shapes(cfg, {name: tuple(value.shape) for name, value in tensors.items()})


def _to_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
