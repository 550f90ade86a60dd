"""Training data from a .d3 file: D3Dataset (map-style, CPU) and D3Stream (batched, GPU-capable).

Sampling contract (the same for both, and for ``d3 sample`` / ``d3 export``):

    n   = samples per class (default: the header's ``samples_per_class``)
    sel = the selected classes, in the order given (default: all classes of the file, ascending)
    L_c = latents (priors) per class c
    A_c = anchors of class c (format 1.2; 0 without anchors)

    P_c = A_c + 2 * L_c with include_means (each mean once, then each prior drawn once), else A_c + L_c
    u   = j                       when n >= P_c
          (j + epoch * n) % P_c   when n <  P_c (epochs take turns, so every component is used)
    item i  ->  class c = sel[i // n],  slot j = i % n
    u % P_c < A_c: the item is anchor u % P_c of class c, image = its stored pixels / 255
    else prior l = (u - A_c) % L_c; with include_means, the items with A_c <= u < A_c + L_c
             are the prior means (eps = 0)
    eps     =  noise.gaussian(seed, epoch, index = c * 2**24 + j, z_dim)
    z       =  mu[c, l] + exp(logvar[c, l] / 2) * eps
    image   =  (G(z) + 1) / 2                  pixels in [0, 1] (ToTensor convention)
             or (image - mean) / std           with normalize=True (header normalization)
    label   =  c, or the prior's soft-label vector with labels="soft", or with
               labels="teacher" the stored teacher's softmax(teacher(normalised image) / T)
               for this very sample (d3fmt.models.teacher); labels="auto" (the default) is
               "teacher" when the file stores a teacher, else "hard"

So sample i of epoch e with seed s is one fixed tensor: read alone, in any batch, in any
order, with any number of DataLoader workers or ranks, in any process (up to float
round-off of batched convolutions, ~1e-6). Tolerances of the compute paths, in [0, 1]
pixel units: fp32 (the default) 1e-6 between any two reads; ``dtype=torch.bfloat16``
within 0.03 of the fp32 sample (tests/test_dataset.py), so bf16 is a different stream,
never the default. No int8 path: torch's CPU quantisation covers linear layers, not the
transposed convolutions that are the decoder's cost. The noise index depends on the class, not on
its position in ``sel``, so a class's samples do not change when other classes are
selected. ``set_epoch(e)`` gives fresh noise each epoch (call it before creating the
epoch's iterator; with ``persistent_workers=True`` workers keep the epoch they started with).

Decoders run under ``torch.inference_mode`` and have no batch-dependent normalisation.
Nothing is cached, so memory stays flat however many samples are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from d3fmt.errors import ConfigError
from d3fmt.loader.noise import gaussian
from d3fmt.loader.representation import Representation, normalize
from d3fmt.seeds import mix_seed

CLASS_STRIDE = 1 << 24  # noise index = class * CLASS_STRIDE + slot


@dataclass
class SamplingPlan:
    """Which (class, slot, prior) each item index stands for; see the module docstring."""

    classes: list[int]  # sel
    samples_per_class: int  # n
    latents: list[int]  # L of each selected class, aligned with `classes`
    include_means: bool
    anchors: list[int] | None = None  # A of each selected class (None: no anchors)

    def __len__(self) -> int:
        return len(self.classes) * self.samples_per_class

    def locate(self, index: torch.Tensor, device=None, epoch: int = 0) -> "Draw":
        """Items [N] -> their draw in ``epoch``. Vectorised; works on any device."""
        device = index.device if device is None else torch.device(device)
        index = index.to(device=device, dtype=torch.int64)
        sel = torch.as_tensor(self.classes, dtype=torch.int64, device=device)  # [K_sel]
        lat = torch.as_tensor(self.latents, dtype=torch.int64, device=device)  # [K_sel]
        k, slot = index // self.samples_per_class, index % self.samples_per_class
        lpc = lat[k]
        anchors = torch.as_tensor(self.anchors or [0] * len(self.classes), dtype=torch.int64, device=device)[k]
        period = anchors + (2 * lpc if self.include_means else lpc)  # P_c
        n = self.samples_per_class
        u = torch.where(period > n, (slot + int(epoch) * n) % period, slot)
        v = u - anchors  # position among the priors
        is_mean = (v >= 0) & (v < lpc) if self.include_means else torch.zeros_like(slot, dtype=torch.bool)
        cls = sel[k]
        wrapped = u % period
        component = torch.where(wrapped < anchors, wrapped, anchors + v % lpc.clamp(min=1))
        return Draw(cls=cls, slot=slot, prior=component, is_mean=is_mean, counter=cls * CLASS_STRIDE + slot)


@dataclass
class Draw:
    """One batch of items resolved to classes, priors and noise counters. All [N]."""

    cls: torch.Tensor  # int64 class index
    slot: torch.Tensor  # int64 slot j within the class
    prior: torch.Tensor  # int64 mixture component: anchor u < A_c, else prior A_c + l
    is_mean: torch.Tensor  # bool: decode the prior mean (eps = 0)
    counter: torch.Tensor  # int64 noise index


@dataclass
class SampleOptions:
    """Everything that defines the sample stream of a file, shared by Dataset and Stream."""

    samples_per_class: int | None = None  # None: the header's samples_per_class
    seed: int = 0
    epoch: int = 0
    # "auto" (the stored teacher when there is one, else hard) | "hard" (class index) | "soft" (stored
    # soft-label vector) | "teacher" (stored teacher); make_plan resolves "auto"
    labels: str = "auto"
    include_means: bool = False
    classes: list[int] | None = None  # None: all classes
    normalize: bool = False  # False: pixels in [0, 1]; True: (x - mean) / std


def open_representation(path, device="cpu", dtype=torch.float32, classes=None) -> Representation:
    """Open and validate a .d3 file and load (only) the subtasks holding ``classes``."""
    from d3fmt.format import D3Reader  # imported here: d3fmt.format is torch-free and optional

    with D3Reader(path) as reader:  # validates preamble + header; FormatError if bad or missing
        return Representation.from_reader(reader, device=device, dtype=dtype, classes=classes)


def make_plan(rep: Representation, options: SampleOptions) -> SamplingPlan:
    """Validate the options against the file and fix the item -> draw mapping."""
    if options.labels == "auto":  # the stored teacher when there is one, else hard
        options.labels = "teacher" if rep.has_teacher else "hard"
    mode = rep.label_mode(options.labels)
    if mode == "soft" and rep.anchors.classes:
        raise ConfigError("stored soft labels cover latent priors, and this file holds anchors; use labels='teacher' "
                          "or 'hard'")
    if mode == "teacher":
        rep.normalization  # the teacher reads normalised images: FormatError now if the header lacks it
    classes = rep.classes if options.classes is None else [int(c) for c in options.classes]
    loaded = set(rep.classes)
    if not classes or len(set(classes)) != len(classes) or not all(c in loaded for c in classes):
        raise ConfigError(f"classes must be distinct class indices held by the file (0..{rep.num_classes - 1}); got {options.classes}")
    n = options.samples_per_class
    if n is None:
        n = int(rep.header.get("samples_per_class") or max(_components(rep, c) for c in classes))
    if not isinstance(n, int) or not 1 <= n < CLASS_STRIDE:
        raise ConfigError(f"samples_per_class={n!r} must be an integer in [1, {CLASS_STRIDE})")
    if options.normalize:
        rep.normalization  # raises FormatError now rather than at the first sample
    anchors = [rep.anchors_per_class(c) for c in classes]
    return SamplingPlan(classes, n, [rep.latents_per_class(c) for c in classes], options.include_means,
                        anchors if any(anchors) else None)


def _components(rep: Representation, cls: int) -> int:
    return rep.anchors_per_class(cls) + rep.latents_per_class(cls)


def decode_items(rep: Representation, plan: SamplingPlan, options: SampleOptions, index: torch.Tensor):
    """Items [N] -> (images [N, C, H, W] in [0, 1] or normalised, labels [N] or [N, K]).

    The one function behind D3Dataset, D3Stream and export, so they always agree.
    """
    draw = plan.locate(index, device=rep.device, epoch=options.epoch)
    eps = gaussian(options.seed, options.epoch, draw.counter, rep.z_max, device=rep.device)  # [N, z]
    if plan.include_means:
        eps = eps.masked_fill(draw.is_mean[:, None], 0.0)
    images = rep.pixels(draw.cls, draw.prior, eps)  # [N, C, H, W] in [0, 1]
    normalized = normalize(images, *rep.normalization) if options.normalize or options.labels == "teacher" else None
    if options.normalize:
        images = normalized
    if options.labels == "teacher":
        labels = rep.teacher_labels(normalized)
    elif options.labels == "soft":
        labels = rep.soft_labels(draw.cls, draw.prior)
    else:
        labels = draw.cls
    if labels.is_inference():
        labels = labels.clone()
    return images, labels


class D3Dataset(Dataset):
    """Map-style dataset over a .d3 file: item i -> (image [C, H, W] float, label).

    ``d3fmt.D3Dataset("x.d3")`` works with any DataLoader (workers, DistributedSampler,
    shuffling). ``__getitems__`` lets each worker decode a whole batch in one decoder call
    (in chunks of ``CPU_CHUNK`` samples, channels-last, with the worker's single torch
    thread); the default collate stacks the result. With ``num_workers=0`` the decoding
    runs in the training process, on its threads. ``dtype=torch.bfloat16`` runs the
    decoders in bf16 (images stay float32; see the module docstring for the tolerance):
    on a CPU with AMX it pays only for decoders of tens of MFLOP per image and is slower
    for small ones (benchmarks/loader.md, "decoder alone"). The file is opened and fully validated at
    construction (a bad file raises a D3Error here), then re-opened lazily in each worker
    process: the dataset pickles as its path and options only.
    """

    def __init__(
        self,
        path,
        samples_per_class: int | None = None,
        *,
        seed: int = 0,
        epoch: int = 0,
        transform=None,
        labels: str = "auto",
        include_means: bool = False,
        classes=None,
        normalize: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        self.path = os.fspath(path)
        self.transform = transform
        self.dtype = dtype  # decoder compute dtype; images are returned as float32 either way
        self.options = SampleOptions(samples_per_class, int(seed), int(epoch), labels, include_means,
                                     None if classes is None else [int(c) for c in classes], normalize)  # fmt: skip
        self._rep = open_representation(self.path, dtype=dtype, classes=self.options.classes)
        self.plan = make_plan(self._rep, self.options)
        self.num_classes = self._rep.num_classes
        self.image_shape = self._rep.image_shape
        self.class_names = list(self._rep.header.get("class_names") or [])

    # -- epoch / pickling -----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Fresh noise for a new epoch (same contract as DistributedSampler.set_epoch)."""
        self.options.epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self.options.epoch

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rep"] = None  # rebuilt lazily in the receiving process
        return state

    def _representation(self) -> Representation:
        if self._rep is None:
            self._rep = open_representation(self.path, dtype=self.dtype, classes=self.options.classes)
        return self._rep

    # -- access ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> list:
        """Decode a batch of items in one decoder call; returns a list of (image, label)."""
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        n = len(self)
        if index.numel() and (index.min() < -n or index.max() >= n):
            raise IndexError(f"index out of range for a D3Dataset of {n} items")
        index = torch.where(index < 0, index + n, index)
        with torch.no_grad():
            images, labels = decode_items(self._representation(), self.plan, self.options, index)
        images = images.float()
        hard = self.options.labels == "hard"
        out = []
        for k in range(index.shape[0]):
            image = images[k]
            if self.transform is not None:
                image = self.transform(image)
            out.append((image, int(labels[k]) if hard else labels[k]))
        return out


