#!/usr/bin/env bash
# A same-machine A/B on the lent GPU machine, second half (there): the working tree against
# the baseline scripts/ab_base.sh REV put into .ab_base/ (carried along). Builds the
# baseline's `ttt` in the background while scripts/gpu.sh builds and tests the working tree,
# then runs `ttt bench FLAGS` for both, alternating (working tree first), --rounds times each,
# and prints each row's tokens/s and GPU peak for both with their ratio (medians over rounds).
# Logs and JSON go to $OUT.
#   scripts/gpu_ab.sh [--rounds N] [--no-test | --tests REGEX] -- BENCH FLAGS...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ttt-gpu}
rounds=1 test_flags=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --no-test) test_flags=(--no-test) ;;
    --tests) test_flags=(--tests "$2"); shift ;;
    *) echo "gpu_ab: unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "gpu_ab: give the bench flags after --" >&2; exit 2; }
[[ -f .ab_base/rev ]] || { echo "gpu_ab: no .ab_base/ (run scripts/ab_base.sh REV first, carry .ab_base)" >&2; exit 2; }
mkdir -p "$out"
base=/tmp/ab-base
(
  rm -rf "$base" && mkdir -p "$base"
  cp -r CMakeLists.txt src apps tests bench fuzz scripts .deps "$base"/
  cp -r .ab_base/tree/. "$base"/
  while read -r path; do [[ -n $path ]] && rm -f "$base/$path"; done <.ab_base/removed
  cd "$base"
  prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_INCLUDE_PATH="$PWD/.deps/include" -DTTT_GTEST_SOURCE_DIR="$PWD/.deps/googletest"
  cmake --build build --parallel "$(nproc)" --target ttt
) >"$out/ab-base-build.log" 2>&1 &
base_build=$!
scripts/gpu.sh "${test_flags[@]}"
wait "$base_build" || { echo "gpu_ab: the baseline did not build:" >&2; tail -30 "$out/ab-base-build.log" >&2; exit 1; }
for ((i = 1; i <= rounds; ++i)); do
  build-gpu/ttt bench --json "$out/ab-new-$i.json" "$@" >"$out/ab-new-$i.txt" 2>&1
  "$base/build/ttt" bench --json "$out/ab-base-$i.json" "$@" >"$out/ab-base-$i.txt" 2>&1
done
python3 scripts/ab_summary.py "$(cat .ab_base/rev)" "$out"/ab-new-*.json -- "$out"/ab-base-*.json | tee "$out/ab.txt"
