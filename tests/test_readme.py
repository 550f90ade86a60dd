"""The README's examples run as written (on a small fixture file instead of digits.d3)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from d3fmt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_trains_over_the_stream(d3_file, monkeypatch, tmp_path):
    code = _blocks("python")[0].replace('"digits.d3"', repr(str(d3_file)))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    images, labels = next(iter(scope["loader"]))
    assert images.ndim == 4 and images.shape[0] == labels.shape[0] > 0
    assert float(images.min()) >= 0 and float(images.max()) <= 1


@pytest.mark.slow
def test_pack_example_runs(tmp_path, monkeypatch):
    """The d3fmt.pack example as written, with a tiny distillation (its settings are the defaults)."""
    import d3fmt

    real = d3fmt.pack
    tiny = dict(iterations=2, pretrain_steps=10, num_experts=1, expert_epochs=2, eval_epochs=1, device="cpu",
                quiet=True, work_dir=str(tmp_path / "work"))
    monkeypatch.setattr(d3fmt, "pack", lambda *a, **kw: real(*a, **{**kw, **tiny}), raising=False)
    monkeypatch.chdir(tmp_path)
    code = next(b for b in _blocks("python") if "d3fmt.pack(" in b)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert result.path.exists() and result.bytes <= result.max_bytes and 0 <= result.accuracy <= 1


@pytest.mark.slow
def test_cli_examples_run(d3_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = [line.split("#")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("d3 ") and not c.startswith("d3 pack")]
    assert len(commands) >= 5
    for command in commands:
        args = [str(d3_file) if a == "digits.d3" else a for a in shlex.split(command)[1:]]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "grid.png").exists() and any((tmp_path / "digits_png").rglob("*.png"))
