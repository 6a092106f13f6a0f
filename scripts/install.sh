#!/usr/bin/env bash
# Installs the project and everything it needs on a fresh CPU (or CUDA) machine.
# torch comes first and pinned, so that no later requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m pip install --quiet "torch==2.13.0"
$PY -m pip install --quiet -r requirements.txt
# The annotation GUI (PySide6) needs a few system libraries even on Qt's offscreen platform
# (EGL/GL, xkbcommon, fontconfig, D-Bus, GLib) and a font. Missing ones are installed with
# apt-get when running as root on Debian/Ubuntu; otherwise, or if that fails, only a message
# is printed and everything but the GUI works.
GUI_DEBS="libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 fonts-dejavu-core"
if command -v dpkg-query >/dev/null 2>&1; then
  missing=""
  for deb in $GUI_DEBS; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing="$missing $deb"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
          --no-install-recommends $missing; } >/dev/null 2>&1 \
        || echo "install.sh: could not install${missing}; the annotation GUI may not start"
    else
      echo "install.sh: the annotation GUI needs these system packages:${missing}"
    fi
  fi
fi
# davisinteractive 1.0.4 pins a scikit-learn that no longer builds; its real dependencies are in
# requirements.txt and util/davis_compat.py adapts it to today's NumPy/networkx/pandas.
$PY -m pip install --quiet --no-deps --no-build-isolation "davisinteractive==1.0.4"
$PY -m pip install --quiet --no-deps --no-build-isolation -e .
# The memory read's native top-k kernel (model/native.py) is compiled once per machine with the
# system C++ compiler; build it now so that the first run does not. Without a compiler the
# PyTorch path is used (same results, slower read).
$PY -c "import warnings; warnings.simplefilter('ignore'); from model import native; import sys; \
sys.exit(0 if native.topk_library() is not None else 3)" \
  || echo "install.sh: the native top-k kernel was not built (no C++ compiler?); the memory read uses its PyTorch path"
