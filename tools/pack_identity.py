"""Do two checkouts of d3fmt pack the same files? (refactors must not change behaviour)

    git worktree add /tmp/old <commit>
    python tools/pack_identity.py /tmp/old . --out /tmp/identity

Runs eight latent packs of scikit-learn's digits with each checkout's own CLI (short
training, no evaluation): budget 2, --max-bytes, --subtasks 2, --soft-labels, the two
parts of a federated job and their merge, and --teacher-width auto. SOURCE_DATE_EPOCH pins
the creation time, so where both checkouts know it, equal files are equal bytes (`cmp`).
Then, file by file: are the bytes equal, are all tensors equal, and which header fields
differ (settings keys that only one checkout knows are listed, not counted as a change).
Exit status 1 when a tensor or a header field other than those differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SHORT = ["--iterations", "2", "--experts", "1", "--expert-epochs", "2", "--match-epochs", "1",
         "--pretrain-steps", "5", "--no-eval", "--device", "cpu"]
PACKS = {
    "b2": ["--budget", "2"],
    "mb": ["--max-bytes", "20000"],
    "s2": ["--budget", "10", "--subtasks", "2"],
    "soft": ["--budget", "10", "--soft-labels"],
    "p0": ["--budget", "10", "--subtasks", "2", "--subtask", "0"],
    "p1": ["--budget", "10", "--subtasks", "2", "--subtask", "1"],
    "teach": ["--budget", "10", "--teacher-width", "auto"],
}
# derived from the header's own length, so they move with any settings key that is added
SIZE_FIELDS = ("bytes_used", "ipc_equivalent_fp32", "ipc_equivalent_uint8", "estimated_bytes")


def run_cli(tree: Path, args: list[str], log, cwd: Path) -> None:
    """``d3 ARGS`` with ``tree``'s d3fmt, run from ``cwd`` (python -c puts the working
    directory first on sys.path: run from a checkout, it would import that one)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "SOURCE_DATE_EPOCH": "1765000000", "OMP_NUM_THREADS": "1"}
    code = f"import d3fmt, sys; assert d3fmt.__file__.startswith({str(tree) + '/'!r}), d3fmt.__file__; " \
           "from d3fmt.cli import main; main()"
    cmd = [sys.executable, "-c", code, *args]
    if subprocess.run(cmd, env=env, stdout=log, stderr=log, cwd=cwd).returncode != 0:
        raise SystemExit(f"{tree}: d3 {' '.join(args)} failed; see the log in --out")


def pack_all(tree: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        for name, extra in PACKS.items():
            run_cli(tree, ["pack", "digits", "-o", str(out / f"{name}.d3"), *extra, *SHORT,
                           "--work-dir", str(out / "work")], log, out)
        run_cli(tree, ["merge", str(out / "p0.d3"), str(out / "p1.d3"), "-o", str(out / "merged.d3"), "--no-eval",
                       "--work-dir", str(out / "work")], log, out)


def differences(a: dict, b: dict, path: str = "") -> list[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k, "<absent>"), b.get(k, "<absent>"),
                                                                         f"{path}/{k}")]
    return [] if a == b else [(path, a, b)]


def compare(old: Path, new: Path, name: str) -> bool:
    from d3fmt.format import read_d3

    a, b = read_d3(old / f"{name}.d3"), read_d3(new / f"{name}.d3")
    same_bytes = (old / f"{name}.d3").read_bytes() == (new / f"{name}.d3").read_bytes()
    tensors = a.tensors.keys() == b.tensors.keys() and all(np.array_equal(a.tensors[k], b.tensors[k])
                                                           for k in a.tensors)
    changed, added = [], []
    for path, x, y in differences(a.header, b.header):
        leaf = path.rsplit("/", 1)[-1]
        if path.startswith("/sections") or leaf in SIZE_FIELDS or path == "/provenance/created":
            continue  # layout, sizes and the clock (pinned only where both checkouts read SOURCE_DATE_EPOCH)
        (added if path.startswith("/provenance/settings/") and "<absent>" in (x, y) else changed).append(path)
    print(f"{name:7s} bytes equal: {same_bytes}; tensors equal: {tensors}; header fields changed: "
          f"{changed or 'none'}; settings keys in one only: {added or 'none'}")
    return tensors and not changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="the checkout before (its d3fmt/ is imported)")
    p.add_argument("new", type=Path, help="the checkout after")
    p.add_argument("--out", type=Path, default=Path("/tmp/d3-identity"))
    args = p.parse_args(argv)
    for label, tree in (("old", args.old), ("new", args.new)):
        pack_all(tree.resolve(), (args.out / label).resolve())
    ok = [compare(args.out / "old", args.out / "new", name) for name in [*PACKS, "merged"]]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
