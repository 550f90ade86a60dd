"""The memory plan of a `d3 pack` job, before any training: arithmetic only (torch-free).

A pack holds, in one process and on one device, one subtask at a time: its uint8 train
(and test) images, then in turn its experts' training, the autoencoder stage and the
distillation loop. The distillation iteration dominates: every one of ``syn_steps``
unrolled student steps decodes ``batch_syn`` samples and keeps their activations (decoder
and ConvNet, with the graph of the inner gradient) until the outer backward pass, and the
MMD term decodes ``mmd_samples`` and embeds ``mmd_real`` images for each of ``mmd_classes``
classes. With today's unbounded settings (every prior in every unrolled step, MMD over
every class) that grows with classes x priors x steps: 1,000 classes at budget 2 are
359,000 priors, 3.6 million decoded images per iteration.

:func:`plan_memory` prices each stage from a :class:`Workload` (plain numbers: image and
class counts of the largest subtask, activation and parameter counts of the models) and
chooses what the caller left open -- ``batch_syn``, ``mmd_classes`` and the number of
subtasks -- so that the plan fits:

1. the whole peak fits ``limit`` (``--max-memory``; default: the device's memory minus a
   margin, :func:`default_limit`);
2. one iteration's working set fits ``ITERATION_BYTES`` beside the images (the default
   bound of per-iteration work on that kind of device: compute then stops growing with
   the class count, as a GPU run's does when it is given ``batch_syn`` by hand);
3. today's settings are kept wherever they fit both: the bounds only bind when the
   unbounded iteration would not fit, so small sources pack exactly as before.

Settings given explicitly are never changed: a plan that does not fit with them is refused
(:class:`d3fmt.errors.MemoryPlanError`, naming the setting to change) before anything runs.

The coefficients (bytes kept per activation value, the process's own base) were measured
on CPU against the peak RSS of real packs (``tests/test_memory.py`` checks the plan
within +-30 % of measured peaks at three shapes; ``tools/bench_jpeg.py --headline``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from d3fmt.errors import MemoryPlanError

MiB, GiB = 2**20, 2**30
FLOAT = 4  # bytes per float32 value
# Per-iteration working-set bound of the defaults, by device type (see the module docstring).
ITERATION_BYTES = {"cpu": 1 * GiB, "cuda": 16 * GiB}
# What the process holds before any data: Python, torch and d3fmt imported, the allocator's
# scratch (measured on CPU: 240 MiB after imports and opening the source, about 90 MiB more at
# the first training step); on a GPU the CUDA context.
BASE_BYTES = {"cpu": 330 * MiB, "cuda": 600 * MiB}
MARGIN = 0.10  # --max-memory's default leaves this share of the device free (at least 1 GiB)
MIN_MARGIN = 1 * GiB
# Values kept per activation value (measured, CPU): the unrolled student keeps its forward
# activations and the graph of the inner gradient (create_graph) of every step; the MMD's
# decoded samples keep one graph; real images are embedded without one (one batch alive).
# Fitted (least squares) to the per-sample slope of peak RSS over batch_syn at three shapes
# (28 px grey, 32 and 64 px RGB; width-32 ConvNet, small decoders): within 8 % at each.
KEEP_MTT_CONV, KEEP_MMD_CONV, KEEP_DECODER, KEEP_TRAIN_CONV = 1.75, 1.25, 0.5, 2.0
DSA_COPIES = 2  # augmented copies of each image alive at once
KEEP_NOGRAD = 0.4  # a forward pass without a graph keeps about two layer outputs alive at once
MIN_BATCH_SYN = 8  # below this the inner steps are too noisy to choose silently
MIN_MMD_CLASSES = 2


@dataclass
class Workload:
    """What one subtask's distillation touches, in plain numbers (the largest subtask)."""

    train_images: int  # train images of the largest subtask
    test_images: int  # held-out images of that subtask (the experts' accuracy)
    image_values: int  # C * H * W
    classes: int  # classes of the largest subtask
    latents_per_class: int
    z_dim: int
    syn_steps: int  # unrolled steps of an iteration that matches trajectories (0: none does: all warm-up)
    mmd_samples: int
    mmd_real: int
    conv_values: int  # activation values of one image through the ConvNet (forward)
    conv_params: int
    decoder_values: int  # activation values of one decoded image (forward)
    decoder_params: int
    expert_batch: int
    autoencoder_batch: int
    eval_batch: int  # images per no-grad batch (expert accuracy, encoder)

    @property
    def priors(self) -> int:
        return self.classes * self.latents_per_class


