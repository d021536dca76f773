#!/usr/bin/env bash
# Proves the native shim and the Torch and Models test suites against libtorch 2.x without touching the
# host: Debian trixie's userland (libtorch-dev 2.6) is debootstrapped into a cached folder, this working
# tree (tracked and untracked files, no build outputs) is copied in, the host's .NET SDK, NuGet cache and
# ../shared are bind-mounted read-only, and the shim is built and the suites run there with CMake finding
# trixie's libtorch. Not part of CI (the first run downloads ~600 MB and takes ~15 minutes; later runs
# reuse the userland and take ~5).
#
# Usage (root: debootstrap, chroot and bind mounts need it):
#   sudo scripts/check-libtorch2.sh [--filter EXPR] [--suites "Sudo.Torch.Tests Sudo.Models.Tests"]
# Environment: SUDO_TRIXIE_ROOT (the userland; default ~/.cache/sudo/trixie-libtorch2), SUDO_SHARED
# (default ../shared), DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Prints the libtorch version, the result of a libtorch-only kernel probe (scripts/libtorch-probe: is oneDNN's
# convolution backward finite here?) and each suite's result; exits non-zero when a build or a test fails. The full log is kept at $SUDO_TRIXIE_ROOT/sudo-check.log.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chroot_dir="${SUDO_TRIXIE_ROOT:-$HOME/.cache/sudo/trixie-libtorch2}"
shared="$(cd "${SUDO_SHARED:-$repo/../shared}" 2>/dev/null && pwd || true)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suites="Sudo.Torch.Tests Sudo.Models.Tests"
filter=""
while [ $# -gt 0 ]; do
  case "$1" in
    --filter) filter="$2"; shift 2 ;;
    --suites) suites="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "check-libtorch2: unknown argument '$1' (expected --filter EXPR or --suites LIST)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "check-libtorch2: needs root (debootstrap, chroot, mount); run with sudo" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "check-libtorch2: debootstrap not found; install it: apt-get install debootstrap" >&2; exit 1; }
[ -n "$shared" ] && [ -d "$shared/golden" ] || { echo "check-libtorch2: ../shared not found (set SUDO_SHARED); the Models suite reads its goldens" >&2; exit 1; }
dotnet_root="$(dirname "$(readlink -f "$(command -v dotnet)")")"

# 1. The userland, once: minbase trixie plus libtorch-dev 2.6, the build tools, the shim's other
#    dependencies and the .NET runtime's (ICU, OpenSSL).
if [ ! -f "$chroot_dir/.sudo-ready" ]; then
  mkdir -p "$chroot_dir"
  if [ ! -x "$chroot_dir/usr/bin/apt-get" ]; then
    echo "check-libtorch2: debootstrap trixie into $chroot_dir ..." >&2
    debootstrap --variant=minbase trixie "$chroot_dir" "$mirror" >"$chroot_dir.debootstrap.log" 2>&1 ||
      { tail -20 "$chroot_dir.debootstrap.log" >&2; exit 1; }
  fi
  cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
  echo "check-libtorch2: installing libtorch-dev (trixie) and the build tools ..." >&2
  chroot "$chroot_dir" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libtorch-dev libgloo-dev libopenblas0-pthread cmake g++ make ccache libturbojpeg0 libspng0 fonts-dejavu-core \
      libicu76 libssl3t64 ca-certificates git' >"$chroot_dir.apt.log" 2>&1 ||
    { tail -30 "$chroot_dir.apt.log" >&2; exit 1; }
  touch "$chroot_dir/.sudo-ready"
fi

# 2. Mounts, undone on exit whatever happens.
mounts=()
cleanup() { for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi; }
mount -t proc proc "$chroot_dir/proc"; mounts+=("$chroot_dir/proc")
bind /dev "$chroot_dir/dev"
bind "$dotnet_root" "$chroot_dir/opt/dotnet" ro
bind "$shared" "$chroot_dir/shared" ro
mkdir -p "$HOME/.nuget/packages"
bind "$HOME/.nuget/packages" "$chroot_dir/root/.nuget/packages"
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"

# 3. This working tree, without build outputs (a fresh build against trixie's libtorch).
work="$chroot_dir/work/sudo"
rm -rf "$work"; mkdir -p "$work"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$work"

# 4. Build and test inside.
log="$chroot_dir/sudo-check.log"
filter_arg=""; [ -n "$filter" ] && filter_arg="--filter '$filter'"
set +e
chroot "$chroot_dir" /usr/bin/env -i HOME=/root PATH=/opt/dotnet:/usr/sbin:/usr/bin:/sbin:/bin DOTNET_ROOT=/opt/dotnet \
  DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 SUDO_SHARED=/shared CI=true \
  /bin/bash -c "set -euo pipefail; cd /work/sudo
    echo \"libtorch-dev: \$(dpkg-query -W -f='\${Version}' libtorch-dev)\"
    bash scripts/build-native.sh
    grep -E 'sudo_native:' artifacts/native/build/cmake-configure.log 2>/dev/null || true
    # A libtorch-only probe first: a oneDNN build whose convolution backward is wrong would fail Sudo's gradient
    # tests for a reason that is not Sudo's; there the suites run with oneDNN off (SUDO_MKLDNN=0) and say so.
    cmake -S scripts/libtorch-probe -B artifacts/libtorch-probe -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build artifacts/libtorch-probe >/dev/null
    probe=0; artifacts/libtorch-probe/onednn_conv_backward \$(nproc) 600 || probe=\$?
    if [ \$probe -eq 3 ]; then
      export SUDO_MKLDNN=0
      echo 'this libtorch: oneDNN convolution backward gives non-finite gradients; the suites run with SUDO_MKLDNN=0'
    elif [ \$probe -ne 0 ]; then echo 'this libtorch: convolution backward is non-finite with and without oneDNN'; fi
    dotnet build Sudo.sln -c Release -nologo -v quiet -clp:ErrorsOnly -p:NuGetAudit=false
    rc=0
    for s in $suites; do
      echo \"== \$s\"
      dotnet test tests/\$s -c Release --no-build -nologo $filter_arg --logger 'console;verbosity=minimal' >/tmp/\$s.out 2>&1 || rc=1
      grep -E -A4 '^  Failed |^(Passed|Failed)!' /tmp/\$s.out || tail -20 /tmp/\$s.out
    done
    exit \$rc" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "check-libtorch2: exit $rc (log: $log)" >&2
exit "$rc"
