#!/usr/bin/env bash
# Which libtorch the native shim builds against, printed as one line "<kind> <prefix> <cxx11-abi>":
#   LIBTORCH=<dir>          a libtorch folder (the official zip, a conda/pip install's torch folder, a CUDA build)
#   LIBTORCH_USE_PYTORCH=1  the libtorch inside the PyTorch that `${PYTHON:-python3} -c 'import torch'` finds
#                           (as tch-rs does), with its _GLIBCXX_USE_CXX11_ABI flag
#   neither                 the system's (Debian/Ubuntu libtorch-dev; scripts/setup.sh installs it)
# The ABI is "-" where CMake's TorchConfig decides it. Exits non-zero with a clear message when the choice is unusable.
set -euo pipefail
if [ -n "${LIBTORCH:-}" ]; then
  if [ ! -d "$LIBTORCH" ]; then echo "libtorch: LIBTORCH=$LIBTORCH is not a folder (expected a libtorch with share/cmake/Torch)" >&2; exit 1; fi
  dir="$(cd "$LIBTORCH" && pwd)"
  if ! compgen -G "$dir/share/cmake/Torch/TorchConfig.cmake" >/dev/null && ! compgen -G "$dir/lib*/cmake/Torch/TorchConfig.cmake" >/dev/null && ! compgen -G "$dir/lib/*/cmake/Torch/TorchConfig.cmake" >/dev/null; then
    echo "libtorch: LIBTORCH=$dir has no share/cmake/Torch/TorchConfig.cmake: point it at the libtorch folder (the zip's libtorch/, or python -c 'import torch,os; print(os.path.dirname(torch.__file__))')" >&2
    exit 1
  fi
  echo "dir $dir -"
elif [ "${LIBTORCH_USE_PYTORCH:-}" = 1 ]; then
  py="${PYTHON:-python3}"
  out="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>&1)" || {
    echo "libtorch: LIBTORCH_USE_PYTORCH=1 but \`$py -c 'import torch'\` failed:" >&2; echo "$out" | tail -3 >&2; exit 1; }
  dir="$(echo "$out" | tail -2 | head -1)"
  abi="$(echo "$out" | tail -1)"
  if [ ! -f "$dir/share/cmake/Torch/TorchConfig.cmake" ]; then
    echo "libtorch: the PyTorch at $dir has no share/cmake/Torch (a distribution's python3-torch splits it out): install its libtorch-dev and unset LIBTORCH_USE_PYTORCH, or set LIBTORCH" >&2
    exit 1
  fi
  echo "pytorch $dir $abi"
else
  echo "system - -"
fi
