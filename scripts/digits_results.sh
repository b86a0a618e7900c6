#!/usr/bin/env bash
# Regenerates the digits results: trains every configs/digits_*.toml (one run
# at a time) into runs/digits/<name>/ (checkpoint, eval.json, results.json,
# epochs.jsonl, figures/*.png), then writes runs/digits/compare/compare.md
# (one table over all runs) and runs/digits/compare/alignment_uniformity.png.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v fmicl-engine >/dev/null 2>&1 && fmicl-engine --help >/dev/null 2>&1; then
  fmicl=(fmicl-engine)
else
  fmicl=(python3 -m fmicl_engine)
fi
mkdir -p runs/digits
for cfg in configs/digits_*.toml; do
  name=$(basename "$cfg" .toml); name=${name#digits_}
  echo "== $name"
  "${fmicl[@]}" run "$cfg" --out "runs/digits/$name" --no-progress
done
"${fmicl[@]}" compare $(ls -d runs/digits/*/ | grep -v '/compare/$') --out runs/digits/compare
