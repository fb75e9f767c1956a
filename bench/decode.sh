#!/usr/bin/env bash
# Decode tokens/s of a streaming session after 1K, 16K and 64K tokens of context, per
# variant (bench/decode.cpp; one thread, a 4-block model of width 128, window 256,
# mini-batch 64). Usage: bash bench/decode.sh [BUILD_DIR]; JSON lines to stdout.
set -euo pipefail
build=${1:-build}
for context in 1024 16384 65536; do
  for variant in fa swa ttt-e2e; do
    "$build/bench/ttt_bench_decode" --variant "$variant" --context "$context" --decode 128
  done
done
