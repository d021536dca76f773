#!/usr/bin/env bash
# The README's test command: installs what is missing, builds (native shim included), runs every test
# project, and ends with one plain line "N passed, N failed, N skipped" read from the test results.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
results="$root/artifacts/test-results"
rm -rf "$results"
mkdir -p "$results"
dotnet build Sudo.sln -c Release -nologo -v quiet -clp:ErrorsOnly
set +e
dotnet test Sudo.sln -c Release --no-build -nologo --logger "trx" --logger "console;verbosity=minimal" --results-directory "$results" "$@"
status=$?
set -e
passed=0; failed=0; skipped=0; total=0
for f in "$results"/*.trx; do
  [ -f "$f" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$f" | head -1)
  get() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  total=$((total + $(get total)))
  passed=$((passed + $(get passed)))
  failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
  skipped=$((skipped + $(get notExecuted)))
done
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$total" -eq 0 ]; then
  echo "test.sh: no test ran" >&2
  exit 1
fi
if [ "$failed" -gt 0 ] || [ "$status" -ne 0 ]; then
  exit 1
fi
