#!/usr/bin/env bash
# A same-machine A/B on the lent GPU machine, second half (there): the working tree against
# the baselines scripts/ab_base.sh REV... put into .ab_base/ (carried along), and against
# itself under each --env VAR=VALUE setting (a switch such as TTT_CUDNN_WINDOW=0: no second
# build). Builds the baselines' `ttt` in the background while scripts/gpu.sh builds and tests
# the working tree, then runs `ttt bench FLAGS` for each, alternating (working tree first, then
# the baselines in the order named, then the settings), --rounds times each, and prints each
# row's tokens/s and GPU peak for all with the ratio working tree / baseline (medians over
# rounds). In $OUT: ab.txt (that table), ab-runs.tgz (every round's JSON and output, the
# baselines' build logs) and gpu.sh's files: few files, since a call brings back at most 8.
#   scripts/gpu_ab.sh [--rounds N] [--no-test | --tests REGEX] [--env VAR=VALUE]... -- BENCH FLAGS...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ttt-gpu}
rounds=1 test_flags=() settings=() revs=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --no-test) test_flags=(--no-test) ;;
    --tests) test_flags=(--tests "$2"); shift ;;
    --env) [[ "${2:-}" == *=* ]] || { echo "gpu_ab: --env wants VAR=VALUE, got '${2:-}'" >&2; exit 2; }
           settings+=("$2"); shift ;;
    *) echo "gpu_ab: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "gpu_ab: give the bench flags after --" >&2; exit 2; }
[[ -s .ab_base/revs ]] && mapfile -t revs <.ab_base/revs
[[ ${#revs[@]} -gt 0 || ${#settings[@]} -gt 0 ]] ||
  { echo "gpu_ab: nothing to compare with (run scripts/ab_base.sh REV... first and carry .ab_base, or give --env VAR=VALUE)" >&2; exit 2; }
mkdir -p "$out"
runs=/tmp/ab-runs
rm -rf "$runs" && mkdir -p "$runs"
prefix=
[[ ${#revs[@]} -gt 0 ]] && prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
builds=()
for rev in "${revs[@]}"; do
  (
    base=/tmp/ab-base-$rev
    rm -rf "$base" && mkdir -p "$base"
    cp -r CMakeLists.txt src apps tests bench fuzz scripts third_party .deps "$base"/
    cp -r ".ab_base/$rev/tree/." "$base"/
    while read -r path; do [[ -n $path ]] && rm -f "$base/$path"; done <".ab_base/$rev/removed"
    cd "$base"
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_INCLUDE_PATH="$PWD/.deps/include" -DTTT_GTEST_SOURCE_DIR="$PWD/.deps/googletest"
    cmake --build build --parallel "$(nproc)" --target ttt
  ) >"$runs/build-$rev.log" 2>&1 &
  builds+=($!)
done
scripts/gpu.sh "${test_flags[@]}"
for i in "${!revs[@]}"; do
  wait "${builds[$i]}" || { echo "gpu_ab: baseline ${revs[$i]} did not build:" >&2; tail -30 "$runs/build-${revs[$i]}.log" >&2; exit 1; }
done
for ((i = 1; i <= rounds; ++i)); do
  build-gpu/ttt bench --json "$runs/new-$i.json" "$@" >"$runs/new-$i.txt" 2>&1
  for rev in "${revs[@]}"; do
    "/tmp/ab-base-$rev/build/ttt" bench --json "$runs/$rev-$i.json" "$@" >"$runs/$rev-$i.txt" 2>&1
  done
  for j in "${!settings[@]}"; do
    env "${settings[$j]}" build-gpu/ttt bench --json "$runs/env$j-$i.json" "$@" >"$runs/env$j-$i.txt" 2>&1
  done
done
summary=("$runs"/new-*.json)
for rev in "${revs[@]}"; do summary+=(-- "$rev" "$runs/$rev"-*.json); done
for j in "${!settings[@]}"; do summary+=(-- "${settings[$j]}" "$runs/env$j"-*.json); done
tar -czf "$out/ab-runs.tgz" -C "$runs" .
python3 scripts/ab_summary.py "${summary[@]}" | tee "$out/ab.txt"
