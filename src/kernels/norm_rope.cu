#include "kernels/common.cuh"
#include "kernels/norm_rope.h"

#include <type_traits>

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

// Rows of head_dim = 8 * kGroup values (a power of two up to 256) by groups of kGroup lanes,
// 8 values (4 pairs) a lane, 32 / kGroup rows a warp: a row of 64 is 128 bytes of bf16, too
// little for a whole warp to keep memory busy. Same arithmetic as prepare_row, the norm's sum
// in another order.
template <int kGroup>
__global__ void __launch_bounds__(32 * kWarps)
    norm_rope_packed(NormRopeRows q, NormRopeRows k, const float* __restrict__ cos, const float* __restrict__ sin,
                     int64_t rows, int64_t heads, float eps) {
  constexpr int kVec = 8, kDim = 8 * kGroup, kHalf = kDim / 2;
  const int lane = threadIdx.x % 32, member = lane % kGroup;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * (32 / kGroup) + lane / kGroup;
  const bool valid = row < 2 * rows;  // the others still take part in the group's shuffles
  // The row's tensor, field by field: a reference to q or k picked at run time would copy
  // both parameter structs to local memory.
  const bool of_q = row < rows;
  const void* in = of_q ? q.x : k.x;
  void* out = of_q ? q.y : k.y;
  const float* gain = of_q ? q.gain : k.gain;
  const bool in16 = (of_q ? q.x_type : k.x_type) == Storage::kBFloat16;
  const bool out16 = (of_q ? q.y_type : k.y_type) == Storage::kBFloat16;
  const int64_t r = of_q ? row : row - rows, token = r / heads, at = r * kDim + member * kVec;
  float x[kVec] = {};
  if (valid) {
    if (in16) {
      load_pack(static_cast<const __nv_bfloat16*>(in), at, x);
    } else {
      load_pack(static_cast<const float*>(in), at, x);
    }
  }
  float squares = 0.f;
#pragma unroll
  for (int m = 0; m < kVec; ++m) squares += x[m] * x[m];
  for (int offset = kGroup / 2; offset > 0; offset >>= 1) squares += shuffle_xor(squares, offset);
  if (!valid) return;
  if (gain != nullptr) {
    const float norm = rsqrtf(squares / static_cast<float>(kDim) + eps);
    float g[kVec];
    load_pack(gain, member * kVec, g);
#pragma unroll
    for (int m = 0; m < kVec; ++m) x[m] = x[m] * norm * g[m];
  }
  float c[kVec / 2], s[kVec / 2], y[kVec];
  load_pack(cos, token * kHalf + member * (kVec / 2), c);
  load_pack(sin, token * kHalf + member * (kVec / 2), s);
#pragma unroll
  for (int p = 0; p < kVec / 2; ++p) {
    const float x0 = x[2 * p], x1 = x[2 * p + 1];
    y[2 * p] = __fsub_rn(__fmul_rn(x0, c[p]), __fmul_rn(x1, s[p]));
    y[2 * p + 1] = __fadd_rn(__fmul_rn(x0, s[p]), __fmul_rn(x1, c[p]));
  }
  if (out16) {
    store_pack(static_cast<__nv_bfloat16*>(out), at, y);
  } else {
    store_pack(static_cast<float*>(out), at, y);
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
  const auto s = static_cast<cudaStream_t>(stream);
  // Packs where every row and table row starts on one: 8 values of x and y, 4 of cos and sin.
  const auto packed = [&](const NormRopeRows& t) {
    const bool x_fits = t.x_type == Storage::kBFloat16 ? packs_fit<__nv_bfloat16>(t.x, head_dim, 8)
                                                       : packs_fit<float>(t.x, head_dim, 8);
    const bool y_fits = t.y_type == Storage::kBFloat16 ? packs_fit<__nv_bfloat16>(t.y, head_dim, 8)
                                                       : packs_fit<float>(t.y, head_dim, 8);
    return x_fits && y_fits && (t.gain == nullptr || packs_fit<float>(t.gain, head_dim, 8));
  };
  const int group = static_cast<int>(head_dim / 8);
  if (head_dim % 8 == 0 && group <= 32 && (group & (group - 1)) == 0 && packed(q) && packed(k) &&
      packs_fit<float>(cos, head_dim / 2, 4) && packs_fit<float>(sin, head_dim / 2, 4)) {
    const int64_t rows_per_block = kWarps * (32 / group), blocks = (2 * rows + rows_per_block - 1) / rows_per_block;
    const auto launch = [&](auto g) {
      norm_rope_packed<decltype(g)::value><<<blocks, 32 * kWarps, 0, s>>>(q, k, cos, sin, rows, heads, eps);
    };
    switch (group) {
      case 1:
        launch(std::integral_constant<int, 1>());
        break;
      case 2:
        launch(std::integral_constant<int, 2>());
        break;
      case 4:
        launch(std::integral_constant<int, 4>());
        break;
      case 8:
        launch(std::integral_constant<int, 8>());
        break;
      case 16:
        launch(std::integral_constant<int, 16>());
        break;
      default:
        launch(std::integral_constant<int, 32>());
        break;
    }
    return launched();
  }
  const int64_t blocks = (2 * rows + kWarps - 1) / kWarps;
  norm_rope_rows<<<blocks, 32 * kWarps, 0, s>>>(q, k, cos, sin, rows, heads, head_dim / 2, eps);
  return launched();
}

}  // namespace ttt::kernels
