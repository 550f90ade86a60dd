"""Federated distillation: single process, worker processes, torchrun (2 CPU ranks, gloo)
and job-array parts + `d3 merge` all give the same tensors; merge refuses parts that do
not belong together; merged files work with the loader and `d3 inspect`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import d3fmt
from d3fmt.cli import main
from d3fmt.distill import launch as pack_module
from d3fmt.distill.launch import assign, pack
from d3fmt.distill.merge import MergeConfig, merge
from d3fmt.errors import ConfigError, MergeError
from d3fmt.format import read_d3, write_d3
from d3fmt.seeds import derive_seed
from d3fmt.sources.base import Source
from d3fmt.sources.synthetic import make_shapes_folder

TINY = ["--iterations", "3", "--experts", "1", "--expert-epochs", "3", "--syn-steps", "2", "--match-epochs", "1",
        "--convnet-width", "16", "--eval-epochs", "2", "--pretrain-steps", "10", "--device", "cpu", "-q",
        "--soft-labels"]  # the merge's all-class soft labels are part of what these tests check
DIGITS = ["digits", "--budget", "10", "--subtasks", "3", "--no-eval", *TINY]
TORCHRUN_TIMEOUT_S = 240


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torchrun ranks and CPU workers run one thread each; the in-process runs must too,
    or float reductions could differ in the last bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def cli_error(*args, error=MergeError) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == error.exit_code, res.output
    assert res.output.startswith("Error: ") and "Traceback" not in res.output
    assert res.output.count("\n") == 1, res.output  # one line
    return res.output


def assert_same_tensors(a_path, b_path):
    a, b = read_d3(a_path), read_d3(b_path)
    assert sorted(a.tensors) == sorted(b.tensors)
    assert a.encodings == b.encodings
    for name in a.tensors:
        assert np.array_equal(a.tensors[name], b.tensors[name]), name
    for key in ("subtasks", "labels", "train", "normalization", "num_classes", "samples_per_class"):
        assert a.header[key] == b.header[key], key
    assert a.header["budget"]["choices"] == b.header["budget"]["choices"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, one_thread):
    """One single-process run of digits in 3 subtasks (the reference) and its 3 parts."""
    root = tmp_path_factory.mktemp("digits")
    seen = {}
    real_pack = pack_module.pack

    def recording_pack(cfg):
        seen["cfg"] = cfg
        return real_pack(cfg)

    pack_module.pack = recording_pack
    try:
        cli("pack", *DIGITS, "-o", root / "single.d3", "--work-dir", root / "w_single")
    finally:
        pack_module.pack = real_pack
    parts = []
    for i in range(3):
        res = cli("pack", *DIGITS, "--subtask", i, "-o", root / f"part_{i}.d3", "--work-dir", root / "w_parts")
        assert "wrote part" in res.output
        parts.append(root / f"part_{i}.d3")
    return {"root": root, "single": root / "single.d3", "parts": parts, "cfg": seen["cfg"]}


@pytest.mark.slow
def test_single_process_file_records_the_partition(digits):
    c = read_d3(digits["single"])
    h = c.header
    assert [s["classes"] for s in h["subtasks"]] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert "partial" not in h and "part" not in h["provenance"] and h["labels"] == "soft"
    assert c.tensors["s0.soft"].shape == (4 * h["subtasks"][0]["latents_per_class"], 10)
    assert h["budget"]["bytes_used"] <= h["budget"]["max_bytes"]
    # every subtask has its own decoder, trained from its own seed
    assert not np.array_equal(c.tensors["s0.mu"][:3], c.tensors["s1.mu"][:3])


@pytest.mark.slow
def test_parts_plus_merge_equal_the_single_process_file(digits):
    root = digits["root"]
    for i, path in enumerate(digits["parts"]):
        h = read_d3(path).header
        assert h["partial"] is True and h["labels"] == "hard" and [s["id"] for s in h["subtasks"]] == [i]
        assert h["provenance"]["part"]["of"] == 3
    out = root / "merged.d3"
    res = cli("merge", *reversed(digits["parts"]), "-o", out, "--source", "digits", "--work-dir", root / "w_merge",
              "--no-eval", "--device", "cpu", "-q")
    assert "3 subtasks" in res.output
    assert_same_tensors(digits["single"], out)
    # the loader and `d3 inspect` work on the merged file; inspect lists every subtask
    ds = d3fmt.D3Dataset(out, labels="soft")
    image, label = ds[len(ds) - 1]
    assert image.shape == (1, 8, 8) and label.shape == (10,)
    text = cli("inspect", out).output
    assert all(f"#{i}: classes {r}" in text for i, r in enumerate(["0-3", "4-6", "7-9"]))
    summary = json.loads(cli("inspect", out, "--json").output)
    assert [s["id"] for s in summary["subtasks"]] == [0, 1, 2] and not summary["partial"]


@pytest.mark.slow
def test_worker_processes_equal_the_single_process_file(digits, tmp_path):
    cfg = replace(digits["cfg"], devices=["cpu", "cpu"], output=str(tmp_path / "workers.d3"),
                  work_dir=str(tmp_path / "w"))
    result = pack(cfg)
    assert result.subtasks == [0, 1, 2]
    logs = sorted(p.name for p in tmp_path.glob("w/runs/*/worker-*.log"))
    assert logs == ["worker-0.log", "worker-1.log"]  # two processes did the work
    assert_same_tensors(digits["single"], tmp_path / "workers.d3")


def run_with_timeout(cmd, timeout, env):
    """Run cmd in its own process group; on timeout kill that group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s")
    return proc.returncode, out


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_the_single_process_file(digits, tmp_path):
    out = tmp_path / "torchrun.d3"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "d3fmt",
           "pack", *DIGITS, "-o", str(out), "--work-dir", str(tmp_path / "w")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, log = run_with_timeout(cmd, TORCHRUN_TIMEOUT_S, env)
    assert code == 0, log[-3000:]
    assert "sent subtasks [1]" in log and f"wrote {out}" in log  # rank 1 sent, rank 0 wrote
    assert_same_tensors(digits["single"], out)
    # rank 0 received rank 1's subtask as the bytes of a partial container
    [received] = list(tmp_path.glob("w/runs/*/rank-0001.d3"))
    h = read_d3(received).header
    assert h["partial"] is True and [s["id"] for s in h["subtasks"]] == [1]


