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
work=$(mktemp -d)
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$build/ttt" bench --sizes "$size" --variants ttt-e2e --config-out "$work/config.json"
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
