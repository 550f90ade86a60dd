#!/usr/bin/env bash
# The README's demo: install d3fmt, distil scikit-learn's bundled digits into a .d3 file
# at a budget of 10 images per class, then show what the file holds and how it scores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[torch]"
d3 pack digits -o digits.d3 --budget 10 "$@"
d3 inspect digits.d3
d3 sample digits.d3 -o digits-samples.png
echo "samples drawn from digits.d3: digits-samples.png"