@dataclass
class MemoryPlan:
    """The chosen bounds and the predicted bytes of each stage (peak = base + the largest)."""

    device: str  # "cpu" or "cuda"
    subtasks: int
    batch_syn: int  # 0: every prior once per unrolled step
    mmd_classes: int  # 0: every class
    limit: int  # --max-memory (bytes)
    base: int
    images: int  # uint8 train + test images of the largest subtask
    experts: int
    autoencoder: int
    iteration: int  # one distillation iteration's working set
    chosen: list[str] = field(default_factory=list)  # the settings the planner chose (not given)

    @property
    def peak(self) -> int:
        return self.base + self.images + max(self.experts, self.autoencoder, self.iteration)

    def line(self) -> str:
        """The plan in one line (what `d3 pack` prints before training)."""
        syn = "all priors" if not self.batch_syn else str(self.batch_syn)
        mmd = "all" if not self.mmd_classes else str(self.mmd_classes)
        auto = f" (chosen: {', '.join(self.chosen)})" if self.chosen else ""
        return (f"memory plan: peak {_gib(self.peak)} of {_gib(self.limit)} on {self.device} = base {_gib(self.base)}"
                f" + images {_gib(self.images)} + max(experts {_gib(self.experts)}, autoencoder "
                f"{_gib(self.autoencoder)}, iteration {_gib(self.iteration)}); subtasks {self.subtasks}, batch_syn "
                f"{syn}, mmd_classes {mmd}{auto}")

    def to_json(self) -> dict:
        return {"device": self.device, "subtasks": self.subtasks, "batch_syn": self.batch_syn,
                "mmd_classes": self.mmd_classes, "limit": self.limit, "base": self.base, "images": self.images,
                "experts": self.experts, "autoencoder": self.autoencoder, "iteration": self.iteration,
                "peak": self.peak, "chosen": list(self.chosen)}


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ---------------------------------------------------------------------------------------
# Pricing the stages.
# ---------------------------------------------------------------------------------------


def sample_bytes(w: Workload, keep_conv: float) -> float:
    """Bytes one decoded, augmented sample keeps through the ConvNet until the outer backward."""
    values = KEEP_DECODER * w.decoder_values + DSA_COPIES * w.image_values + keep_conv * w.conv_values
    return FLOAT * values


def iteration_bytes(w: Workload, batch_syn: int, mmd_classes: int) -> int:
    """One distillation iteration's working set: the unrolled steps, the MMD batches, the
    student's parameter vectors (one per step, plus its gradient graph) and the decoder's
    parameters with their gradients and Adam state."""
    b = batch_syn or w.priors
    k = min(mmd_classes, w.classes) if mmd_classes else w.classes
    mtt = w.syn_steps * (b * sample_bytes(w, KEEP_MTT_CONV) + 3 * FLOAT * w.conv_params)
    mmd = k * w.mmd_samples * sample_bytes(w, KEEP_MMD_CONV)
    real = k * w.mmd_real * FLOAT * (w.image_values * DSA_COPIES + KEEP_NOGRAD * w.conv_values)
    params = FLOAT * 4 * w.decoder_params  # weights, gradients, Adam's two moments
    priors = FLOAT * 3 * 2 * w.priors * w.z_dim  # mu and logvar, gradients, momentum
    return int(mtt + mmd + real + params + priors)


def experts_bytes(w: Workload) -> int:
    """One expert's training: a batch through the ConvNet and back, SGD state, and a no-grad
    evaluation batch."""
    train = w.expert_batch * FLOAT * (KEEP_TRAIN_CONV * w.conv_values + DSA_COPIES * w.image_values)
    evaluate = w.eval_batch * FLOAT * w.image_values * 2
    return int(train + evaluate + 4 * FLOAT * w.conv_params)


def autoencoder_bytes(w: Workload) -> int:
    """The autoencoder stage: a batch through encoder (about a ConvNet) and decoder and back,
    Adam state of the decoder, and the encoded means of every train image."""
    batch = w.autoencoder_batch * FLOAT * (KEEP_TRAIN_CONV * w.conv_values + KEEP_DECODER * w.decoder_values)
    return int(batch + 4 * FLOAT * (w.decoder_params + w.conv_params) + w.train_images * FLOAT * 2 * w.z_dim)


def price(w: Workload, device: str, subtasks: int, batch_syn: int, mmd_classes: int, limit: int,
          chosen: list[str] | None = None) -> MemoryPlan:
    images = (w.train_images + w.test_images) * w.image_values
    return MemoryPlan(device=device, subtasks=subtasks, batch_syn=batch_syn, mmd_classes=mmd_classes, limit=limit,
                      base=BASE_BYTES.get(device, BASE_BYTES["cpu"]), images=images, experts=experts_bytes(w),
                      autoencoder=autoencoder_bytes(w), iteration=iteration_bytes(w, batch_syn, mmd_classes),
                      chosen=list(chosen or []))


# ---------------------------------------------------------------------------------------
# Choosing the bounds.
# ---------------------------------------------------------------------------------------

CHOOSABLE = ("subtasks", "batch_syn", "mmd_classes")


