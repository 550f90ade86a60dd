"""tools/gpu_check.sh --smoke: the GPU check's every step runs on the CPU, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_the_report(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["smoke"] is True and report["device"] == "cpu" and report["device_name"].startswith("CPU")
    tests = report["tests"]
    assert tests["returncode"] == 0 and tests["failures"] == tests["errors"] == 0
    assert tests["passed"] >= 1 and tests["skipped"] >= 1  # the CUDA stream test skips on the CPU
    assert [(r["size"], r["dtype"]) for r in report["decode"]] == [
        ("28x28x1", "fp32"), ("28x28x1", "bf16"), ("64x64x3", "fp32"), ("64x64x3", "bf16")]
    for row in report["decode"]:
        assert row["decode_images_per_s"] > 0 and row["resnet18_train_images_per_s"] > 0
        assert abs(row["ratio"] - row["decode_images_per_s"] / row["resnet18_train_images_per_s"]) < 1e-9
    dist = report["distiller"]
    assert dist["preset"] == "standard" and dist["preset_iterations"] == 2000
    assert 0 < dist["mmd_s_per_it"] and 0 < dist["mtt_s_per_it"] and dist["preset_it_per_s"] > 0
    assert dist["profile"] and all(p["ms"] >= 0 and p["calls"] > 0 for p in dist["profile"])
    pack = report["pack"]
    assert 0 < pack["file_bytes"] <= pack["max_bytes"] and 0.0 <= pack["accuracy_mean"] <= 1.0
    md = (tmp_path / "gpu.md").read_text()
    assert report["device_name"] in md and "ResNet-18" in md and "standard" in md and "budget 10" in md
