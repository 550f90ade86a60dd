"""Clean one-line errors outside the format (issue 14, item 4): missing extras, devices that
do not exist, a diverging distillation; never a traceback, never a half-written output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from d3fmt.cli import main
from d3fmt.device import resolve_device
from d3fmt.errors import ConfigError, MissingExtraError, TrainingError


def run_without(module: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import module`` fails as if not installed."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["torch", "safetensors"])
def test_pack_without_the_torch_extra_says_what_to_install(tmp_path, module):
    out = tmp_path / "x.d3"
    res = run_without(module, f"from d3fmt.cli import main; main(['pack', 'digits', '-o', {str(out)!r}, "
                              "'--budget', '10'])")
    assert res.returncode == MissingExtraError.exit_code, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert res.stderr.startswith("Error: this needs the ") and f"module {module!r}" in res.stderr
    assert "pip install torch==2.13.0 'd3fmt[torch]'" in res.stderr
    assert not out.exists()


def test_sample_without_torch_and_the_lazy_api_say_what_to_install(tmp_path):
    res = run_without("torch", f"from d3fmt.cli import main; main(['sample', 'x.d3', '-o', {str(tmp_path / 'g.png')!r}])")
    assert res.returncode == MissingExtraError.exit_code and "Traceback" not in res.stderr, res.stderr
    res = run_without("torch", "import d3fmt\ntry:\n    d3fmt.D3Dataset\nexcept d3fmt.MissingExtraError as e:\n"
                               "    print('ok', e)")
    assert res.returncode == 0 and res.stdout.startswith("ok this needs the torch==2.13.0 package"), res.stderr


def test_a_cuda_index_that_does_not_exist_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--device cuda:7 does not exist: 1 GPU\(s\) are visible"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_a_diverging_distillation_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import d3fmt.distill.trainer as trainer

    monkeypatch.setattr(trainer, "_mmd_loss", lambda task, state, expert: torch.tensor(float("nan")))
    out = tmp_path / "x.d3"
    res = CliRunner().invoke(main, ["pack", "digits", "-o", str(out), "--budget", "10", "--iterations", "3",
                                    "--experts", "1", "--expert-epochs", "2", "--match-epochs", "1",
                                    "--convnet-width", "8", "--pretrain-steps", "5", "--teacher-width", "0",
                                    "--no-eval", "--device", "cpu", "-q", "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == TrainingError.exit_code, res.output
    assert res.output.startswith("Error: distillation diverged at iteration 0") and res.output.count("\n") == 1
    assert not out.exists()