@pytest.mark.slow
def test_merge_refuses_parts_that_do_not_belong_together(digits, tmp_path):
    p0, p1, p2 = (str(p) for p in digits["parts"])
    base = ["-o", str(tmp_path / "x.d3"), "--no-eval", "--work-dir", str(tmp_path / "w"), "-q"]
    msg = cli_error("merge", p0, p2, *base)
    assert "subtask 1 of 3 (classes 4-6) is missing" in msg and "--subtask 1" in msg
    msg = cli_error("merge", p0, p1, p1, p2, *base)
    assert "both hold subtask 1" in msg
    # another seed: a part of another job
    other = read_d3(p1)
    other.header["provenance"]["settings"]["distill"]["iterations"] = 4
    write_d3(tmp_path / "other.d3", other)
    msg = cli_error("merge", p0, str(tmp_path / "other.d3"), p2, *base)
    assert "other.d3 does not belong with" in msg and "settings.distill.iterations (4 vs 3)" in msg
    alien = read_d3(p2)
    alien.header["provenance"]["source_hash"] = "0" * 64
    write_d3(tmp_path / "alien.d3", alien)
    msg = cli_error("merge", p0, p1, str(tmp_path / "alien.d3"), *base)
    assert "alien.d3" in msg and "source hash differs" in msg
    msg = cli_error("merge", p0, p1, str(digits["single"]), *base)
    assert "single.d3 is not a part" in msg
    with pytest.raises(MergeError, match="no parts"):
        merge([], MergeConfig(output=str(tmp_path / "y.d3")))
    assert not (tmp_path / "x.d3").exists() and not (tmp_path / "y.d3").exists()


@pytest.mark.slow
def test_merge_refuses_the_wrong_source(digits, tmp_path):
    npz = tmp_path / "other.npz"
    np.savez(npz, x=np.zeros((20, 8, 8), np.uint8), y=np.repeat(np.arange(10), 2))
    msg = cli_error("merge", *digits["parts"], "-o", tmp_path / "x.d3", "--source", npz, "--no-eval",
                    "--work-dir", tmp_path / "w", "-q")
    assert "is not the data the parts were packed from" in msg


