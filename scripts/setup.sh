#!/usr/bin/env bash
# Set up napari-lasc for development and tests in ./.venv, on a Debian machine without a GPU.
#
#   bash scripts/setup.sh            # Debian packages (if missing), .venv, CPU torch, .[testing]
#
# CPU torch is pinned first (torch==2.13.0, a CPU wheel on the machines this project runs on;
# override with LASC_TORCH_SPEC="torch==X.Y.Z"), because an unpinned torch pulls a
# multi-GB CUDA build. On a GPU machine skip this script: install the CUDA build of torch
# by PyTorch's usual route, then `pip install -e ".[napari]"` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${LASC_TORCH_SPEC:-torch==2.13.0}

# What napari needs to draw under Xvfb (the GUI tests run there through pytest-xvfb).
DEBIAN_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0
                 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libfontconfig1 libdbus-1-3)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
echo "setup: installing napari-lasc (editable) with its test tools"
.venv/bin/python -m pip install -q -e ".[testing]"
echo "setup: done; the environment is .venv"
