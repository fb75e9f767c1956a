#!/usr/bin/env bash
# On the lent GPU machine, in one call: build against PyTorch's CUDA libtorch and run the
# test suite. Needs .deps/ from scripts/pack_deps.sh (carried along); logs go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ttt-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
{
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_INCLUDE_PATH="$PWD/.deps/include" -DTTT_GTEST_SOURCE_DIR="$PWD/.deps/googletest"
  time cmake --build build-gpu --parallel "$(nproc)" -- -v
} >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
tail -3 "$out/build.log"
ctest --test-dir build-gpu --output-on-failure --parallel "$(nproc)" --timeout 600 >"$out/test.log" 2>&1 || true
tail -15 "$out/test.log"
