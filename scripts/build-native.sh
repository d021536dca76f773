#!/usr/bin/env bash
# Builds core/native (the libtorch shim) with CMake into artifacts/native/build, once at a time (flock: dotnet
# builds projects in parallel), against the libtorch scripts/libtorch-choice.sh names (LIBTORCH=<dir>,
# LIBTORCH_USE_PYTORCH=1, or the system's). A different choice than the last build's reconfigures and rebuilds
# from scratch; otherwise CMake's incremental build (a no-op when nothing changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/artifacts/native/build"
mkdir -p "$build"
exec 9>"$build/.lock"
flock 9
if ! command -v cmake >/dev/null; then
  echo "build-native: cmake not found; run scripts/setup.sh" >&2
  exit 1
fi
choice="$(bash "$root/scripts/libtorch-choice.sh")"
read -r kind prefix abi <<<"$choice"
if [ "$(cat "$build/.libtorch" 2>/dev/null)" != "$choice" ]; then
  [ -f "$build/.libtorch" ] && echo "build-native: libtorch changed ($(cat "$build/.libtorch") -> $choice): rebuilding the shim" >&2
  find "$build" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
fi
if [ ! -f "$build/CMakeCache.txt" ] || [ "$root/core/native/CMakeLists.txt" -nt "$build/CMakeCache.txt" ]; then
  args=(-DCMAKE_BUILD_TYPE=Release)
  [ "$kind" != system ] && args+=("-DCMAKE_PREFIX_PATH=$prefix")
  [ "$abi" != - ] && args+=("-DCMAKE_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=$abi")
  LIBTORCH="" cmake -S "$root/core/native" -B "$build" "${args[@]}" >"$build/cmake-configure.log" 2>&1 || {
    cat "$build/cmake-configure.log" >&2
    echo "build-native: CMake configure failed against libtorch '$choice' (system: is libtorch-dev installed? run scripts/setup.sh; otherwise set LIBTORCH=<dir> or LIBTORCH_USE_PYTORCH=1)" >&2
    exit 1
  }
  echo "$choice" >"$build/.libtorch"
fi
cmake --build "$build" -j "$(nproc)" 2>&1 | grep -vE "^\[ *[0-9]+%\]|^-- |Consolidate compiler generated dependencies|Built target" || true
test "${PIPESTATUS[0]}" -eq 0
if [ ! -f "$build/libsudo_native.so" ]; then
  echo "build-native: libsudo_native.so was not produced" >&2
  exit 1
fi
