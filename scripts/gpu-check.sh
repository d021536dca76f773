#!/usr/bin/env bash
# The GPU acceptance run, as one command on a machine with a GPU, a pip PyTorch (CMake, a C++ compiler and nvcc
# for its headers), no .NET SDK and no network. Needs artifacts/gpu-pack from scripts/gpu-pack.sh.
#   1. unpacks the .NET runtime, the published CLI and the golden subset into a scratch folder;
#   2. builds the native shim against the installed PyTorch's libtorch (LIBTORCH_USE_PYTORCH=1; the system's
#      libtorch-dev where no PyTorch imports) and puts it next to the CLI;
#   3. sudoml info, then sudoml selftest on the device: engine contracts, golden parity fp32/bf16, DPO/SUDO/SPO steps
#      on the tiny pipelines (fp32/bf16/fp16, checkpointing on/off, full and LoRA), full-size SD1.5 (512 px, 1 and 4
#      pairs, bf16, checkpointing on/off) and SDXL (1024 px, LoRA, offload) steps;
#   4. the same full-size steps in PyTorch + diffusers (bench/reference/gpu_ref.py) on the same GPU, and a side-by-side
#      table of seconds per step and peak memory.
# Results go to $OUT (at most 8 files): summary.txt, selftest.txt, selftest.json, info.txt, build.log, reference.json,
# reference.log. Usage: bash scripts/gpu-check.sh [--device cuda:0] [--quick]
#   --device cpu --quick is the dry run on a machine without a GPU: tiny pipelines, fp32, no full-size steps.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device=cuda:0
quick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    *) echo "gpu-check: unknown argument '$1' (expected --device D or --quick)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$root/artifacts/gpu-check-out}"
mkdir -p "$OUT"
pack="$root/artifacts/gpu-pack"
[ -f "$pack/dotnet.tar.xz" ] && [ -f "$pack/app.tar.xz" ] && [ -f "$pack/golden.tar.xz" ] ||
  { echo "gpu-check: $pack is incomplete: run scripts/gpu-pack.sh where the .NET SDK is" | tee "$OUT/summary.txt" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }

say "unpacking"
mkdir -p "$work/dotnet" "$work/app"
tar -xJf "$pack/dotnet.tar.xz" -C "$work/dotnet"
tar -xJf "$pack/app.tar.xz" -C "$work/app"
tar -xJf "$pack/golden.tar.xz" -C "$work"
export DOTNET_ROOT="$work/dotnet" DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
# No ICU on a bare machine is fine: the CLI needs no culture data.
ldconfig -p 2>/dev/null | grep -q libicuuc || export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
dn="$work/dotnet/dotnet"

say "building the native shim"
if python3 -c 'import torch' 2>/dev/null; then export LIBTORCH_USE_PYTORCH=1; fi
# A CUDA PyTorch's TorchConfig finds CUDA through nvcc: put the toolkit on PATH when it is installed but not there.
if ! command -v nvcc >/dev/null; then
  for c in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$c/nvcc" ] && { export PATH="$c:$PATH"; break; }; done
fi
if ! bash "$root/scripts/build-native.sh" >"$OUT/build.log" 2>&1; then
  say "native build failed (build.log)"
  { echo "gpu-check: the native shim did not build against $(bash "$root/scripts/libtorch-choice.sh" 2>&1)"; tail -30 "$OUT/build.log"; } >"$OUT/summary.txt"
  exit 1
fi
cat "$root/artifacts/native/build/cmake-configure.log" >>"$OUT/build.log" 2>/dev/null
cp "$root/artifacts/native/build/libsudo_native.so" "$work/app/"
say "shim built ($(bash "$root/scripts/libtorch-choice.sh"))"

"$dn" "$work/app/sudoml.dll" info >"$OUT/info.txt" 2>&1
cat "$OUT/info.txt" >&2

say "selftest on $device ${quick[*]}"
"$dn" "$work/app/sudoml.dll" selftest --device "$device" "${quick[@]}" --golden "$work/golden" --work "$work/selftest" \
  --out "$OUT/selftest.json" 2>&1 | tee "$OUT/selftest.txt"
selftest_rc=${PIPESTATUS[0]}
say "selftest exit $selftest_rc"

ref_rc=0
if [ ${#quick[@]} -eq 0 ] && [ -f "$pack/ref.tar.xz" ] && python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
  say "PyTorch + diffusers reference"
  mkdir -p "$work/ref"
  tar -xJf "$pack/ref.tar.xz" -C "$work/ref"
  PYTHONPATH="$work/ref${PYTHONPATH:+:$PYTHONPATH}" timeout 300 python3 "$root/bench/reference/gpu_ref.py" --keys "$work/golden/keys" \
    --device "$device" --out "$OUT/reference.json" >"$OUT/reference.log" 2>&1
  ref_rc=$?
  tail -5 "$OUT/reference.log" >&2
else
  echo "skipped: needs CUDA, PyTorch + transformers, artifacts/gpu-pack/ref.tar.xz and no --quick" >"$OUT/reference.log"
fi

python3 "$root/bench/reference/side_by_side.py" "$OUT/selftest.json" "$OUT/reference.json" "$OUT/info.txt" >"$OUT/summary.txt" 2>&1 ||
  { echo "selftest exit $selftest_rc (side-by-side table unavailable: python3)"; tail -3 "$OUT/selftest.txt"; } >"$OUT/summary.txt"
cat "$OUT/summary.txt"
say "done: selftest exit $selftest_rc, reference exit $ref_rc"
[ "$selftest_rc" -eq 0 ]
