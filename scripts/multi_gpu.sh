#!/usr/bin/env bash
# Issue 21 in one command on a machine of 2 GPUs (the device kind nvidia-h200-x2), after
# `scripts/gpu.sh --no-test` has built build-gpu/:
#   1. throughput: 125M and 760M, ttt-e2e meta-learning and fa pre-training at 8K, the same
#      global batch (8 x 8192 tokens) on 1 rank and on 2: tokens/s (median of steps 2..6),
#      scaling efficiency (2-rank rate / twice the 1-rank rate; the bar is 90%), and the most
#      GPU memory each GPU used (nvidia-smi, sampled);
#   2. the same losses: 125M ttt-e2e, 20 steps of 4 x 2048 tokens, 1 rank against 2, same seed;
#   3. a checkpoint written by 2 ranks (stopped by Ctrl-C at step 5 or later of 40) resumes on
#      1 rank and on the CPU, each continuing with the losses of the uninterrupted 2-rank run
#      (compared over the 6 steps after the checkpoint, before rounding drift builds up).
#   Parts 2 and 3 train at a learning rate of 1e-3: at the default 3e-3 the tiny model's loss
#   spikes, and runs that differ by rounding alone (1e-8 in fp32, even one rank with 1 or 2
#   threads) drift 1e-3 apart within 15 steps.
# Usage: bash scripts/multi_gpu.sh [build dir] [device] [parts]
#   device: cuda (rank r on cuda:r; needs 2 GPUs) or cpu (a rehearsal: Gloo, a tiny model for
#   every part, the CPU resume as the "1 rank" one); parts: which to run, e.g. 3 or 2,3 (all).
# Exits non-zero when part 2 or 3 disagrees beyond bf16 rounding (relative 1e-2).
set -eEuo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
device=${2:-cuda}
parts=${3:-1,2,3}
part() { [[ ,$parts, == *,$1,* ]]; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
trap 'echo "failed; the last lines of its log:"; tail -5 "$work/log" 2>/dev/null' ERR
source bench/train_jobs.sh
byte_text_tokens "$work/text.u32"
dtype=bf16
[[ $device == cpu ]] && dtype=f32
threads=$(nproc)

# A model config: variant, size (tiny, 125m or 760m). Byte tokens in a Llama-3-sized
# vocabulary beyond tiny: the head's cost is the paper models'.
model_config() {
  local variant=$1 size=$2 shape vocab=128256 window=8192 suffix
  case $size in
    tiny) shape='"d_model": 128, "n_layers": 4, "n_heads": 4, "mini_batch": 128'
          vocab=258 window=256 ;;
    125m) shape='"d_model": 768, "n_layers": 12, "n_heads": 12, "mini_batch": 1024' ;;
    760m) shape='"d_model": 1536, "n_layers": 24, "n_heads": 16, "mini_batch": 1024' ;;
  esac
  local ff
  case $variant/$size in
    ttt-e2e/tiny) ff=384 ;; fa/tiny) ff=512 ;;
    ttt-e2e/125m) ff=1664 ;; fa/125m) ff=2048 ;;
    ttt-e2e/760m) ff=3328 ;; fa/760m) ff=4096 ;;
  esac
  suffix=0
  if [[ $variant == ttt-e2e ]]; then
    case $size in tiny) suffix=1 ;; 125m) suffix=3 ;; 760m) suffix=6 ;; esac
  else
    window=0
  fi
  cat <<JSON
{"variant": "$variant", "vocab_size": $vocab, $shape, "d_ff": $ff, "window": $window, "suffix_len": $suffix,
 "rms_eps": 1e-6, "rope_theta": 500000, "inner_lr": 1.0, "inner_clip": 1.0, "tie_embeddings": true,
 "qk_norm": true, "bos_id": 256, "eos_id": 257}
JSON
}

# train OUT RANKS MODEL_JSON SEQ_LEN BATCH STEPS [more flags]: 1 rank as a plain `ttt train`;
# stderr in $work/log. With TRAIN_IN_BACKGROUND=1 it starts the run and leaves its pid in
# $trainer (the ttt process itself, so that a signal reaches it).
train() {
  local out=$1 ranks=$2 model=$3 seq_len=$4 batch=$5 steps=$6
  shift 6
  local args=(train --model-config "$model" --train-tokens "$work/text.u32" --steps "$steps" --batch-size "$batch"
              --seq-len "$seq_len" --checkpoint-every 0 --eval-every 0 --device "$device" --dtype "$dtype" "$@"
              --out "$out")
  local command=("$build/ttt" "${args[@]}") per_rank=$threads
  if [[ $ranks != 1 ]]; then
    command=("$build/ttt" launch -n "$ranks" -- "${args[@]}")
    per_rank=$(( threads / ranks > 0 ? threads / ranks : 1 ))
  fi
  if [[ ${TRAIN_IN_BACKGROUND:-0} == 1 ]]; then
    OMP_NUM_THREADS=$per_rank "${command[@]}" >/dev/null 2>"$work/log" &
    trainer=$!
  else
    OMP_NUM_THREADS=$per_rank "${command[@]}" >/dev/null 2>"$work/log"
  fi
}