class D3Stream(IterableDataset):
    """Whole batches drawn and decoded on a device: yields (images [B, C, H, W], labels).

    No per-sample Python work: a batch is a vector of item indices, turned into noise,
    latents and images with a few tensor ops and one decoder call per subtask. Iterate it
    directly or through ``DataLoader(stream, batch_size=None)``. Items follow the same
    contract as :class:`D3Dataset` (same seed/epoch/index -> same sample, up to float
    tolerance; bf16 when ``dtype=torch.bfloat16``). ``shuffle`` permutes the items with a
    generator seeded by (seed, epoch); with DataLoader workers, batch b goes to worker
    b % num_workers, so the stream is the same with or without workers (use 0 workers
    for CUDA).
    """

    def __init__(
        self,
        path,
        batch_size: int = 256,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        *,
        samples_per_class: int | None = None,
        seed: int = 0,
        epoch: int = 0,
        labels: str = "auto",
        include_means: bool = False,
        classes=None,
        normalize: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        self.path = os.fspath(path)
        self.batch_size = batch_size
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is available; use device='cpu'")
        self.dtype = dtype
        self.shuffle, self.drop_last = shuffle, drop_last
        self.options = SampleOptions(samples_per_class, int(seed), int(epoch), labels, include_means,
                                     None if classes is None else [int(c) for c in classes], normalize)  # fmt: skip
        self._rep = open_representation(self.path, self.device, dtype, classes=self.options.classes)
        self.plan = make_plan(self._rep, self.options)
        self.num_classes = self._rep.num_classes
        self.image_shape = self._rep.image_shape

    def set_epoch(self, epoch: int) -> None:
        self.options.epoch = int(epoch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rep"] = None
        return state

    def _representation(self) -> Representation:
        if self._rep is None:
            self._rep = open_representation(self.path, self.device, self.dtype, classes=self.options.classes)
        return self._rep

    @property
    def num_samples(self) -> int:
        return len(self.plan)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self) -> torch.Tensor:
        """This epoch's item order [num_samples], on the device."""
        n = self.num_samples
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen = torch.Generator().manual_seed(mix_seed(self.options.seed, self.options.epoch))
        return torch.randperm(n, generator=gen).to(self.device)

    def batch(self, index: torch.Tensor):
        """Decode arbitrary items [N] -> (images [N, C, H, W] in self.dtype, labels)."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        with torch.no_grad():
            images, labels = decode_items(self._representation(), self.plan, self.options, index)
        return images.to(self.dtype), labels

    def __iter__(self):
        order = self.order()
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for b in range(worker, len(self), workers):
            yield self.batch(order[b * self.batch_size : (b + 1) * self.batch_size])
