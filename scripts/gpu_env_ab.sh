#!/usr/bin/env bash
# A same-binary A/B on the lent GPU machine: the working tree built once (scripts/gpu.sh, its
# tests as asked), then `ttt bench FLAGS` alternately as it is and with each VAR=VALUE setting
# (a switch such as TTT_CUDNN_WINDOW=0), --rounds times each, summed up by
# scripts/ab_summary.py: tokens/s and GPU peak, the ratio as built / with the setting. One build
# where scripts/gpu_ab.sh builds a baseline too. In $OUT: ab.txt, ab-runs.tgz and gpu.sh's files.
#   scripts/gpu_env_ab.sh [--rounds N] [--no-test | --tests REGEX] --env VAR=VALUE [--env ...] -- BENCH FLAGS...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ttt-gpu}
rounds=1 test_flags=() settings=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --no-test) test_flags=(--no-test) ;;
    --tests) test_flags=(--tests "$2"); shift ;;
    --env) [[ "$2" == *=* ]] || { echo "gpu_env_ab: --env wants VAR=VALUE, got '$2'" >&2; exit 2; }
           settings+=("$2"); shift ;;
    *) echo "gpu_env_ab: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "gpu_env_ab: give the bench flags after --" >&2; exit 2; }
[[ ${#settings[@]} -gt 0 ]] || { echo "gpu_env_ab: give at least one --env VAR=VALUE" >&2; exit 2; }
mkdir -p "$out"
runs=/tmp/env-ab-runs
rm -rf "$runs" && mkdir -p "$runs"
scripts/gpu.sh "${test_flags[@]}"
for ((i = 1; i <= rounds; ++i)); do
  build-gpu/ttt bench --json "$runs/new-$i.json" "$@" >"$runs/new-$i.txt" 2>&1
  for j in "${!settings[@]}"; do
    env "${settings[$j]}" build-gpu/ttt bench --json "$runs/env$j-$i.json" "$@" >"$runs/env$j-$i.txt" 2>&1
  done
done
summary=("$runs"/new-*.json)
for j in "${!settings[@]}"; do summary+=(-- "${settings[$j]}" "$runs/env$j"-*.json); done
tar -czf "$out/ab-runs.tgz" -C "$runs" .
python3 scripts/ab_summary.py "${summary[@]}" | tee "$out/ab.txt"
