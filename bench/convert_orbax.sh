#!/usr/bin/env bash
# Times `ttt convert orbax` on a synthetic checkpoint of the authors' layout at a real size,
# on 2 cores (taskset -c 0,1, the development machine's count): MB/s of stored checkpoint
# read, peak RSS (the converter should need about its largest array: 1.85 GB at 3B, the
# stacked w1), and a check that the model loads. Makes the checkpoint first if it is not
# there: with orbax itself where jax and orbax-checkpoint are installed
# (bench/make_orbax_checkpoint.py, the GPU machine), else with our own writer of the same
# layout (bench/make_synthetic_orbax.py).
# Usage: bash bench/convert_orbax.sh [size: 125m|3b] [work dir] [dtype: f32|bf16]
# Env: TTT=path/to/ttt (default build/ttt, else build-gpu/ttt).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-3b}
work=${2:-results/orbax_bench}
dtype=${3:-f32}
ttt=${TTT:-build/ttt}
[[ -x $ttt ]] || ttt=build-gpu/ttt
checkpoint=$work/$size
out=$work/$size.$dtype.safetensors
mkdir -p "$work"
if [[ ! -d $checkpoint ]]; then
  if python3 -c 'import jax, orbax.checkpoint' 2>/dev/null; then
    python3 bench/make_orbax_checkpoint.py --size "$size" --out "$checkpoint"
  else
    python3 bench/make_synthetic_orbax.py --size "$size" --out "$checkpoint"
  fi
fi

stored=$(du -sb "$checkpoint" | cut -f1)
rm -f "$out"
/usr/bin/time -v taskset -c 0,1 "$ttt" --threads 2 convert orbax --checkpoint "$checkpoint" --dtype "$dtype" \
  --out "$out" 2>"$work/time.txt"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$work/time.txt")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
python3 -c "import sys; s, w, r = map(float, sys.argv[1:]); print(f'{s / 1e6:.0f} MB stored in {w:.1f} s: {s / 1e6 / w:.0f} MB/s; peak RSS {r / 1024:.0f} MB')" \
  "$stored" "$wall" "$rss_kb"
"$ttt" info --model "$out" | tail -1
