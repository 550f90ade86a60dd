"""d3fmt.device.tune_cpu_allocator: freed tensor memory is reused instead of faulted in afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Touch a fresh 64 MiB tensor 16 times; count the page faults (first touches) it took.
PROBE = """
import json, resource, sys, torch
from d3fmt.device import tune_cpu_allocator
applied = tune_cpu_allocator() if sys.argv[1] == "tune" else False
again = tune_cpu_allocator() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    t = torch.ones(16 * 2**20)
    del t
print(json.dumps({"applied": applied, "again": again,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuned_allocator_reuses_freed_memory():
    plain, tuned = _probe("plain"), _probe("tune", D3FMT_MALLOC_TUNING="1")
    assert tuned["applied"] and tuned["again"]  # applied once, and says so when asked again
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert plain["faults"] > 15 * pages  # every one of the 16 tensors faulted in afresh
    # the first few only (glibc's aligned allocations reuse a freed block once blocks have
    # coalesced to a little more than the request: 2 to 6 tensors' worth were measured)
    assert tuned["faults"] < 8 * pages


def test_tuning_is_off_unless_asked_for():
    assert _probe("tune", D3FMT_MALLOC_TUNING="0")["applied"] is False
    assert _probe("tune", D3FMT_MALLOC_TUNING="")["applied"] is False


def test_tuning_scoped_to_a_block_applies_on_cpu_only(monkeypatch):
    from d3fmt.device import cpu_allocator_tuned

    monkeypatch.setenv("D3FMT_MALLOC_TUNING", "1")
    with cpu_allocator_tuned("cuda") as applied:
        assert applied is False
    if sys.platform.startswith("linux"):
        with cpu_allocator_tuned("cpu") as applied:
            assert applied is True
        with cpu_allocator_tuned("cpu") as again:   # restored after the block: applies again
            assert again is True
