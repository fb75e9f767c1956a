#include "kernels/inner_step.h"

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
  for (int t = 0; t < tensors.count; ++t) {
    const G* g = static_cast<const G*>(tensors.at[t].grad);
    for_each_pack<kVec>(tensors.at[t].n, [&](int64_t j) {
      float v[kVec];
      load_pack<kVec>(g, j, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) sum += v[m] * v[m];
    });
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
    const float squares = block_sum_of<kThreads>(partials, kBlocks);
    const float norm = sqrtf(squares > 0.f ? squares : 1.f);
    factor = __fmul_rn(factor, __fdiv_rn(clip, fmaxf(norm, clip)));
  }
  for (int t = 0; t < tensors.count; ++t) {
    const SgdTensor& x = tensors.at[t];
    const G* g = static_cast<const G*>(x.grad);
    for_each_pack<kVec>(x.n, [&](int64_t j) {
      float w[kVec], d[kVec];
      load_pack<kVec>(x.weights, j, w);
      load_pack<kVec>(g, j, d);
#pragma unroll
      for (int m = 0; m < kVec; ++m) w[m] = __fsub_rn(w[m], __fmul_rn(factor, d[m]));
      store_pack(x.out, j, w);
    });
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
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    const G* g = static_cast<const G*>(x.grad);
    for_each_pack<kVec>(x.n, [&](int64_t j) {
      float a[kVec], v[kVec];
      load_pack<kVec>(x.adjoint, j, a);
      load_pack<kVec>(g, j, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) {
        dot += a[m] * v[m];
        squares += v[m] * v[m];
      }
    });
  }
  dot = block_sum<kThreads>(dot);
  squares = block_sum<kThreads>(squares);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = dot;
    partials[kBlocks + blockIdx.x] = squares;
  }
}

// dg = -f A + c g (where asked) and d(step) = -s k, from the partials (clipped_sgd_backward's
// formulas).
template <typename G, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_update(SgdAdjoints tensors, const float* partials, const float* step_size, float clip, float* step_grad) {
  const float dot = block_sum_of<kThreads>(partials, kBlocks);
  const float squares = block_sum_of<kThreads>(partials + kBlocks, kBlocks);
  const float norm = sqrtf(squares > 0.f ? squares : 1.f);
  const bool binds = clip > 0.f && norm > clip;
  const float scale = binds ? __fdiv_rn(clip, norm) : 1.f;
  const float factor = __fmul_rn(*step_size, scale);
  const float coef = binds ? factor * dot / (norm * norm) : 0.f;
  if (step_grad != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *step_grad = -scale * dot;
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    if (x.grad_out == nullptr) continue;
    const G* g = static_cast<const G*>(x.grad);
    G* out = static_cast<G*>(x.grad_out);
    for_each_pack<kVec>(x.n, [&](int64_t j) {
      float a[kVec], v[kVec];
      load_pack<kVec>(x.adjoint, j, a);
      load_pack<kVec>(g, j, v);
#pragma unroll
      for (int m = 0; m < kVec; ++m) v[m] = coef * v[m] - factor * a[m];
      store_pack(out, j, v);
    });
  }
}

template <typename G>
const char* launch_backward(const SgdAdjoints& tensors, const float* step_size, float clip, float* partials,
                            float* step_grad, cudaStream_t stream) {
  bool packed = true, writes = false;  // packs as launch's; whether any dg is asked
  for (int t = 0; t < tensors.count; ++t) {
    const SgdAdjoint& x = tensors.at[t];
    packed = packed && packs_fit<float>(x.adjoint, x.n, 4) && packs_fit<G>({x.grad, x.grad_out}, x.n, 4);
    writes = writes || x.grad_out != nullptr;
  }
  const int update_blocks = writes ? kBlocks : 1;  // d(step) alone: block 0's
  if (packed) {
    dot_and_squares<G, 4><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    backward_update<G, 4><<<update_blocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip, step_grad);
  } else {
    dot_and_squares<G, 1><<<kBlocks, kThreads, 0, stream>>>(tensors, partials);
    backward_update<G, 1><<<update_blocks, kThreads, 0, stream>>>(tensors, partials, step_size, clip, step_grad);
  }
  return launched();
}

// Copies `count` descriptions (at most kSgdMaxTensors) into the kernels' argument struct.
template <typename All, typename One>
bool gather(const One* tensors, int count, All& all) {
  if (count < 0 || count > kSgdMaxTensors) return false;
  for (int t = 0; t < count; ++t) all.at[t] = tensors[t];
  all.count = count;
  return true;
}

}  // namespace

int64_t clipped_sgd_partials() { return kBlocks; }
int64_t clipped_sgd_backward_partials() { return 2 * kBlocks; }

const char* clipped_sgd_step(const SgdTensor* tensors, int count, Storage grad_type, const float* step_size, float clip,
                             float* partials, void* stream) {
  SgdTensors all{};
  if (!gather(tensors, count, all)) return "too many tensors for one launch";
  return with_storage_type(grad_type, [&](auto tag) {
    return launch<decltype(tag)>(all, step_size, clip, partials, static_cast<cudaStream_t>(stream));
  });
}

const char* clipped_sgd_backward(const SgdAdjoint* tensors, int count, Storage grad_type, const float* step_size,
                                 float clip, float* partials, float* step_grad, void* stream) {
  SgdAdjoints all{};
  if (!gather(tensors, count, all)) return "too many tensors for one launch";
  return with_storage_type(grad_type, [&](auto tag) {
    return launch_backward<decltype(tag)>(all, step_size, clip, partials, step_grad, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace ttt::kernels
