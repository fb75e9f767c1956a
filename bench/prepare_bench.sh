#!/usr/bin/env bash
# Throughput of `ttt data prepare` (MB of text per second) on the default corpus's training
# documents, for each tokenizer, on one thread and on all cores. Results go to stdout; record
# them in docs/BENCHMARKS.md. Usage: bash bench/prepare_bench.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/corpus}
[[ -f "$corpus/manifest.json" ]] || build/ttt data fetch --out "$corpus"
bash scripts/fetch_vocab.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build/ttt data train-tokenizer --input "$corpus/train" --vocab-size 4096 --out "$work/spm4096.model"
for tokenizer in bytes cl100k_base llama3 "$work/spm4096.model"; do
  for jobs in 1 "$(nproc)"; do
    echo -n "$(basename "$tokenizer") jobs=$jobs: "
    build/ttt data prepare --input "$corpus/train" --tokenizer "$tokenizer" --out "$work/out" --jobs "$jobs" | head -1
  done
done