def plan_memory(workload_of: Callable[[int], Workload | None], *, device: str, limit: int, subtasks: int, batch_syn: int,
                mmd_classes: int, choose: tuple[str, ...] = CHOOSABLE, max_subtasks: int | None = None) -> MemoryPlan:
    """The plan for the given settings, with the settings named in ``choose`` chosen so that
    it fits (see the module docstring). ``workload_of(S)`` is the largest subtask's workload
    with S subtasks. Raises MemoryPlanError, naming what to change, when nothing fits."""
    if limit <= 0:
        raise MemoryPlanError(f"--max-memory must be positive, got {limit} bytes")
    chosen_any = bool(set(choose) & set(CHOOSABLE))
    allowance = ITERATION_BYTES.get(device, ITERATION_BYTES["cpu"]) if chosen_any else None
    candidates = _subtask_candidates(subtasks, max_subtasks) if "subtasks" in choose else [subtasks]
    first = None
    for s in candidates:
        w = workload_of(s)
        if w is None:  # no workload with this many subtasks (the budget does not hold their decoders)
            break
        plan = _fit_bounds(w, device, s, batch_syn, mmd_classes, limit, choose, allowance)
        first = first or plan
        if plan.peak <= limit:
            plan.chosen = [name for name in CHOOSABLE if name in choose and _changed(plan, name, subtasks, batch_syn,
                                                                                      mmd_classes)]
            return plan
    raise MemoryPlanError(_refusal(first, choose))


def _changed(plan: MemoryPlan, name: str, subtasks: int, batch_syn: int, mmd_classes: int) -> bool:
    return getattr(plan, name) != {"subtasks": subtasks, "batch_syn": batch_syn, "mmd_classes": mmd_classes}[name]


def _subtask_candidates(start: int, most: int | None) -> list[int]:
    most = most or start
    out, s = [], start
    while s < most:
        out.append(s)
        s *= 2
    return out + [most] if most >= start else [start]


def _fit_bounds(w: Workload, device: str, subtasks: int, batch_syn: int, mmd_classes: int, limit: int,
                choose, allowance: int | None) -> MemoryPlan:
    """Today's settings when they fit; else the largest chosen bounds that do (or the
    smallest allowed ones, whose plan the caller then finds too big)."""
    plan = price(w, device, subtasks, batch_syn, mmd_classes, limit)
    room = limit - plan.base - plan.images
    if allowance is not None:
        room = min(room, allowance)
    if plan.iteration <= room and plan.peak <= limit:
        return plan
    k = mmd_classes
    if "mmd_classes" in choose:
        # the MMD gets at most a quarter of the room; the unrolled steps the rest
        k = _largest(lambda v: iteration_bytes(w, w.priors, v) - iteration_bytes(w, w.priors, 1)
                     + _mmd_one(w) <= room / 4, MIN_MMD_CLASSES, w.classes)
        k = 0 if k >= w.classes else k
    b = batch_syn
    if "batch_syn" in choose:
        b = _largest(lambda v: iteration_bytes(w, v, k) <= room, MIN_BATCH_SYN, w.priors)
        b = 0 if b >= w.priors else b
    return price(w, device, subtasks, b, k, limit)


def _mmd_one(w: Workload) -> float:
    return w.mmd_samples * sample_bytes(w, KEEP_MMD_CONV)


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest v in [low, high] with fits(v) (fits is monotone); low when none."""
    high = max(low, high)
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _refusal(plan: MemoryPlan, choose) -> str:
    """One line: the plan that does not fit and the setting to change."""
    fixed = plan.base + plan.images
    if fixed + max(plan.experts, plan.autoencoder) > plan.limit:
        fix = ("give --subtasks a larger value (each subtask holds its classes' images)" if "subtasks" not in choose
               else "raise --max-memory or use --image-size smaller")
    elif plan.batch_syn and "batch_syn" not in choose:
        fix = f"lower batch_syn (given {plan.batch_syn}) or leave it to the planner"
    elif "batch_syn" not in choose:
        fix = "set batch_syn (samples decoded per unrolled step) or leave it to the planner"
    else:
        fix = "lower --syn-steps or --convnet-width, or raise --max-memory"
    return f"the memory plan does not fit: {plan.line()}; {fix}"


def default_limit(device: str, device_total: int | None = None) -> int:
    """--max-memory's default: the device's memory (a GPU's total; on the CPU the smaller of
    the machine's memory, the cgroup's limit and RLIMIT_AS) minus a margin."""
    total = device_total if device_total else host_memory()
    return int(total - max(MIN_MARGIN, MARGIN * total))


def host_memory() -> int:
    """Bytes of memory this process may use: MemTotal, a cgroup limit or RLIMIT_AS, the smallest."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            sizes.append(int(text))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            sizes.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    return min(sizes) if sizes else 8 * GiB


def parse_bytes(text: str) -> int:
    """``8G``, ``512M``, ``8GiB``, ``1.5g`` or a plain byte count -> bytes (powers of 1024)."""
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise MemoryPlanError(f"--max-memory {text!r} is not a size; write e.g. 8G, 512M or a byte count") from None
    if not value > 0:
        raise MemoryPlanError(f"--max-memory must be positive, got {text!r}")
    return int(value)
