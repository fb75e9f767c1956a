#!/usr/bin/env bash
# Checks the CUDA sources compile (syntax and types, host and device sides) on a machine
# without nvcc or a GPU, before device time is spent on a build that fails: src/kernels/*.cu
# through clang-14's CUDA front end (sm_86: bf16 and fp16 served), src/kernels/cudnn_window.cpp
# against cuDNN's frontend, and the files guarded by TTT_WITH_CUDA* or TTT_WITH_CUDNN* with
# every TTT_WITH_* feature on but the collectives, against Debian's libtorch 1.13 (so torch
# 2.x-only calls would fail there: graph_replay.cpp and distributed.cpp are left out). CUDA's
# headers come from CUDA_INCLUDE (a CUDA 12 include/ folder; cuDNN's own headers not needed).
#   CUDA_INCLUDE=/path/to/cuda/include scripts/cuda_syntax.sh [FILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CUDA_INCLUDE:?set CUDA_INCLUDE to a CUDA 12 include/ folder}"
[[ -f "$CUDA_INCLUDE/cuda_runtime.h" ]] || { echo "cuda_syntax: no cuda_runtime.h in $CUDA_INCLUDE" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# clang looks for a CUDA installation's layout; it needs no libdevice with -nocudalib.
mkdir -p "$work/cuda/bin" "$work/cuda/nvvm/libdevice" "$work/cuda/lib64" "$work/feat/c10/cuda/impl"
ln -s "$(realpath "$CUDA_INCLUDE")" "$work/cuda/include"
touch "$work/cuda/bin/ptxas" && chmod +x "$work/cuda/bin/ptxas"
# clang-14 knows CUDA up to 11.5: it launches through cudaConfigureCall, which CUDA 12 no
# longer declares, and its texture wrapper uses texture references, which CUDA 12 removed.
cat >"$work/shim.h" <<'SHIM'
#include <cuda_runtime_api.h>
extern "C" cudaError_t cudaConfigureCall(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t stream = 0);
SHIM
# Every feature on but the collectives (c10d's API differs between torch 1.13 and 2.x).
grep -o 'TTT_WITH_[A-Z_]*' CMakeLists.txt | sort -u |
  sed -e 's/.*\(GLOO\|NCCL\)$/#define & 0/' -e 't' -e 's/.*/#define & 1/' >"$work/feat/ttt_build_features.h"
: >"$work/feat/c10/cuda/impl/cuda_cmake_macros.h"
files=("$@")
if ((${#files[@]} == 0)); then
  files=(src/kernels/*.cu src/kernels/cudnn_window.cpp)
  mapfile -t -O "${#files[@]}" files < <(grep -l 'TTT_WITH_CUDA\|TTT_WITH_CUDNN' src/*/*.cpp apps/ttt/*.cpp tests/*/*.cpp |
    grep -v -e graph_replay.cpp -e distributed.cpp -e cudnn_window.cpp)
fi
failed=0
for f in "${files[@]}"; do
  case "$f" in
    *.cu) cmd=(clang++-14 -x cuda --cuda-gpu-arch=sm_86 --cuda-path="$work/cuda" -nocudalib -std=c++17
               -Wno-unknown-cuda-version -D__CLANG_CUDA_TEXTURE_INTRINSICS_H__ -include "$work/shim.h" -Isrc) ;;
    */cudnn_window.cpp) cmd=(g++ -std=c++20 -DCUDNN_FRONTEND_SKIP_JSON_LIB -Isrc
               -isystem third_party/cudnn-frontend/include -isystem "$CUDA_INCLUDE") ;;
    *) cmd=(g++ -std=c++20 -include src/common/pch.h -I"$work/feat" -Isrc -Itests
               -isystem /usr/include/torch/csrc/api/include -isystem "$CUDA_INCLUDE") ;;
  esac
  if "${cmd[@]}" -fsyntax-only "$f" 2>"$work/err"; then
    echo "ok      $f"
  else
    echo "FAILED  $f"; head -20 "$work/err"; failed=1
  fi
done
exit $failed
