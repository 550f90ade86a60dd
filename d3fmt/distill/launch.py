"""Launching a `d3 pack` job: owns :func:`pack`, the last link of the distiller's chain.

The launch modes differ only in who runs which subtasks (:mod:`d3fmt.distill.subtask`)
and how the parts reach the process that merges them (:mod:`d3fmt.distill.merge`), so
they all produce the same tensors:

- one process, one device: the subtasks one after another (parts in the run directory);
- one process, several devices (``devices``, or every visible GPU when there are several):
  one worker process per device (``python -m d3fmt.distill.launch``, the job config as
  JSON, round-robin subtasks); the parent merges the parts the workers wrote;
- ``torchrun --nproc_per_node=N -m d3fmt pack ...`` (one or many nodes): rank r runs
  subtasks r, r+N, ...; each rank sends its results to rank 0 as the bytes of one encoded
  partial container in a uint8 tensor (sizes first, then the padded bytes: no pickle and
  no shared filesystem); rank 0 merges and writes the file (gloo on CPU, nccl on GPU);
- job arrays: ``d3 pack ... --subtasks S --subtask i -o part_i.d3`` writes one part;
  ``d3 merge part_*.d3 -o out.d3 --source SRC`` merges them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch

from d3fmt import errors
from d3fmt.device import resolve_device
from d3fmt.distill import merge as merging
from d3fmt.distill.anchors import AnchorConfig, AnchorPackResult, pack_anchors
from d3fmt.distill.job import PackContext, PackResult, prepare
from d3fmt.distill.settings import RUN_ONLY_FIELDS, PackConfig, config_from_settings, config_to_json
from d3fmt.distill.subtask import distill_parts, part_path
from d3fmt.errors import ConfigError, D3Error
from d3fmt.format import encode_d3
from d3fmt.format.container import atomic_write

DIST_TIMEOUT = timedelta(hours=72)  # ranks that finish early wait this long for the others
WORKER_POLL_S = 0.5


def assign(num_subtasks: int, workers: int) -> list[list[int]]:
    """Round-robin: worker w runs subtasks w, w + workers, ... (balanced, deterministic)."""
    return [list(range(w, num_subtasks, workers)) for w in range(workers)]


def _merge_local(ctx: PackContext, paths: list[Path], device, ids: list[int]) -> PackResult:
    parts = merging.check_parts([merging.read_part(p) for p in paths])
    result = merging.finish(merging.combine(parts), ctx.cfg, ctx.source, device, ctx.run_dir,
                            merging.expert_accuracy(parts))
    result.subtasks = ids
    return result


# ---------------------------------------------------------------------------------------
# The launch modes
# ---------------------------------------------------------------------------------------


def pack(cfg: PackConfig) -> PackResult | AnchorPackResult:
    """Run `d3 pack`: all subtasks here (one device or one worker per device), one subtask
    (``cfg.subtask``: a partial container), or this rank's share under torchrun."""
    if cfg.representation == "anchors":
        return pack_anchors(cfg, AnchorConfig(bits=cfg.anchor_bits, seed=cfg.seed))
    env = DistEnv.from_environ()
    if env is not None:
        if cfg.subtask is not None:
            raise ConfigError("--subtask is for job arrays; under torchrun the ranks share the subtasks, "
                              "leave --subtask out")
        return _pack_distributed(cfg, env)
    torch.manual_seed(cfg.seed)
    ctx = prepare(cfg)
    cfg = ctx.cfg  # with the memory plan's choices (subtasks, batch_syn, mmd_classes)
    if cfg.subtask is not None:
        return _pack_part(ctx, resolve_device(cfg.device))
    devices = worker_devices(cfg)
    ids = list(range(cfg.subtasks))
    if len(devices) > 1:
        paths = run_workers(ctx, devices)
    else:
        paths = distill_parts(ctx, ids, resolve_device(devices[0]))
    return _merge_local(ctx, paths, resolve_device(devices[0]), ids)


def _pack_part(ctx: PackContext, device) -> PackResult:
    """Job-array mode: subtask ``cfg.subtask`` only, written to ``cfg.output`` as a part."""
    i = ctx.cfg.subtask
    [path] = distill_parts(ctx, [i], device)
    data = path.read_bytes()
    atomic_write(ctx.cfg.output, data)
    part = merging.read_part(ctx.cfg.output)
    return PackResult(Path(ctx.cfg.output), len(data), ctx.max_bytes, ctx.plan, None,
                      merging.expert_accuracy([part]), subtasks=[i], partial=True)


def worker_devices(cfg: PackConfig) -> list[str]:
    """``cfg.devices``; else every visible GPU when several are visible and there are
    several subtasks (``--device auto``); else the one device."""
    if cfg.devices:
        return list(cfg.devices)[: cfg.subtasks]
    if cfg.device == "auto" and cfg.subtasks > 1 and torch.cuda.device_count() > 1:
        return [f"cuda:{k}" for k in range(min(torch.cuda.device_count(), cfg.subtasks))]
    return [cfg.device]