@pytest.mark.slow
def test_job_array_on_a_generated_rgb_source_with_evaluation(tmp_path):
    src = make_shapes_folder(tmp_path / "shapes", num_classes=4, per_class=10, image_size=16, val_per_class=3)
    args = ["pack", src, "--budget", "20", "--subtasks", "2", "--label-sample", "5", *TINY]
    for i in range(2):
        cli(*args, "--subtask", i, "-o", tmp_path / f"p{i}.d3", "--work-dir", tmp_path / f"w{i}")
    out = tmp_path / "merged.d3"
    res = cli("merge", tmp_path / "p0.d3", tmp_path / "p1.d3", "-o", out, "--source", src,
              "--work-dir", tmp_path / "wm", "--device", "cpu", "-q")
    assert "accuracy" in res.output
    c = read_d3(out)
    assert c.header["image_shape"] == [3, 16, 16] and c.header["labels"] == "soft"
    assert c.header["evals"][0]["test_set"].count("val") and c.header["evals"][0]["epochs"] == 2
    assert out.stat().st_size <= 20 * 4 * 3 * 16 * 16 * 4
    image, label = d3fmt.D3Dataset(out)[0]
    assert image.shape == (3, 16, 16) and int(label) == 0
    assert "#1: classes 2-3 (2)" in cli("inspect", out).output
    # the same job in one process gives the same tensors
    cli(*args, "--no-eval", "-o", tmp_path / "single.d3", "--work-dir", tmp_path / "ws")
    assert_same_tensors(tmp_path / "single.d3", out)


@pytest.mark.slow
def test_hard_label_parts_merge_without_the_source(tmp_path):
    npz = tmp_path / "data.npz"
    from d3fmt.sources.synthetic import make_npz

    make_npz(npz, num_classes=4, per_class=8, image_size=8, test_per_class=2)
    args = ["pack", npz, "--budget", "20", "--subtasks", "2", "--no-eval", *TINY, "--hard-labels", "--teacher-width", "0"]
    for i in range(2):
        cli(*args, "--subtask", i, "-o", tmp_path / f"p{i}.d3", "--work-dir", tmp_path / "w")
    npz.unlink()  # the source is gone: hard labels and no evaluation do not need it
    cli("merge", tmp_path / "p0.d3", tmp_path / "p1.d3", "-o", tmp_path / "m.d3", "--no-eval",
        "--work-dir", tmp_path / "w2", "-q")
    c = read_d3(tmp_path / "m.d3")
    assert c.header["labels"] == "hard" and not any(n.endswith(".soft") for n in c.tensors)
    msg = cli_error("merge", tmp_path / "p0.d3", tmp_path / "p1.d3", "-o", tmp_path / "e.d3",
                    "--work-dir", tmp_path / "w2", "-q", error=ConfigError)  # evaluation needs the source
    assert "--source" in msg


@pytest.mark.slow
def test_pack_streams_one_subset_at_a_time(tmp_path, monkeypatch):
    """No call ever loads the training images of more than one subset at once."""
    loads = []
    real_load = Source.load

    def spy(self, split="train", classes=None):
        loads.append((split, None if classes is None else sorted(classes)))
        return real_load(self, split, classes)

    monkeypatch.setattr(Source, "load", spy)
    cli("pack", *DIGITS, "--label-sample", "7", "-o", tmp_path / "x.d3", "--work-dir", tmp_path / "w")
    train = [classes for split, classes in loads if split == "train"]
    assert train == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # the soft-label expert saw the first 7 images of each class, nothing more
    [manifest] = [json.loads(p.read_text()) for p in tmp_path.glob("w/experts/*/manifest.json")
                  if "first7" in json.loads(p.read_text())["data_id"]]
    assert manifest["classes"] == list(range(10))


def test_subtask_option_errors(tmp_path):
    msg = cli_error("pack", *DIGITS, "--subtask", 3, "-o", tmp_path / "x.d3", "--work-dir", tmp_path / "w",
                    error=ConfigError)
    assert "--subtask must be in 0..2" in msg
    msg = cli_error("pack", *DIGITS, "--label-sample", 0, "-o", tmp_path / "x.d3", "--work-dir", tmp_path / "w",
                    error=ConfigError)
    assert "--label-sample" in msg


def test_assignment_and_seeds_do_not_depend_on_the_process():
    assert assign(5, 2) == [[0, 2, 4], [1, 3]]
    assert assign(2, 3) == [[0], [1], []]
    assert derive_seed(0, "distill", 1) == 3215463512583358703  # pinned: a change here changes every file
    assert len({derive_seed(0, "distill", i) for i in range(100)} | {derive_seed(1, "distill", 0)}) == 101
