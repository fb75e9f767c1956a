#include "kernels/common.cuh"
#include "kernels/norm_rope.h"

namespace ttt::kernels {
namespace {

// A warp per row (a head of a token), four rows per block; q's rows, then k's.
constexpr int kWarps = 4;

template <typename X, typename Y>
__device__ void prepare_row(const X* __restrict__ in, const float* __restrict__ gain, const float* __restrict__ cos,
                            const float* __restrict__ sin, int64_t half, float eps, Y* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  float r = 1.f;
  if (gain != nullptr) {  // rms_norm.cu's forward_rows
    float squares = 0.f;
    for (int64_t j = lane; j < 2 * half; j += 32) {
      const float v = load(in, j);
      squares += v * v;
    }
    r = rsqrtf(warp_sum(squares) / static_cast<float>(2 * half) + eps);
  }
  for (int64_t p = lane; p < half; p += 32) {
    float x0 = load(in, 2 * p), x1 = load(in, 2 * p + 1);
    if (gain != nullptr) {
      x0 = x0 * r * gain[2 * p];
      x1 = x1 * r * gain[2 * p + 1];
    }
    const float c = cos[p], s = sin[p];  // rope.cu's rotation, each product and sum rounded alone
    store(out, 2 * p, __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
    store(out, 2 * p + 1, __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
  }
}

template <typename X, typename Y>
__device__ void prepare(const NormRopeRows& rows, int64_t row, const float* cos, const float* sin, int64_t heads,
                        int64_t half, float eps) {
  const int64_t t = row / heads, dim = 2 * half;
  prepare_row(static_cast<const X*>(rows.x) + row * dim, rows.gain, cos + t * half, sin + t * half, half, eps,
              static_cast<Y*>(rows.y) + row * dim);
}

// The row's (x, y) storage pair, dispatched: fp32 or bf16 each.
__device__ void prepare_any(const NormRopeRows& rows, int64_t row, const float* cos, const float* sin, int64_t heads,
                            int64_t half, float eps) {
  const bool x16 = rows.x_type == Storage::kBFloat16, y16 = rows.y_type == Storage::kBFloat16;
  if (x16 && y16) {
    prepare<__nv_bfloat16, __nv_bfloat16>(rows, row, cos, sin, heads, half, eps);
  } else if (x16) {
    prepare<__nv_bfloat16, float>(rows, row, cos, sin, heads, half, eps);
  } else if (y16) {
    prepare<float, __nv_bfloat16>(rows, row, cos, sin, heads, half, eps);
  } else {
    prepare<float, float>(rows, row, cos, sin, heads, half, eps);
  }
}

__global__ void __launch_bounds__(32 * kWarps)
    norm_rope_rows(NormRopeRows q, NormRopeRows k, const float* __restrict__ cos, const float* __restrict__ sin,
                   int64_t rows, int64_t heads, int64_t half, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= 2 * rows) return;
  if (row < rows) {
    prepare_any(q, row, cos, sin, heads, half, eps);
  } else {
    prepare_any(k, row - rows, cos, sin, heads, half, eps);
  }
}

bool served(Storage type) { return type == Storage::kFloat32 || type == Storage::kBFloat16; }

}  // namespace

const char* norm_rope_forward(const NormRopeRows& q, const NormRopeRows& k, const float* cos, const float* sin,
                              int64_t tokens, int64_t heads, int64_t head_dim, float eps, void* stream) {
  if (head_dim % 2 != 0 || !served(q.x_type) || !served(q.y_type) || !served(k.x_type) || !served(k.y_type)) {
    return "norm_rope: unsupported head_dim or storage";
  }
  const int64_t rows = tokens * heads;
  if (rows == 0) return nullptr;
  const int64_t blocks = (2 * rows + kWarps - 1) / kWarps;
  norm_rope_rows<<<blocks, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(q, k, cos, sin, rows, heads,
                                                                                head_dim / 2, eps);
  return launched();
}

}  // namespace ttt::kernels
