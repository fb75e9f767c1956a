#!/usr/bin/env bash
# Data-parallel training throughput (issue 20): the plain trainer against `ttt launch` with a
# world of 1 (the c10d path's overhead) and with N ranks, same global batch and seed. Each run
# trains `steps` steps; the median tokens/s (the job's, from rank 0's metrics) of steps 2..N.
# Usage: bash bench/data_parallel.sh [build dir] [device] [size] [steps] [ranks] [backend]
#   device: cpu (each of N ranks gets cores / N threads) or cuda (ranks on cuda:LOCAL_RANK,
#           or all on one GPU with device cuda:0); size: tiny (CPU) or 125m (ttt-e2e, 8K);
#   backend: auto (gloo on cpu, nccl on cuda) or gloo.
# On the GPU machine: bash bench/data_parallel.sh build-gpu cuda 125m 6 1, and with 2 ranks
# sharing its GPU: bash bench/data_parallel.sh build-gpu cuda:0 125m 6 2 [gloo].
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
device=${2:-cpu}
size=${3:-tiny}
steps=${4:-6}
ranks=${5:-2}
backend=${6:-auto}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source bench/train_jobs.sh
byte_text_tokens "$work/text.u32"

case $size in
  tiny) model='"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 512, "window": 256, "mini_batch": 128, "suffix_len": 1'
        seq_len=512 batch=4 ;;
  125m) model='"d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 1664, "window": 8192, "mini_batch": 1024, "suffix_len": 3'
        seq_len=8192 batch=8 ;;
  *) echo "unknown size $size (tiny or 125m)" >&2; exit 2 ;;
esac
# Byte tokens in a Llama-3-sized vocabulary at 125M: the head's cost is the paper model's.
vocab=258
[[ $size == 125m ]] && vocab=128256
cat >"$work/model.json" <<JSON
{"variant": "ttt-e2e", "vocab_size": $vocab, $model, "rms_eps": 1e-6, "rope_theta": 10000,
 "inner_lr": 1.0, "inner_clip": 1.0, "tie_embeddings": true, "qk_norm": true, "bos_id": 256, "eos_id": 257}
JSON
cores=$(nproc)
dtype=f32
[[ $device == cuda* ]] && dtype=bf16
train=(train --model-config "$work/model.json" --train-tokens "$work/text.u32" --steps "$steps"
       --batch-size "$batch" --seq-len "$seq_len" --checkpoint-every 0 --device "$device" --dtype "$dtype"
       --dist-backend "$backend")

echo "ttt-e2e $size, $batch x $seq_len tokens per step, $steps steps, device $device, $dtype, $cores cores, $(git rev-parse --short HEAD)"
printf "%-28s %12s\n" run "tokens/s"
OMP_NUM_THREADS=$cores "$build/ttt" "${train[@]}" --out "$work/plain" >/dev/null 2>&1
printf "%-28s %12s\n" "plain trainer" "$(median_tokens_per_s "$work/plain/metrics.jsonl")"
OMP_NUM_THREADS=$cores "$build/ttt" launch -n 1 -- "${train[@]}" --out "$work/world1" >/dev/null 2>&1
printf "%-28s %12s\n" "launch, world of 1" "$(median_tokens_per_s "$work/world1/metrics.jsonl")"
if [[ $ranks -gt 1 ]]; then
  # NCCL refuses two ranks on one GPU in some versions: say so and keep the other rows.
  if OMP_NUM_THREADS=$(( cores > ranks ? cores / ranks : 1 )) "$build/ttt" launch -n "$ranks" -- "${train[@]}" \
    --out "$work/world$ranks" >"$work/world$ranks.log" 2>&1; then
    printf "%-28s %12s\n" "launch, $ranks ranks" "$(median_tokens_per_s "$work/world$ranks/metrics.jsonl")"
  else
    printf "%-28s %12s\n" "launch, $ranks ranks" "failed:"
    grep "ttt: error" "$work/world$ranks.log" | head -3
  fi
fi
