#!/usr/bin/env bash
# Training tokens/s of fa, swa and ttt-e2e at one small shape on this machine's CPU, and
# the ratio meta-learning / pre-training (the paper: 3.4x slower at 8K on GPU). Every
# variant has the same blocks (ttt-e2e adds its prime MLPs); each trains `steps` steps of
# one sequence on byte-level English text; the median tokens/s of steps 2..N is reported.
# Usage: bash bench/train_throughput.sh [build dir] [seq_len] [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seq_len=${2:-1024}
steps=${3:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source bench/train_jobs.sh
byte_text_tokens "$work/text.u32"

echo "shape: d_model 128, 4 blocks, 4 heads, d_ff 512, window 256, mini_batch 128, seq_len $seq_len, threads ${OMP_NUM_THREADS:-all}"
printf "%-8s %-6s %12s\n" variant remat "tokens/s"
for variant in fa swa ttt-e2e; do
  suffix=0
  [[ $variant == ttt-e2e ]] && suffix=1
  cat >"$work/$variant.json" <<JSON
{"variant": "$variant", "vocab_size": 258, "d_model": 128, "n_layers": 4, "n_heads": 4,
 "d_ff": 512, "rms_eps": 1e-6, "rope_theta": 10000, "window": 256, "mini_batch": 128,
 "suffix_len": $suffix, "inner_lr": 1.0, "inner_clip": 1.0, "tie_embeddings": true,
 "qk_norm": true, "bos_id": 256, "eos_id": 257}
JSON
  for remat in false true; do
    "$build/ttt" train --model-config "$work/$variant.json" --train-tokens "$work/text.u32" \
      --out "$work/$variant-$remat" --steps "$steps" --batch-size 1 --seq-len "$seq_len" \
      --remat "$remat" --checkpoint-every 0 >/dev/null 2>&1
    printf "%-8s %-6s %12s\n" "$variant" "$remat" "$(median_tokens_per_s "$work/$variant-$remat/metrics.jsonl")"
  done
done
