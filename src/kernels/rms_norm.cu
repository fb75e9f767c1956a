#include "kernels/common.cuh"
#include "kernels/rms_norm.h"

#include <initializer_list>
#include <type_traits>

namespace ttt::kernels {
namespace {

// A warp per row (rows are 64 to a few thousand values), four rows per block.
constexpr int kWarps = 4;

// Rows are read kVec values at a time (a lane's pack; kVec = 1 where the rows or pointers
// do not allow packs): rows_packs below picks it.

// y = x * r * gain, or with `residual` (then Y is float) residual + that, rounded as the
// sum of the two fp32 tensors would be; rstd written unless null.
template <typename X, typename Y, int kVec>
__global__ void __launch_bounds__(32 * kWarps)
    forward_rows(const X* __restrict__ x, const float* __restrict__ gain, int64_t rows, int64_t dim, float eps,
                 const float* __restrict__ residual, Y* __restrict__ y, float* __restrict__ rstd) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const X* in = x + row * dim;
  float squares = 0.f;
  for (int64_t j = lane * kVec; j < dim; j += 32 * kVec) {
    float v[kVec];
    load_pack(in, j, v);
#pragma unroll
    for (int m = 0; m < kVec; ++m) squares += v[m] * v[m];
  }
  const float r = rsqrtf(warp_sum(squares) / static_cast<float>(dim) + eps);
  Y* out = y + row * dim;
  const float* add = residual == nullptr ? nullptr : residual + row * dim;
  for (int64_t j = lane * kVec; j < dim; j += 32 * kVec) {
    float v[kVec], g[kVec];
    load_pack(in, j, v);
    load_pack(gain, j, g);
#pragma unroll
    for (int m = 0; m < kVec; ++m) v[m] = v[m] * r * g[m];
    if (add != nullptr) {
      float a[kVec];
      load_pack(add, j, a);
#pragma unroll
      for (int m = 0; m < kVec; ++m) v[m] = __fadd_rn(a[m], v[m]);
    }
    store_pack(out, j, v);
  }
  if (lane == 0 && rstd != nullptr) rstd[row] = r;
}

template <typename X, typename Y, int kVec>
__global__ void __launch_bounds__(32 * kWarps)
    backward_rows(const X* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ rstd,
                  const Y* __restrict__ dy, int64_t rows, int64_t dim, X* __restrict__ dx) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const X* in = x + row * dim;
  const Y* grad = dy + row * dim;
  float dot = 0.f;
  for (int64_t j = lane * kVec; j < dim; j += 32 * kVec) {
    float v[kVec], g[kVec], d[kVec];
    load_pack(in, j, v);
    load_pack(gain, j, g);
    load_pack(grad, j, d);
#pragma unroll
    for (int m = 0; m < kVec; ++m) dot += g[m] * d[m] * v[m];
  }
  dot = warp_sum(dot);
  const float r = rstd[row], correction = r * r * r / static_cast<float>(dim) * dot;
  X* out = dx + row * dim;
  for (int64_t j = lane * kVec; j < dim; j += 32 * kVec) {
    float v[kVec], g[kVec], d[kVec];
    load_pack(in, j, v);
    load_pack(gain, j, g);
    load_pack(grad, j, d);
#pragma unroll
    for (int m = 0; m < kVec; ++m) v[m] = r * g[m] * d[m] - correction * v[m];
    store_pack(out, j, v);
  }
}

