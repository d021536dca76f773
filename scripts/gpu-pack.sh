#!/usr/bin/env bash
# Prepares everything the GPU acceptance run (scripts/gpu-check.sh) needs on a machine with no .NET SDK, no network
# and no ../shared, into artifacts/gpu-pack/ — to travel with the repository's tracked files (all of it ≤ 64 MiB):
#   dotnet.tar.xz   this machine's .NET runtime (the dotnet host + Microsoft.NETCore.App; the SDK stays here)
#   app.tar.xz      a framework-dependent publish of the CLI (`sudoml selftest` is the check), without the native
#                   libraries the self-test never loads (ParquetSharp's, SkiaSharp's) and without libsudo_native.so,
#                   which gpu-check.sh builds there against the machine's PyTorch; with this machine's libspng and
#                   libturbojpeg (the self-test writes its pair folders as PNG)
#   golden.tar.xz   the golden items the self-test reads (pipe_sd15, pipe_sdxl, unet_sd15, vae, clip_text, spm,
#                   keys/*_config.json for the full-size models)
#   ref.tar.xz      diffusers' and huggingface_hub's Python sources for the PyTorch side of the comparison
#                   (bench/reference/gpu_ref.py); given as bare git folders with --diffusers and --hub
# Usage: scripts/gpu-pack.sh [--diffusers GITDIR] [--hub GITDIR]   (defaults: /work/.mirror/huggingface+diffusers/repo and
#        /work/.mirror/huggingface+huggingface_hub/repo when present; without them the PyTorch comparison is skipped)
# Then, on the GPU machine, from the repository root: bash scripts/gpu-check.sh   (carry artifacts/gpu-pack along)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${SUDO_SHARED:-$root/../shared}"
diffusers="/work/.mirror/huggingface+diffusers/repo"
hub="/work/.mirror/huggingface+huggingface_hub/repo"
while [ $# -gt 0 ]; do
  case "$1" in
    --diffusers) diffusers="$2"; shift 2 ;;
    --hub) hub="$2"; shift 2 ;;
    *) echo "gpu-pack: unknown argument '$1' (expected --diffusers GITDIR or --hub GITDIR)" >&2; exit 2 ;;
  esac
done
[ -d "$shared/golden" ] || { echo "gpu-pack: $shared/golden not found (set SUDO_SHARED)" >&2; exit 1; }
out="$root/artifacts/gpu-pack"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$out.new"
mkdir -p "$out.new"

dotnet_root="$(dirname "$(readlink -f "$(command -v dotnet)")")"
runtime="$(ls -d "$dotnet_root"/shared/Microsoft.NETCore.App/10.* | sort -V | tail -1)"
echo "gpu-pack: runtime $(basename "$runtime") from $dotnet_root" >&2
tar -C "$dotnet_root" -cf - dotnet host "shared/Microsoft.NETCore.App/$(basename "$runtime")" | xz -9 -T0 >"$out.new/dotnet.tar.xz"

echo "gpu-pack: publishing the CLI (framework-dependent)" >&2
dotnet publish "$root/apps/Sudo.Cli/Sudo.Cli.fsproj" -c Release -r linux-x64 --no-self-contained -o "$tmp/app" -nologo -v quiet -clp:ErrorsOnly
rm -f "$tmp/app/ParquetSharpNative.so" "$tmp/app/libSkiaSharp.so" "$tmp/app/libHarfBuzzSharp.so" "$tmp/app/libsudo_native.so"
# The image codecs the self-test's pair folders are written with (Debian's libspng0 and libturbojpeg0; they need
# only libc, libm and zlib): a GPU machine's image rarely has them, and .NET finds them next to the CLI.
for lib in libspng.so.0 libturbojpeg.so.0; do
  f="$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')"
  [ -n "$f" ] || { echo "gpu-pack: $lib not found here (run scripts/setup.sh)" >&2; exit 1; }
  cp -L "$f" "$tmp/app/$lib"
done
tar -C "$tmp/app" -cf - . | xz -9 -T0 >"$out.new/app.tar.xz"

mkdir -p "$tmp/golden/keys"
for item in pipe_sd15 pipe_sdxl unet_sd15 vae clip_text spm; do cp -r "$shared/golden/$item" "$tmp/golden/"; done
cp "$shared"/golden/keys/*_config.json "$tmp/golden/keys/"
chmod -R u+w "$tmp/golden"
tar -C "$tmp" -cf - golden | xz -9 -T0 >"$out.new/golden.tar.xz"

if [ -d "$diffusers" ] && [ -d "$hub" ]; then
  mkdir -p "$tmp/ref"
  git -C "$diffusers" archive HEAD src/diffusers | tar -x -C "$tmp/ref"
  git -C "$hub" archive HEAD src/huggingface_hub | tar -x -C "$tmp/ref"
  # The pipelines are never imported by the reference step (diffusers' __init__ is lazy): 19 MB less.
  rm -rf "$tmp/ref/src/diffusers/pipelines" "$tmp/ref/src/diffusers/modular_pipelines"
  { echo "diffusers $(git -C "$diffusers" rev-parse HEAD)"; echo "huggingface_hub $(git -C "$hub" rev-parse HEAD)"; } >"$tmp/ref/src/VERSIONS"
  tar -C "$tmp/ref/src" -cf - . | xz -9 -T0 >"$out.new/ref.tar.xz"
else
  echo "gpu-pack: no diffusers/huggingface_hub git folders: the PyTorch comparison will be skipped" >&2
fi
rm -rf "$out"
mv "$out.new" "$out"
tracked=$(cd "$root" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
packed=$(du -cb "$out"/* | tail -1 | cut -f1)
total=$((tracked + packed))
ls -la "$out" >&2
echo "gpu-pack: $((packed / 1048576)) MiB packed + $((tracked / 1048576)) MiB tracked = $((total / 1048576)) MiB (limit 64 MiB)" >&2
[ "$total" -le $((64 * 1048576)) ] || { echo "gpu-pack: over the 64 MiB the GPU machine accepts" >&2; exit 1; }
