#!/usr/bin/env bash
# Builds core/native (the libtorch shim) with CMake into artifacts/native/<flavour>, once at a time
# (flock: dotnet builds projects in parallel). Usage: build-native.sh [output-dir]
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
if [ ! -f "$build/CMakeCache.txt" ] || [ "$root/core/native/CMakeLists.txt" -nt "$build/CMakeCache.txt" ]; then
  cmake -S "$root/core/native" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build/cmake-configure.log" 2>&1 || {
    cat "$build/cmake-configure.log" >&2
    echo "build-native: CMake configure failed (is libtorch-dev installed? run scripts/setup.sh; for a custom libtorch set LIBTORCH)" >&2
    exit 1
  }
fi
cmake --build "$build" -j "$(nproc)" 2>&1 | grep -vE "^\[ *[0-9]+%\]|^-- |Consolidate compiler generated dependencies|Built target" || true
test "${PIPESTATUS[0]}" -eq 0
if [ ! -f "$build/libsudo_native.so" ]; then
  echo "build-native: libsudo_native.so was not produced" >&2
  exit 1
fi
