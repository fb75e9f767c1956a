#!/usr/bin/env bash
# Load test of `ttt serve` on 127.0.0.1 (bench/serve_load.js): CLIENTS concurrent clients for
# SECONDS, a mix of session creations (2K-byte documents), questions on sessions, plain and
# streamed completions and deletions. A small random ttt-e2e model over bytes (4 blocks of width
# 256, mini-batch 128) unless MODEL is given. After a warm-up of a third of SECONDS, the server's
# resident memory is sampled every second of the run. Prints the client's JSON line with the
# memory's peaks in the run's first and second halves, and the samples and the server's counters
# on stderr; fails when a request failed other than by a deliberate 429, the memory was not flat
# (the second half's peak above the first's by more than RSS_GROWTH, default 0.05) or the server
# did not stop cleanly.
# Usage: bash bench/serve_load.sh [BUILD_DIR] [CLIENTS=16] [SECONDS=60] [MODEL] [extra ttt serve flags...]
set -euo pipefail
rss_growth=${RSS_GROWTH:-0.05}
build=${1:-build}
clients=${2:-16}
seconds=${3:-60}
model=${4:-}
shift $(( $# < 4 ? $# : 4 ))
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$server" "${sampler:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
if [[ -z "$model" ]]; then
  cat >"$work/config.json" <<'JSON'
{"variant": "ttt-e2e", "vocab_size": 258, "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 768,
 "rms_eps": 1e-6, "rope_theta": 10000, "window": 512, "mini_batch": 128, "suffix_len": 1,
 "tie_embeddings": true, "qk_norm": true, "bos_id": 256, "eos_id": 257, "inner_lr": 1.0, "inner_clip": 1.0}
JSON
  "$build/ttt" init --config "$work/config.json" --out "$work/model.safetensors" --seed 1 >/dev/null
  model="$work/model.safetensors"
fi
# The document: this repository's README, 2K bytes of it per session.
head -c 4096 "$here/../README.md" >"$work/document.txt"
"$build/ttt" serve --model "$model" --tokenizer bytes --port 0 --session-dir "$work/sessions" "$@" 2>"$work/serve.log" &
server=$!
for _ in $(seq 600); do
  grep -q "ready" "$work/serve.log" && break
  sleep 0.1
done
base=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.log")
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
# Warm-up: the same load for a third of the time fills the session store (--max-sessions) and
# the allocator's pools, so that the memory at the start is the steady state's.
node "$here/serve_load.js" "$base" "$clients" $(( (seconds + 2) / 3 )) "$work/document.txt" >/dev/null
# The resident memory (MB) every second of the run.
(while true; do echo $(( $(rss_kb) / 1024 )); sleep 1; done >"$work/rss.txt") &
sampler=$!
result=$(node "$here/serve_load.js" "$base" "$clients" "$seconds" "$work/document.txt")
kill "$sampler"
wait "$sampler" || true
sampler=
metrics=$(curl -s "$base/metrics" | grep -E '^ttt_(sessions_in_memory|sessions_on_disk|inner_steps_total|tokens_read_total) ')
kill -TERM "$server"
wait "$server"
status=$?
server=
read -r first_half second_half flat < <(awk -v growth="$rss_growth" '{mb[NR] = $1}
  END {
    for (i = 1; i <= NR; i++) if (i <= NR / 2) { if (mb[i] > first) first = mb[i] } else if (mb[i] > second) second = mb[i]
    print first, second, (second <= first * (1 + growth)) ? "true" : "false"
  }' "$work/rss.txt")
echo "$result" | sed "s/}\$/,\"rss_first_half_peak_mb\":$first_half,\"rss_second_half_peak_mb\":$second_half,\"rss_flat\":$flat,\"server_exit\":$status}/"
echo "rss_mb_every_second: $(paste -sd, "$work/rss.txt")" >&2
echo "$metrics" >&2
failures=$(echo "$result" | grep -o '"failures":[0-9]*' | cut -d: -f2)
[[ "$failures" == 0 && "$status" == 0 && "$flat" == true ]]