# The most memory each GPU used while a command ran ("-" on the CPU).
gpu_memory() {
  if [[ $device == cpu ]]; then
    "$@"
    echo "-" >"$work/memory"
    return
  fi
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 >"$work/smi" &
  local sampler=$!
  "$@"
  kill "$sampler"
  wait "$sampler" 2>/dev/null || true
  awk -F', ' '{ if ($2 > m[$1]) m[$1] = $2 } END { s = ""; for (i in m) s = s sprintf("%sGPU%s %.1f GiB", (s ? ", " : ""), i, m[i] / 1024); print s }' \
    "$work/smi" >"$work/memory"
}

# Compares the losses of two runs' metrics, step by step from `from` on (to `to`, if given):
# prints the largest relative difference and fails beyond `tolerance`.
same_losses() {
  python3 - "$@" <<'PY'
import json, sys
a_path, b_path, first, tolerance = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
last = int(sys.argv[5]) if len(sys.argv) > 5 else float("inf")
a = {r["step"]: r["loss"] for r in map(json.loads, open(a_path))}
b = {r["step"]: r["loss"] for r in map(json.loads, open(b_path))}
steps = sorted(s for s in a if s in b and first <= s <= last)
if not steps:
    sys.exit("no common steps to compare")
worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in steps)
print(f"steps {steps[0]}..{steps[-1]}: largest relative loss difference {worst:.2e}")
sys.exit(0 if worst <= tolerance else f"beyond {tolerance}")
PY
}

echo "multi-GPU training (issue 21): device $device, $dtype, $(git rev-parse --short HEAD)"
[[ $device == cuda ]] && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader

if part 1; then
  echo "== 1. throughput, 8 sequences of 8192 tokens a step (512 on the CPU), 6 steps"
  printf "%-8s %-6s %14s %14s %10s  %s\n" variant size "1 rank tok/s" "2 ranks tok/s" efficiency "GPU memory (1 rank; 2 ranks)"
  sizes="125m 760m"
  [[ $device == cpu ]] && sizes="tiny"
  for variant in ttt-e2e fa; do
    for size in $sizes; do
      model_config "$variant" "$size" >"$work/model.json"
      seq_len=8192
      [[ $size == tiny ]] && seq_len=512
      gpu_memory train "$work/$variant-$size-1" 1 "$work/model.json" "$seq_len" 8 6
      one=$(median_tokens_per_s "$work/$variant-$size-1/metrics.jsonl") memory_one=$(cat "$work/memory")
      gpu_memory train "$work/$variant-$size-2" 2 "$work/model.json" "$seq_len" 8 6
      two=$(median_tokens_per_s "$work/$variant-$size-2/metrics.jsonl") memory_two=$(cat "$work/memory")
      efficiency=$(python3 -c "print(f'{100 * $two / (2 * $one):.1f}%')")
      printf "%-8s %-6s %14s %14s %10s  %s; %s\n" "$variant" "$size" "$one" "$two" "$efficiency" "$memory_one" "$memory_two"
    done
  done
fi

if part 2; then
  size=125m seq_len=2048
  [[ $device == cpu ]] && size=tiny seq_len=256
  echo "== 2. the same losses on 1 rank and on 2: ttt-e2e $size, 20 steps of 4 x $seq_len tokens, seed 3"
  model_config ttt-e2e "$size" >"$work/model.json"
  train "$work/same-1" 1 "$work/model.json" "$seq_len" 4 20 --seed 3 --lr 1e-3
  train "$work/same-2" 2 "$work/model.json" "$seq_len" 4 20 --seed 3 --lr 1e-3
  same_losses "$work/same-1/metrics.jsonl" "$work/same-2/metrics.jsonl" 1 1e-2
fi

if part 3; then
  echo "== 3. a checkpoint of 2 ranks resumes on 1 rank and on the CPU: tiny ttt-e2e, 40 steps"
  model_config ttt-e2e tiny >"$work/model.json"
  train "$work/whole" 2 "$work/model.json" 256 4 40 --seed 5 --lr 1e-3
  TRAIN_IN_BACKGROUND=1 train "$work/split" 2 "$work/model.json" 256 4 40 --seed 5 --lr 1e-3
  for _ in $(seq 600); do
    [[ -f $work/split/metrics.jsonl && $(wc -l <"$work/split/metrics.jsonl") -ge 5 ]] && break
    sleep 0.1
  done
  [[ -f $work/split/metrics.jsonl && $(wc -l <"$work/split/metrics.jsonl") -ge 5 ]] ||
    { echo "the 2-rank run did not reach step 5 in 60 s"; exit 1; }
  kill -INT "$trainer"
  wait "$trainer" || true
  saved=$(wc -l <"$work/split/metrics.jsonl")
  [[ $saved -lt 40 ]] || { echo "the run ended before Ctrl-C: nothing was resumed"; exit 1; }
  echo "stopped at step $saved"
  cp -r "$work/split" "$work/on-one"
  cp -r "$work/split" "$work/on-cpu"
  OMP_NUM_THREADS=$threads "$build/ttt" train --resume "$work/on-one" --device "$device" >/dev/null 2>"$work/log"
  OMP_NUM_THREADS=$threads "$build/ttt" train --resume "$work/on-cpu" --device cpu >/dev/null 2>"$work/log"
  for resumed in on-one on-cpu; do
    echo -n "$resumed: "
    same_losses "$work/whole/metrics.jsonl" "$work/$resumed/metrics.jsonl" $((saved + 1)) 1e-2 $((saved + 6))
  done
fi