// The backward's own backward, per row (see rms_norm.h), with u and w the adjoints of dx and
// dgain (either null: zero). Writes what is asked for (non-null): grad_x, grad_dy, and the
// row's coefficient of x in the gain's gradient, -r^3 / dim * <u, x>.
template <typename X, typename Y>
__global__ void __launch_bounds__(32 * kWarps)
    double_backward_rows(const X* __restrict__ x, const float* __restrict__ gain, const float* __restrict__ rstd,
                         const Y* __restrict__ dy, const X* __restrict__ u, const float* __restrict__ w, int64_t rows,
                         int64_t dim, X* __restrict__ grad_x, Y* __restrict__ grad_dy,
                         float* __restrict__ x_coefficient) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const X* in = x + row * dim;
  const Y* grad = dy + row * dim;
  const X* adjoint = u == nullptr ? nullptr : u + row * dim;
  float s = 0.f, U = 0.f, Xu = 0.f, W = 0.f;  // <a, x>, <u, a>, <u, x>, <w * dy, x>; a = gain * dy
  for (int64_t j = lane; j < dim; j += 32) {
    const float xj = load(in, j), dyj = load(grad, j), aj = gain[j] * dyj;
    s += aj * xj;
    if (adjoint != nullptr) {
      const float uj = load(adjoint, j);
      U += uj * aj;
      Xu += uj * xj;
    }
    if (w != nullptr) W += w[j] * dyj * xj;
  }
  s = warp_sum(s);
  U = warp_sum(U);
  Xu = warp_sum(Xu);
  W = warp_sum(W);
  const float r = rstd[row], D = static_cast<float>(dim), c = r * r * r / D;
  const float x_scale = 3.f * r * r * r * r * r * s * Xu / (D * D) - c * U - c * W;
  for (int64_t j = lane; j < dim; j += 32) {
    const float xj = load(in, j), dyj = load(grad, j), uj = adjoint == nullptr ? 0.f : load(adjoint, j);
    const float wj = w == nullptr ? 0.f : w[j];
    if (grad_x != nullptr) {
      store(grad_x + row * dim, j, xj * x_scale - c * (Xu * gain[j] * dyj + s * uj) + r * wj * dyj);
    }
    if (grad_dy != nullptr) store(grad_dy + row * dim, j, gain[j] * (r * uj - c * Xu * xj) + r * wj * xj);
  }
  if (lane == 0 && x_coefficient != nullptr) x_coefficient[row] = -c * Xu;
}

// The gain's gradient, summed over blocks of kChunkRows rows by a thread per column:
// partial[chunk, j] = sum over the chunk's rows of a[r, j] * (alpha[r] * b[r, j] + beta[r] * e[r, j])
// (e and beta may be null). Chunks stride over the grid's y, which stops at 65535: 1M rows of
// per-head norms (128K tokens, 8 heads) are 65536 chunks.
constexpr int kColumns = 64;  // many small blocks: a chunk is few rows, dim may be a head's 64
constexpr int64_t kMaxGridY = 65535;
template <typename A, typename B>
__global__ void __launch_bounds__(kColumns)
    gain_partials(const A* __restrict__ a, const B* __restrict__ b, const float* __restrict__ alpha,
                  const B* __restrict__ e, const float* __restrict__ beta, int64_t rows, int64_t dim,
                  float* __restrict__ partial) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  if (j >= dim) return;
  const int64_t chunks = (rows + kRmsNormChunkRows - 1) / kRmsNormChunkRows;  // rms_norm_chunks, on the device
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t first = chunk * kRmsNormChunkRows;
    const int64_t last = first + kRmsNormChunkRows < rows ? first + kRmsNormChunkRows : rows;
    float sum = 0.f;
    for (int64_t row = first; row < last; ++row) {
      float term = alpha[row] * load(b, row * dim + j);
      if (e != nullptr) term += beta[row] * load(e, row * dim + j);
      sum += load(a, row * dim + j) * term;
    }
    partial[chunk * dim + j] = sum;
  }
}

template <typename A, typename B>
const char* launch_gain_partials(const A* a, const B* b, const float* alpha, const B* e, const float* beta,
                                 int64_t rows, int64_t dim, float* partial, void* stream) {
  const int64_t chunks = rms_norm_chunks(rows);
  const dim3 grid((dim + kColumns - 1) / kColumns, static_cast<unsigned>(chunks < kMaxGridY ? chunks : kMaxGridY));
  gain_partials<A, B>
      <<<grid, kColumns, 0, static_cast<cudaStream_t>(stream)>>>(a, b, alpha, e, beta, rows, dim, partial);
  return launched();
}

// The widest pack (8, 4 or 1 values) that rows of `dim` values at the X tensors, the Y tensors
// and the fp32 ones (null: none) take, as launch(std::integral_constant<int, kVec>()).
template <typename X, typename Y, typename Launch>
void with_packs(int64_t dim, std::initializer_list<const void*> xs, std::initializer_list<const void*> ys,
                std::initializer_list<const void*> wide, Launch launch) {
  const auto fit = [&](int vec) {
    return packs_fit<X>(xs, dim, vec) && packs_fit<Y>(ys, dim, vec) && packs_fit<float>(wide, dim, vec);
  };
  if (fit(8)) {
    launch(std::integral_constant<int, 8>());
  } else if (fit(4)) {
    launch(std::integral_constant<int, 4>());
  } else {
    launch(std::integral_constant<int, 1>());
  }
}

