#!/usr/bin/env bash
# The README's test command: installs what is missing, builds (native shim included), runs every test
# project one after the other (printing each one's wall time), and ends with one plain line
# "N passed, N failed, N skipped" read from the test results. Extra arguments go to `dotnet test`, e.g.
#   bash scripts/test.sh --filter TestCategory=WorldMicroRuns     # the statistical micro runs alone
#   bash scripts/test.sh --filter TestCategory!=WorldMicroRuns    # everything else
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
results="$root/artifacts/test-results"
rm -rf "$results"
mkdir -p "$results"
t0=$(date +%s)
dotnet build Sudo.sln -c Release -nologo -v quiet -clp:ErrorsOnly
echo "build: $(( $(date +%s) - t0 )) s"
status=0
timings=()
for proj in tests/*/*.csproj; do
  name="$(basename "$proj" .csproj)"
  start=$(date +%s)
  set +e
  dotnet test "$proj" -c Release --no-build -nologo --logger "trx;LogFileName=$name.trx" --logger "console;verbosity=minimal" \
    --results-directory "$results" "$@"
  rc=$?
  set -e
  [ "$rc" -ne 0 ] && status=$rc
  timings+=("$name $(( $(date +%s) - start )) s")
done
echo "wall time per test project (whole run $(( $(date +%s) - t0 )) s, build included; $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)):"
for t in "${timings[@]}"; do echo "  $t"; done
passed=0; failed=0; skipped=0; total=0
for f in "$results"/*.trx; do
  [ -f "$f" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$f" | head -1)
  get() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  total=$((total + $(get total)))
  passed=$((passed + $(get passed)))
  failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
  # NUnit's ignored tests count in total but not in executed (the trx's notExecuted counter stays 0).
  skipped=$((skipped + $(get total) - $(get executed)))
done
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$total" -eq 0 ]; then
  echo "test.sh: no test ran" >&2
  exit 1
fi
if [ "$failed" -gt 0 ] || [ "$status" -ne 0 ]; then
  exit 1
fi
