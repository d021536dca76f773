#!/usr/bin/env bash
# Regenerates every toy table: the shared study runs once (cached in runs/paper-repro), then each paper's table;
# population/ is its own study (the quickstart's, 3 seeds; cached in runs/paper-repro-population).
set -euo pipefail
cd "$(dirname "$0")/.."
./sudoml info > /dev/null            # installs what is missing and builds (Release) once
start=$(date +%s)
for paper in diffusion-dpo sudo spo population; do dotnet fsi "paper-repro/$paper/run.fsx"; done
echo "paper-repro: all tables in $(( $(date +%s) - start )) s"
