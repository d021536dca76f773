#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (tools/Sudo.Fuzz) with libFuzzer and SharpFuzz:
# publishes the harness, instruments Sudo's assemblies and Apache.Arrow with SharpFuzz's IL instrumentation, builds the
# libFuzzer front end (tools/Sudo.Fuzz/driver), seeds each target's corpus from ../shared (golden files, fixtures), runs
# each target for the given time and appends one line per run to artifacts/fuzz/results.tsv (executions, coverage
# counters, corpus size, crashes). Crashing inputs land in artifacts/fuzz/crashes/TARGET/; fix each and copy it to
# tests/fuzz-regressions/TARGET/ (the test suite replays that folder).
# Usage: scripts/fuzz.sh [--minutes N] [--threads N] TARGET... | all      (default 30 minutes per target)
# Needs clang-14 + libclang-rt-14-dev (installed when missing, as root) and the SharpFuzz.CommandLine dotnet tool
# (installed when missing). Not part of CI: the suite runs short seeded rounds of the same targets in-process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$(cd "${SUDO_SHARED:-$root/../shared}" 2>/dev/null && pwd || true)"
minutes=30
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option '$1' (expected --minutes N)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: name a target or 'all' (scripts/fuzz.sh --help)" >&2; exit 2; }
[ -n "$shared" ] && [ -d "$shared/golden" ] || { echo "fuzz: ../shared not found (set SUDO_SHARED): the seed corpora come from it" >&2; exit 1; }
out="$root/artifacts/fuzz"
mkdir -p "$out"

clangxx=$(command -v clang++-14 || command -v clang++ || true)
if [ -z "$clangxx" ] || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz: installing clang-14 and libclang-rt-14-dev (libFuzzer)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null
  clangxx=$(command -v clang++-14)
fi
export PATH="$PATH:$HOME/.dotnet/tools"
if ! command -v sharpfuzz >/dev/null; then
  echo "fuzz: installing the SharpFuzz.CommandLine dotnet tool" >&2
  dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0 >/dev/null
fi

echo "fuzz: publishing and instrumenting the harness" >&2
app="$out/app.$$"   # one instrumented copy per invocation: two invocations may run side by side
trap 'rm -rf "$app" "$out/libfuzzer-dotnet.$$"' EXIT
dotnet publish "$root/tools/Sudo.Fuzz/Sudo.Fuzz.csproj" -c Release -o "$app" -nologo -v quiet -clp:ErrorsOnly
cp "$root/artifacts/native/build/libsudo_native.so" "$app/" 2>/dev/null || true
[ "${targets[0]}" = all ] && mapfile -t targets < <("$app/Sudo.Fuzz" list | awk '{print $1}')
# Seeds first, with the harness not yet instrumented: instrumented code writes coverage into libFuzzer's shared memory
# and faults outside the driver (the jpeg seeds read a parquet shard through Sudo.Data).
for t in "${targets[@]}"; do
  "$app/Sudo.Fuzz" seeds "$t" "$out/seeds/$t" --shared "$shared" >&2
done
for dll in Sudo.Torch Sudo.Data Sudo.Models Sudo.Diffusion Apache.Arrow; do
  sharpfuzz "$app/$dll.dll" >/dev/null
done
driver="$out/libfuzzer-dotnet.$$"
"$clangxx" -O1 -g -fsanitize=fuzzer "$root/tools/Sudo.Fuzz/driver/libfuzzer_dotnet.cc" -o "$driver"

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
[ -f "$out/results.tsv" ] || printf 'date\ttarget\tseconds\texecutions\texec_per_s\tcoverage\tfeatures\tcorpus\tcrashes\tcpu\n' >"$out/results.tsv"
status=0
for t in "${targets[@]}"; do
  corpus="$out/corpus/$t"; crashes="$out/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  echo "fuzz: $t for $minutes min" >&2
  start=$(date +%s)
  set +e
  SUDO_FUZZ_EXE="$app/Sudo.Fuzz" SUDO_FUZZ_TARGET="$t" SUDO_SHARED="$shared" DOTNET_GCHeapHardLimit=0x80000000 \
    "$driver" -max_total_time=$((minutes * 60)) -max_len=1048576 -timeout=30 -rss_limit_mb=0 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "$out/seeds/$t" >"$out/$t.log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$out/$t.log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  ncrash=$(find "$crashes" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "${execs:-?}" \
    "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$ncrash" "$cpu" >>"$out/results.tsv"
  echo "fuzz: $t: exit $rc, $secs s, ${execs:-?} executions, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, $ncrash crash file(s)" >&2
  [ "$ncrash" -eq 0 ] || status=1
done
column -t -s $'\t' "$out/results.tsv" | tail -n $(( ${#targets[@]} + 1 )) >&2
exit $status
