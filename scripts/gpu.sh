#!/usr/bin/env bash
# On the lent GPU machine, in one call: build against PyTorch's CUDA libtorch, run the test
# suite (the CUDA tests included) and `ttt bench`. Needs .deps/ from scripts/pack_deps.sh
# (carried along); logs and results go to $OUT.
#   scripts/gpu.sh [--no-test] [--tests REGEX] [-- BENCH FLAGS...]   (no bench flags: no bench)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ttt-gpu}
mkdir -p "$out"
run_tests=1 tests_regex=""
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --no-test) run_tests=0 ;;
    --tests) tests_regex=$2; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "${1:-}" == "--" ]] && shift
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$out/gpu.txt" || true
{
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_INCLUDE_PATH="$PWD/.deps/include" -DTTT_GTEST_SOURCE_DIR="$PWD/.deps/googletest"
  # --no-test builds only the program, not the tests' 34 libtorch files.
  time cmake --build build-gpu --parallel "$(nproc)" --target ttt $([[ $run_tests == 1 ]] && echo ttt_tests)
} >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
tail -3 "$out/build.log"
if [[ $run_tests == 1 ]]; then
  ctest --test-dir build-gpu --output-on-failure --parallel "$(nproc)" --timeout 600 ${tests_regex:+-R "$tests_regex"} \
    >"$out/test.log" 2>&1 || true
  grep -E "tests passed|tests failed|\(Failed\)|Skipped" "$out/test.log" | tail -30
fi
if [[ $# -gt 0 ]]; then
  build-gpu/ttt bench --json "$out/bench.json" "$@" 2>&1 | tee "$out/bench.txt"
fi
