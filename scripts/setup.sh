#!/usr/bin/env bash
# Installs the system packages Sudo needs, only when missing: libtorch-dev (libtorch 1.13 CPU), libgloo-dev (the
# Gloo headers c10d's ProcessGroupGloo needs for distributed training), the
# pthread OpenBLAS (Debian's reference BLAS is ~45x slower), cmake, g++, ccache, and the image codecs
# (libturbojpeg0, libspng0), the DejaVu fonts report figures are captioned with (fonts-dejavu-core), and strace (a
# test watches the fsync calls of atomic writes with it). Idempotent and quiet when everything is there. As non-root it prints the
# exact command instead of running it. With LIBTORCH=<dir> or LIBTORCH_USE_PYTORCH=1 (scripts/libtorch-choice.sh)
# the system libtorch is not needed; on a machine without dpkg (not Debian/Ubuntu) it checks for the tools and
# libraries by name and says what is missing instead of installing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v dotnet >/dev/null; then
  echo "setup: the .NET SDK (dotnet, net10.0) is not on PATH; install it first" >&2
  exit 1
fi
pkgs=(libopenblas0-pthread cmake g++ ccache libturbojpeg0 libspng0 fonts-dejavu-core strace)
choice="$(bash "$root/scripts/libtorch-choice.sh")"
read -r kind _ _ <<<"$choice"
[ "$kind" = system ] && pkgs=(libtorch-dev libgloo-dev "${pkgs[@]}")
if ! command -v dpkg-query >/dev/null; then
  missing=()
  for c in cmake g++; do command -v "$c" >/dev/null || missing+=("$c"); done
  for l in libturbojpeg.so.0 libspng.so.0; do ldconfig -p 2>/dev/null | grep -q "$l" || missing+=("$l"); done
  [ "$kind" = system ] && missing+=("a libtorch: set LIBTORCH=<dir> or LIBTORCH_USE_PYTORCH=1 (no dpkg here to find libtorch-dev)")
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'setup: missing: %s\n' "${missing[@]}" >&2
    exit 1
  fi
  exit 0
fi

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${pkgs[@]}"; do
  have_pkg "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${need[*]}" >&2
    echo "setup: run as root:  sudo sh -c '$cmd'" >&2
    exit 1
  fi
  start=$(date +%s)
  echo "setup: installing ${need[*]} (one time)..." >&2
  sh -c "$cmd" >/tmp/sudo-setup-apt.log 2>&1 || { tail -20 /tmp/sudo-setup-apt.log >&2; echo "setup: apt-get failed (log: /tmp/sudo-setup-apt.log)" >&2; exit 1; }
  echo "setup: system packages installed in $(( $(date +%s) - start )) s" >&2
fi
# The pthread OpenBLAS must be the BLAS libtorch gets (Debian's alternatives pick the highest priority).
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case "$blas" in
  *openblas*) ;;
  *) echo "setup: warning: libblas.so.3 resolves to '$blas', not OpenBLAS; matmul will be very slow." \
          "Fix: update-alternatives --config libblas.so.3-x86_64-linux-gnu" >&2 ;;
esac
