"""What the benchmarks record about the machine they ran on (imported by tools/bench_*.py)."""

from __future__ import annotations


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, or ``default`` where that is unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), default)
    except OSError:
        return default
