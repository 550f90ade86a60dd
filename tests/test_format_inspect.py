"""`d3 inspect`: the summary dict, the text rendering and the CLI command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from d3fmt.cli import main
from d3fmt.errors import FormatError, IntegrityError
from d3fmt.format import append_eval, write_d3
from d3fmt.format.decoders import decoder_param_count
from d3fmt.format.example import example_container
from d3fmt.format.inspect import render_text, summarize

# small decoder, z 3, width 8, 1x8x8 (start side 2, two stages): fc [8*2*2, 3] + [32], fc_norm 2x[8],
# each stage [8, 8, 4, 4] + norm 2x[8], head [1, 8, 3, 3] + [1]
SMALL_PARAMS = 32 * 3 + 32 + 16 + 2 * (8 * 8 * 16 + 16) + 72 + 1
EVAL = {"model": "convnet3", "protocol": "d3-final", "test_set": "digits:test", "accuracy": 0.8125,
        "std": 0.0125, "runs": 3, "epochs": 50, "date": "2025-01-02"}


@pytest.fixture
def d3(tmp_path):
    path = tmp_path / "a.d3"
    c = example_container(num_classes=5, image_shape=(1, 8, 8), num_subtasks=2, latents_per_class=2,
                          z_dim=3, soft=True, encoding="float16", family="small")
    c.header["budget"]["ipc"] = 10
    c.header["budget"]["max_bytes"] = 10 * 5 * 64 * 4
    write_d3(path, c)
    append_eval(path, EVAL)
    return path


def test_summary_has_the_documented_keys_and_numbers(d3):
    s = summarize(d3)
    assert s["format_version"] == "1.0"
    assert s["file_bytes"] == d3.stat().st_size == s["budget"]["bytes_used"]
    assert s["num_classes"] == 5 and s["image_shape"] == [1, 8, 8] and s["labels"] == "soft"
    b = s["budget"]
    assert b["ipc"] == 10 and b["max_bytes"] == 12800
    assert b["ipc_equivalent_fp32"] == round(s["file_bytes"] / (5 * 64 * 4), 6)
    assert b["ipc_equivalent_uint8"] == round(s["file_bytes"] / (5 * 64), 6)
    assert {"name", "stored_bytes", "raw_bytes", "codec"} <= set(s["sections"][0])
    sub0, sub1 = s["subtasks"]
    assert sub0["classes"] == [0, 2, 4] and sub1["classes"] == [1, 3]
    assert sub0["latents_per_class"] == 2 and sub0["z_dim"] == 3
    assert sub0["decoder_params"] == decoder_param_count(sub0["decoder"]) == SMALL_PARAMS
    assert s["evals"] == [{k: EVAL[k] for k in ("model", "protocol", "test_set", "accuracy", "std", "runs",
                                                 "epochs", "date")}]


def test_bytes_by_kind_add_up_to_the_file_size(d3):
    s = summarize(d3)
    kinds = s["bytes_by_kind"]
    assert sum(kinds.values()) == s["file_bytes"]
    secs = {x["name"]: x["stored_bytes"] for x in s["sections"]}
    assert kinds["priors"] == sum(v for k, v in secs.items() if k.endswith((".mu", ".logvar")))
    assert kinds["decoders"] == sum(v for k, v in secs.items() if ".dec." in k)
    assert kinds["labels"] == secs["s0.soft"] + secs["s1.soft"]
    assert kinds["header"] > 48 and kinds["other"] == 0


def test_text_rendering_names_budget_classes_subtasks_and_accuracy(d3):
    text = render_text(summarize(d3, verify=True))
    assert f"{d3.stat().st_size:,} bytes" in text
    assert "cap 12,800 bytes" in text and "[verified]" in text
    assert "images/class as float32" in text and "as uint8" in text
    assert "class0, class1, class2, class3, class4" in text
    assert "#0: classes 0,2,4 (3)" in text and f"decoder small {SMALL_PARAMS:,} params" in text
    assert "81.25% +- 1.25" in text and "3 runs" in text
    assert "priors" in text and "decoders" in text and "labels" in text and "header" in text


def test_cli_text_and_json(d3):
    runner = CliRunner()
    out = runner.invoke(main, ["inspect", str(d3)])
    assert out.exit_code == 0, out.output
    assert "subtasks   2" in out.output
    out = runner.invoke(main, ["inspect", str(d3), "--json", "--verify"])
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert s["verified"] is True
    for key in ("format_version", "file_bytes", "num_classes", "image_shape", "budget", "sections", "subtasks",
                "labels", "evals"):
        assert key in s
    assert set(s["budget"]) >= {"ipc", "max_bytes", "ipc_equivalent_fp32", "ipc_equivalent_uint8"}
    assert set(s["subtasks"][0]) >= {"classes", "latents_per_class", "z_dim", "decoder_params"}
    assert set(s["evals"][0]) >= {"model", "accuracy", "std", "runs", "test_set"}


def test_cli_verify_fails_on_a_corrupt_section_with_one_line(d3):
    s = summarize(d3)
    last = s["sections"][-1]
    data = bytearray(d3.read_bytes())
    data[-1] ^= 0xFF  # inside the last section
    d3.write_bytes(bytes(data))
    runner = CliRunner()
    assert runner.invoke(main, ["inspect", str(d3)]).exit_code == 0  # sections are not read without --verify
    out = runner.invoke(main, ["inspect", str(d3), "--verify"])
    assert out.exit_code == IntegrityError.exit_code
    assert out.output.strip() == f"Error: section {last['name']!r} hash mismatch: the file is corrupt"
    assert "Traceback" not in out.output


@pytest.mark.parametrize("content,fragment", [
    (b"", "truncated"),
    (b"hello world, this is not a d3 file at all, not even close!", "wrong magic"),
    (None, "No such file"),
])
def test_cli_bad_file_is_one_error_line(tmp_path, content, fragment):
    path = tmp_path / "bad.d3"
    if content is not None:
        path.write_bytes(content)
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == FormatError.exit_code
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]


def test_cli_verify_rejects_a_file_that_would_not_sample_and_stays_torch_free(tmp_path):
    """A decoder config without "width" (hashes all fine): --verify fails (FormatError), without importing torch."""
    import subprocess
    import sys

    from test_format_hostile import DECODER_CASES

    path = tmp_path / "nowidth.d3"
    path.write_bytes(DECODER_CASES["34_decoder_missing_width"][0]())
    assert CliRunner().invoke(main, ["inspect", str(path)]).exit_code == 0
    code = ("import sys; from d3fmt.format.inspect import summarize\n"
            "try:\n    summarize(sys.argv[1], verify=True)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "FormatError subtask 0 decoder config is invalid (decoder config is missing keys ['width']; "
        "the file or config is incomplete)", "False"]
    out = CliRunner().invoke(main, ["inspect", str(path), "--verify"])
    assert out.exit_code == FormatError.exit_code and out.output.startswith("Error: subtask 0 decoder config is invalid")
