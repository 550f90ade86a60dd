"""The CLI package: its defaults are the library's, its help says what options do, it stays thin."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from click.testing import CliRunner

import d3fmt.cli
from d3fmt.cli import main
from d3fmt.cli.options import EVAL_DEFAULTS, LABEL_CHOICES, MODELS
from d3fmt.cli.pack import PRIOR_MODES
from d3fmt.distill.autoencoder import PRIOR_MODES as LIBRARY_PRIOR_MODES
from d3fmt.distill.presets import DEFAULTS
from d3fmt.evaluation import evaluate

CLI = Path(d3fmt.cli.__file__).parent


def test_eval_option_defaults_are_eval_configs():
    defaults = {f.name: f.default for f in dataclasses.fields(evaluate.EvalConfig)}
    assert EVAL_DEFAULTS == {k: defaults[k] for k in EVAL_DEFAULTS}
    assert (MODELS, LABEL_CHOICES, PRIOR_MODES) == (evaluate.MODELS, evaluate.LABEL_CHOICES, LIBRARY_PRIOR_MODES)


def test_pack_option_defaults_are_the_librarys():
    given = {p.name: p.default for p in main.commands["pack"].params
             if isinstance(p.default, (bool, int, float, str)) and p.name in DEFAULTS}
    assert len(given) >= 20
    given["teacher_width"] = int(given["teacher_width"])  # "auto" or a number, as typed
    assert given == {name: DEFAULTS[name] for name in given}
    merge = {p.name: p.default for p in main.commands["merge"].params}
    assert (merge["work_dir"], merge["device"]) == (DEFAULTS["work_dir"], DEFAULTS["device"])


def test_help_texts_carry_no_measurements():
    """Measured numbers live in benchmarks/; --help says what an option does and points there."""
    out = CliRunner().invoke(main, ["pack", "--help"]).output
    for option in ("--warmup", "--pretrain-steps", "--teacher-width", "--soft-labels"):
        text = out.split("\n  " + option, 1)[1].split("\n  --", 1)[0]
        assert "%" not in text and "benchmarks/" in text, (option, text)


def test_cli_functions_are_short():
    lengths = {f"{path.name}:{node.name}": node.end_lineno - node.lineno + 1
               for path in CLI.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef)}
    assert max(lengths.values()) <= 40, {k: v for k, v in lengths.items() if v > 40}


def test_one_cache_dir_check():
    """--cache-dir with --no-cache fails the same way for every command (sources.cache.cache_dir_setting)."""
    sources = "\n".join(p.read_text() for p in CLI.glob("*.py"))
    assert not re.search(r"no_cache and cache_dir", sources)
    for args in (["pack", "digits", "-o", "x.d3", "--budget", "1"], ["merge", "p.d3", "-o", "x.d3"],
                 ["baseline", "full", "digits"]):
        res = CliRunner().invoke(main, [*args, "--cache-dir", "c", "--no-cache"])
        assert res.exit_code == 2 and "give --cache-dir or --no-cache, not both" in res.output, (args, res.output)
