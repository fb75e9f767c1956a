#include "kernels/inner_step.h"

#include <type_traits>

#include "kernels/common.cuh"

namespace ttt::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocks = 512;  // also the partials' count: every block sums them all

struct SgdTensors {
  SgdTensor at[kSgdMaxTensors];
  int count;
};

// Block b's partial sum of g^2 over every tensor (kVec values a thread at a time).
template <typename G, int kVec>
__global__ void __launch_bounds__(kThreads) sum_squares(SgdTensors tensors, float* partials) {
  float sum = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int t = 0; t < tensors.count; ++t) {
    const G* g = static_cast<const G*>(tensors.at[t].grad);
    const int64_t packs = tensors.at[t].n / kVec;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < packs; i += stride) {
      float v[kVec];
      load_pack<kVec>(g, i * kVec, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) sum += v[m] * v[m];
    }
  }
  sum = block_sum<kThreads>(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// W' = W - factor * g, the factor from the partials as the composable form takes it.
template <typename G, int kVec>
__global__ void __launch_bounds__(kThreads)
    update(SgdTensors tensors, const float* partials, const float* step_size, float clip) {
  float factor = *step_size;
  if (clip > 0.f) {  // else no partials were summed
    float sum = 0.f;
    for (int i = threadIdx.x; i < kBlocks; i += kThreads) sum += partials[i];
    const float squares = block_sum<kThreads>(sum);
    const float norm = sqrtf(squares > 0.f ? squares : 1.f);
    factor = __fmul_rn(factor, __fdiv_rn(clip, fmaxf(norm, clip)));
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int t = 0; t < tensors.count; ++t) {
    const SgdTensor& x = tensors.at[t];
    const G* g = static_cast<const G*>(x.grad);
    const int64_t packs = x.n / kVec;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < packs; i += stride) {
      float w[kVec], d[kVec];
      load_pack<kVec>(x.weights, i * kVec, w);
      load_pack<kVec>(g, i * kVec, d);
#pragma unroll
      for (int m = 0; m < kVec; ++m) w[m] = __fsub_rn(w[m], __fmul_rn(factor, d[m]));
      store_pack(x.out, i * kVec, w);
    }
  }
}

template <typename G>
const char* launch(const SgdTensors& tensors, const float* step_size, float clip, float* partials,
                   cudaStream_t stream) {
  bool packed = true;  // 4 values a thread: 16 bytes of fp32, 8 of bf16 or fp16
  for (int t = 0; t < tensors.count; ++t) {
    const SgdTensor& x = tensors.at[t];
    packed = packed && packs_fit<float>({x.weights, x.out}, x.n, 4) && packs_fit<G>(x.grad, x.n, 4);
  }
  if (packed) {
    if (clip > 0.f) sum_squares<G, 4><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    update<G, 4><<<kBlocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip);
  } else {
    if (clip > 0.f) sum_squares<G, 1><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    update<G, 1><<<kBlocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip);
  }
  return launched();
}

struct SgdAdjoints {
  SgdAdjoint at[kSgdMaxTensors];
  int count;
};

// Block b's partial sums of A g into partials[b] and of g^2 into partials[kBlocks + b].
template <typename G, int kVec>
__global__ void __launch_bounds__(kThreads) dot_and_squares(SgdAdjoints tensors, float* partials) {
  float dot = 0.f, squares = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    const G* g = static_cast<const G*>(x.grad);
    const int64_t packs = x.n / kVec;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < packs; i += stride) {
      float a[kVec], v[kVec];
      load_pack<kVec>(x.adjoint, i * kVec, a);
      load_pack<kVec>(g, i * kVec, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) {
        dot += a[m] * v[m];
        squares += v[m] * v[m];
      }
    }
  }
  dot = block_sum<kThreads>(dot);
  squares = block_sum<kThreads>(squares);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = dot;
    partials[kBlocks + blockIdx.x] = squares;
  }
}

// dg = -f A + c g and d(step) = -s k, from the partials (clipped_sgd_backward's formulas).
template <typename G, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_update(SgdAdjoints tensors, const float* partials, const float* step_size, float clip, float* step_grad) {
  float dot = 0.f, squares = 0.f;
  for (int i = threadIdx.x; i < kBlocks; i += kThreads) {
    dot += partials[i];
    squares += partials[kBlocks + i];
  }
  dot = block_sum<kThreads>(dot);
  squares = block_sum<kThreads>(squares);
  const float norm = sqrtf(squares > 0.f ? squares : 1.f);
  const bool binds = clip > 0.f && norm > clip;
  const float scale = binds ? __fdiv_rn(clip, norm) : 1.f;
  const float factor = __fmul_rn(*step_size, scale);
  const float coef = binds ? factor * dot / (norm * norm) : 0.f;
  if (step_grad != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *step_grad = -scale * dot;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    const G* g = static_cast<const G*>(x.grad);
    G* out = static_cast<G*>(x.grad_out);
    const int64_t packs = x.n / kVec;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < packs; i += stride) {
      float a[kVec], v[kVec];
      load_pack<kVec>(x.adjoint, i * kVec, a);
      load_pack<kVec>(g, i * kVec, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) v[m] = coef * v[m] - factor * a[m];
      store_pack(out, i * kVec, v);
    }
  }
}

template <typename G>
const char* launch_backward(const SgdAdjoints& tensors, const float* step_size, float clip, float* partials,
                            float* step_grad, cudaStream_t stream) {
  bool packed = true;  // as launch's
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    packed = packed && packs_fit<float>(x.adjoint, x.n, 4) && packs_fit<G>({x.grad, x.grad_out}, x.n, 4);
  }
  if (packed) {
    dot_and_squares<G, 4><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    backward_update<G, 4><<<kBlocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip, step_grad);
  } else {
    dot_and_squares<G, 1><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    backward_update<G, 1><<<kBlocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip, step_grad);
  }
  return launched();
}

}  // namespace

int64_t clipped_sgd_partials() { return kBlocks; }
int64_t clipped_sgd_backward_partials() { return 2 * kBlocks; }

const char* clipped_sgd_step(const SgdTensor* tensors, int count, Storage grad_type, const float* step_size, float clip,
                             float* partials, void* stream) {
  if (count < 0 || count > kSgdMaxTensors) return "too many tensors for one launch";
  SgdTensors all{};
  for (int t = 0; t < count; ++t) all.at[t] = tensors[t];
  all.count = count;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (grad_type) {
    case Storage::kBFloat16:
      return launch<__nv_bfloat16>(all, step_size, clip, partials, s);
    case Storage::kFloat16:
      return launch<__half>(all, step_size, clip, partials, s);
    default:
      return launch<float>(all, step_size, clip, partials, s);
  }
}

const char* clipped_sgd_backward(const SgdAdjoint* tensors, int count, Storage grad_type, const float* step_size,
                                 float clip, float* partials, float* step_grad, void* stream) {
  if (count < 0 || count > kSgdMaxTensors) return "too many tensors for one launch";
  SgdAdjoints all{};
  for (int t = 0; t < count; ++t) all.at[t] = tensors[t];
  all.count = count;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (grad_type) {
    case Storage::kBFloat16:
      return launch_backward<__nv_bfloat16>(all, step_size, clip, partials, step_grad, s);
    case Storage::kFloat16:
      return launch_backward<__half>(all, step_size, clip, partials, step_grad, s);
    default:
      return launch_backward<float>(all, step_size, clip, partials, step_grad, s);
  }
}

}  // namespace ttt::kernels
