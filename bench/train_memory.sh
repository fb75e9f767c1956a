#!/usr/bin/env bash
# Peak memory of one training gradient for 1, 4, 8 and 16 chunks of the same size, with and
# without per-chunk recomputation. With remat the gradient's memory should stay flat (the
# issue's bar: 16 chunks within 20% of 4); without it, it grows with the chunks.
# Usage: bash bench/train_memory.sh [build dir] [variant]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
variant=${2:-ttt-e2e}
printf "%-8s %-6s %12s %12s %9s\n" chunks remat "peak MB" "gradient MB" seconds
for remat in 1 0; do
  for chunks in 1 4 8 16; do
    "$build/bench/ttt_bench_memory" --variant "$variant" --chunks "$chunks" --remat "$remat" |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-8d %-6s %12.1f %12.1f %9.2f" % (r["chunks"], "yes" if r["remat"] else "no", r["peak_mb"], r["gradient_mb"], r["seconds"]))'
  done
done