// Calls launch(X(), Y()) with the storage types named by the two dtypes.
template <typename Launch>
const char* with_types(Storage x_type, Storage y_type, Launch launch) {
  const bool x16 = x_type == Storage::kBFloat16, y16 = y_type == Storage::kBFloat16;
  if (x16 && y16) return launch(__nv_bfloat16(), __nv_bfloat16());
  if (x16) return launch(__nv_bfloat16(), float());
  if (y16) return launch(float(), __nv_bfloat16());
  return launch(float(), float());
}

}  // namespace

const char* rms_norm_forward(const void* x, Storage x_type, const float* gain, int64_t rows, int64_t dim, double eps,
                             void* y, Storage y_type, float* rstd, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16 || y_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  return with_types(x_type, y_type, [&](auto x_tag, auto y_tag) {
    using X = decltype(x_tag);
    using Y = decltype(y_tag);
    with_packs<X, Y>(dim, {x}, {y}, {gain}, [&](auto vec) {
      forward_rows<X, Y, decltype(vec)::value>
          <<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
              static_cast<const X*>(x), gain, rows, dim, static_cast<float>(eps), nullptr, static_cast<Y*>(y), rstd);
    });
    return launched();
  });
}

const char* rms_norm_add_forward(const float* residual, const void* x, Storage x_type, const float* gain, int64_t rows,
                                 int64_t dim, double eps, float* y, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  return with_types(x_type, Storage::kFloat32, [&](auto x_tag, auto) {
    using X = decltype(x_tag);
    with_packs<X, float>(dim, {x}, {y}, {gain, residual}, [&](auto vec) {
      forward_rows<X, float, decltype(vec)::value>
          <<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
              static_cast<const X*>(x), gain, rows, dim, static_cast<float>(eps), residual, y, nullptr);
    });
    return launched();
  });
}

const char* rms_norm_backward(const void* x, Storage x_type, const float* gain, const float* rstd, const void* dy,
                              Storage y_type, int64_t rows, int64_t dim, void* dx, float* gain_partials, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16 || y_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  return with_types(x_type, y_type, [&](auto x_tag, auto y_tag) -> const char* {
    using X = decltype(x_tag);
    using Y = decltype(y_tag);
    const auto launch = [&](auto vec) {
      backward_rows<X, Y, decltype(vec)::value>
          <<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
              static_cast<const X*>(x), gain, rstd, static_cast<const Y*>(dy), rows, dim, static_cast<X*>(dx));
    };
    with_packs<X, Y>(dim, {x, dx}, {dy}, {gain}, launch);
    if (const char* error = launched(); error != nullptr || gain_partials == nullptr) return error;
    return launch_gain_partials(static_cast<const Y*>(dy), static_cast<const X*>(x), rstd,
                                static_cast<const X*>(nullptr), nullptr, rows, dim, gain_partials, stream);
  });
}

const char* rms_norm_double_backward(const void* x, Storage x_type, const float* gain, const float* rstd,
                                     const void* dy, Storage y_type, const void* u, const float* w, int64_t rows,
                                     int64_t dim, void* grad_x, void* grad_dy, float* gain_partials,
                                     float* x_coefficient, void* stream) {
  if (rows == 0) return nullptr;
  if (x_type == Storage::kFloat16 || y_type == Storage::kFloat16) return "rms_norm: fp16 is not supported";
  if (gain_partials != nullptr && (u == nullptr || x_coefficient == nullptr)) {
    return "rms_norm: the gain's gradient of the backward needs u and x_coefficient";
  }
  return with_types(x_type, y_type, [&](auto x_tag, auto y_tag) -> const char* {
    using X = decltype(x_tag);
    using Y = decltype(y_tag);
    double_backward_rows<X, Y><<<(rows + kWarps - 1) / kWarps, 32 * kWarps, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const X*>(x), gain, rstd, static_cast<const Y*>(dy), static_cast<const X*>(u), w, rows, dim,
        static_cast<X*>(grad_x), static_cast<Y*>(grad_dy), gain_partials == nullptr ? nullptr : x_coefficient);
    if (const char* error = launched(); error != nullptr || gain_partials == nullptr) return error;
    return launch_gain_partials(static_cast<const Y*>(dy), static_cast<const X*>(u), rstd, static_cast<const X*>(x),
                                x_coefficient, rows, dim, gain_partials, stream);
  });
}

}  // namespace ttt::kernels
