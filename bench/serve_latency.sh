#!/usr/bin/env bash
# Session latency of `ttt serve` on a GPU (bench/serve_latency.py): a random ttt-e2e model of
# the paper's shape SIZE (125m, 760m or 3b; window 8192, mini-batch 1024, vocabulary 128256,
# bf16 weights, no tokenizer: prompts and completions are token ids), served on cuda with
# SLOTS slots; sessions read documents of CONTEXTS tokens, then answer streamed completions.
# Usage: bash bench/serve_latency.sh [BUILD_DIR=build-gpu] [SIZE=125m] [SLOTS=1] [CONTEXTS=8192,32768,131072]
set -euo pipefail
build=${1:-build-gpu}
size=${2:-125m}
slots=${3:-1}
contexts=${4:-8192,32768,131072}
here=$(cd "$(dirname "$0")" && pwd)
case $size in
  125m) d_model=768 n_layers=12 n_heads=12 d_ff=1664 ;;
  760m) d_model=1536 n_layers=24 n_heads=16 d_ff=3328 ;;
  3b) d_model=2560 n_layers=32 n_heads=32 d_ff=5632 ;;
  *) echo "serve_latency: unknown size '$size' (125m, 760m or 3b)" >&2; exit 2 ;;
esac
work=$(mktemp -d)
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
cat >"$work/config.json" <<JSON
{"variant": "ttt-e2e", "vocab_size": 128256, "d_model": $d_model, "n_layers": $n_layers, "n_heads": $n_heads,
 "d_ff": $d_ff, "rms_eps": 1e-6, "rope_theta": 500000, "window": 8192, "mini_batch": 1024,
 "suffix_len": $((n_layers / 4)), "tie_embeddings": true, "qk_norm": true, "bos_id": 128000, "eos_id": 128001,
 "inner_lr": 1.0, "inner_clip": 1.0}
JSON
"$build/ttt" init --config "$work/config.json" --out "$work/model.safetensors" --seed 1 --dtype bf16 >/dev/null
"$build/ttt" serve --model "$work/model.safetensors" --device cuda --port 0 --slots "$slots" --max-body-mb 64 \
  --max-sessions 16 2>"$work/serve.log" &
server=$!
for _ in $(seq 1200); do
  grep -q "ready" "$work/serve.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
base=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.log")
python3 "$here/serve_latency.py" "$base" --vocab 128000 --contexts "$contexts" --label "$size slots $slots"
kill -TERM "$server"
wait "$server"
server=
