#!/usr/bin/env bash
# Installs the project and everything it needs on a fresh CPU (or CUDA) machine.
# torch comes first and pinned, so that no later requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m pip install --quiet "torch==2.13.0"
$PY -m pip install --quiet -r requirements.txt
# davisinteractive 1.0.4 pins a scikit-learn that no longer builds; its real dependencies are in
# requirements.txt and util/davis_compat.py adapts it to today's NumPy/networkx/pandas.
$PY -m pip install --quiet --no-deps --no-build-isolation "davisinteractive==1.0.4"
$PY -m pip install --quiet --no-deps --no-build-isolation -e .
