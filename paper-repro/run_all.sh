#!/usr/bin/env bash
# Regenerates every toy table: the shared study runs once (cached in runs/paper-repro), then each paper's table.
set -euo pipefail
cd "$(dirname "$0")/.."
./sudoml info > /dev/null            # installs what is missing and builds (Release) once
start=$(date +%s)
for paper in diffusion-dpo sudo spo; do dotnet fsi "paper-repro/$paper/run.fsx"; done
echo "paper-repro: all tables in $(( $(date +%s) - start )) s"