def run_workers(ctx: PackContext, devices: list[str]) -> list[Path]:
    """One worker process per device, each distilling its round-robin share of the
    subtasks into part files; returns every part's path once all workers succeeded.
    A worker's D3Error is raised here again with its class and message."""
    run_dir, cfg = ctx.run_dir, ctx.cfg
    config = run_dir / "worker-config.json"
    config.write_text(json.dumps(config_to_json(replace(cfg, quiet=True))))
    cpu_workers = sum(1 for d in devices if not d.startswith("cuda"))
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    procs = []
    try:
        for k, (device, ids) in enumerate(zip(devices, assign(cfg.subtasks, len(devices)))):
            status = run_dir / f"worker-{k}.status.json"
            status.unlink(missing_ok=True)
            log = open(run_dir / f"worker-{k}.log", "wb")
            cmd = [sys.executable, "-m", "d3fmt.distill.launch", "--config", str(config), "--device", device,
                   "--subtasks", ",".join(map(str, ids)), "--status", str(status), "--threads", str(threads)]
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), status, device, log))
            if not cfg.quiet:
                print(f"worker {k} on {device}: subtasks {ids}", file=sys.stderr)
        _wait(procs)
    finally:
        for proc, _, _, log in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            log.close()
    return [part_path(run_dir, i) for i in range(cfg.subtasks)]


def _wait(procs) -> None:
    """Wait for every worker; on the first failure stop the others and raise its error."""
    running = list(procs)
    while running:
        for item in list(running):
            proc, status, device, _ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                raise _worker_error(status, device, proc.returncode)
        time.sleep(WORKER_POLL_S)


def _worker_error(status: Path, device: str, code: int) -> Exception:
    try:
        info = json.loads(status.read_text())
    except (OSError, ValueError):
        info = {}
    cls = getattr(errors, str(info.get("error")), None)
    if isinstance(cls, type) and issubclass(cls, D3Error):
        return cls(f"worker on {device}: {info.get('message')}")
    log = status.with_name(status.name.replace(".status.json", ".log"))
    return RuntimeError(f"worker on {device} exited with code {code}; see {log}")


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one worker process (see :func:`run_workers`)."""
    parser = argparse.ArgumentParser(prog="python -m d3fmt.distill.launch")
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--subtasks", required=True, help="comma-separated subtask indices")
    parser.add_argument("--status", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    status = Path(args.status)
    try:
        settings = json.loads(Path(args.config).read_text())
        run = {k: settings.pop(k) for k in RUN_ONLY_FIELDS}
        cfg = config_from_settings(settings, **{**run, "device": args.device, "devices": None})
        torch.manual_seed(cfg.seed)
        ctx = prepare(cfg)
        distill_parts(ctx, [int(i) for i in args.subtasks.split(",") if i], resolve_device(args.device))
    except D3Error as exc:
        status.write_text(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    status.write_text(json.dumps({"ok": True}))
    return 0


# ---------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    """The process group torchrun describes in the environment."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environ(cls) -> "DistEnv | None":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(cfg: PackConfig, env: DistEnv) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is asked for (or auto and visible), else the CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    resolve_device(cfg.device)  # a clean error when CUDA was asked for and is missing
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def gather_bytes(payload: bytes, device: torch.device, world_size: int) -> list[bytes] | None:
    """Every rank's ``payload`` on rank 0 (None elsewhere): the sizes first (all_gather of
    one int64), then the bytes padded to the largest as a uint8 tensor (gather)."""
    import torch.distributed as dist

    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    buf = torch.zeros(max(1, max(sizes)), dtype=torch.uint8, device=device)
    if payload:
        buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    rank = dist.get_rank()
    bufs = [torch.empty_like(buf) for _ in range(world_size)] if rank == 0 else None
    dist.gather(buf, gather_list=bufs, dst=0)
    if rank != 0:
        return None
    return [bytes(b[:n].cpu().numpy().tobytes()) for b, n in zip(bufs, sizes)]


def _pack_distributed(cfg: PackConfig, env: DistEnv) -> PackResult:
    import torch.distributed as dist

    device = rank_device(cfg, env)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=DIST_TIMEOUT)
    result = _rank_pack(cfg, env, device)
    # Only on success: every rank waits here until rank 0 has written the file, so no
    # rank tears its connections down (or exits) while a peer still uses the group. On an
    # exception the rank just exits non-zero and torchrun stops the others; a collective
    # shutdown there could hang on a peer that is still inside a collective.
    dist.barrier()
    if owned:
        dist.destroy_process_group()
    return result


def _rank_pack(cfg: PackConfig, env: DistEnv, device: torch.device) -> PackResult:
    """This rank's subtasks, gathered on rank 0, which merges them into the file."""
    torch.manual_seed(cfg.seed)
    ctx = prepare(cfg)
    ids = assign(ctx.cfg.subtasks, env.world_size)[env.rank]
    paths = distill_parts(ctx, ids, device)
    payload = b""
    if paths:
        payload = encode_d3(merging.combine([merging.read_part(p) for p in paths], complete=False))
    gathered = gather_bytes(payload, device, env.world_size)
    if gathered is None:
        return PackResult(None, len(payload), ctx.max_bytes, ctx.plan, None, [], subtasks=ids, partial=True)
    rank_paths = []
    for r, data in enumerate(gathered):
        if data:
            path = ctx.run_dir / f"rank-{r:04d}.d3"
            atomic_write(path, data)
            rank_paths.append(path)
    return _merge_local(ctx, rank_paths, device, ids)


if __name__ == "__main__":
    sys.exit(worker_main())
