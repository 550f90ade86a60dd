#!/usr/bin/env bash
# GPU check: CUDA-only tests, D3Stream decode vs ResNet-18 training images/s, distiller
# iterations/s of the `standard` preset, a short Fashion-MNIST budget-10 pack + evaluation;
# writes benchmarks/gpu.json + benchmarks/gpu.md (see tools/gpu_check.py for the steps).
#
#   bash tools/gpu_check.sh                      # a CUDA machine: about 6-8 minutes
#   bash tools/gpu_check.sh --smoke --out DIR    # CPU, tiny sizes, ~1 minute (tests/test_gpu_check.py)
#   bash tools/gpu_check.sh --fmnist DIR         # Fashion-MNIST .gz files elsewhere
#
# Needs no network: it installs and downloads nothing. Run it from anywhere; it works in
# the repository root with the environment's python (torch installed; d3fmt either
# installed or, as here, taken from the working tree through PYTHONPATH).
#
# On the device machine (the `run` tool copies the working tree, not ignored files), the
# lead copies Fashion-MNIST into the ignored data/ folder first and carries it:
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   run(command="bash tools/gpu_check.sh", carry=["data/fashion-mnist"], timeout_s=600)
# then commits the benchmarks/gpu.{json,md} that come back under $OUT:
#   run(command="bash tools/gpu_check.sh --out $OUT", carry=["data/fashion-mnist"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
