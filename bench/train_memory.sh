#!/usr/bin/env bash
# Peak memory of one training gradient for 1, 4, 8 and 16 chunks of the same size, with and
# without per-chunk recomputation. With remat the process's peak should stay flat (the bar:
# 16 chunks within 20% of 4); without it, it grows with the chunks.
# Usage: bash bench/train_memory.sh [build dir] [variant]
#        bash bench/train_memory.sh --check [build dir]   (a test: the bar for every variant)
set -euo pipefail
cd "$(dirname "$0")/.."
peak() {  # build variant chunks remat -> the peak in MB
  "$1/bench/ttt_bench_memory" --variant "$2" --chunks "$3" --remat "$4" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["peak_mb"])'
}
if [[ "${1:-}" == "--check" ]]; then
  build=${2:-build}
  status=0
  for variant in ttt-e2e swa fa; do
    four=$(peak "$build" "$variant" 4 1)
    sixteen=$(peak "$build" "$variant" 16 1)
    if python3 -c "import sys; sys.exit(0 if $sixteen <= 1.2 * $four else 1)"; then
      echo "$variant: peak $sixteen MB for 16 chunks, $four MB for 4: within 20%"
    else
      echo "$variant: peak $sixteen MB for 16 chunks, $four MB for 4: more than 20% above" >&2
      status=1
    fi
  done
  exit $status
fi
build=${1:-build}
variant=${2:-ttt-e2e}
printf "%-8s %-6s %12s %12s %9s\n" chunks remat "peak MB" "gradient MB" seconds
for remat in 1 0; do
  for chunks in 1 4 8 16; do
    "$build/bench/ttt_bench_memory" --variant "$variant" --chunks "$chunks" --remat "$remat" |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-8d %-6s %12.1f %12.1f %9.2f" % (r["chunks"], "yes" if r["remat"] else "no", r["peak_mb"], r["gradient_mb"], r["seconds"]))'
  done
done
