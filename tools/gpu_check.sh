#!/usr/bin/env bash
# GPU check: CUDA-only tests, D3Stream decode vs ResNet-18 training images/s, distiller
# iterations/s of the `standard` preset, a short Fashion-MNIST budget-10 pack + evaluation;
# writes benchmarks/gpu.json + benchmarks/gpu.md (see tools/gpu_check.py for the steps).
#
#   bash tools/gpu_check.sh                      # a CUDA machine: about 6-8 minutes
#   bash tools/gpu_check.sh --smoke --out DIR    # CPU, tiny sizes, ~1 minute (tests/test_gpu_check.py)
#   bash tools/gpu_check.sh --fmnist DIR         # Fashion-MNIST .gz files elsewhere
#
# Needs no network: it installs and downloads nothing. It runs in the repository root with
# the environment's python (torch, numpy, safetensors, click, scikit-learn installed, as
# for the test suite); d3fmt is taken from this working tree through PYTHONPATH, so no
# `pip install -e .` is needed. PYTHON=... picks another interpreter.
#
# On the device machine (the `run` tool copies the working tree but not ignored files),
# the lead first copies Fashion-MNIST (~30 MB) into the ignored data/ folder here, then
# carries it and gets the report back under $OUT:
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   run(command="bash tools/gpu_check.sh --out $OUT", carry=["data/fashion-mnist"], timeout_s=540)
# and commits the gpu.json + gpu.md that come back as benchmarks/gpu.{json,md}. The report
# is rewritten after every step, so a run cut short still returns what it measured; the
# exit status is 1 when a step failed (its error is in the report).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
