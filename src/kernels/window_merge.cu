#include "kernels/common.cuh"
#include "kernels/window_merge.h"

namespace ttt::kernels {
namespace {

struct Parts {
  WindowPart part[kMaxWindowParts];
  int count;
};

// A thread per kVec elements of a (query, head) row.
template <typename T, int kVec>
__global__ void window_merge_kernel(Parts parts, int64_t heads, int64_t queries, int64_t head_dim, T* out,
                                    float* lse_out) {
  const int64_t packs = head_dim / kVec;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= heads * queries * packs) return;
  const int64_t row = id / packs, pack = id % packs;
  const int64_t q = row / heads, h = row % heads;
  float lse[kMaxWindowParts];
  int64_t at[kMaxWindowParts];
  float m = -INFINITY;
  for (int k = 0; k < parts.count; ++k) {
    const WindowPart& p = parts.part[k];
    const int64_t r = p.reversed ? queries - 1 - q : q;
    lse[k] = p.lse[h * queries + r];
    at[k] = h * p.head_stride + r * p.query_stride + pack * kVec;
    m = fmaxf(m, lse[k]);
  }
  float sum = 0.f;
  for (int k = 0; k < parts.count; ++k) sum += expf(lse[k] - m);
  const float total = m + logf(sum);
  float acc[kVec] = {};
  for (int k = 0; k < parts.count; ++k) {
    const float weight = expf(lse[k] - total);
    const Pack<T, kVec> in = *reinterpret_cast<const Pack<T, kVec>*>(static_cast<const T*>(parts.part[k].out) + at[k]);
    for (int i = 0; i < kVec; ++i) acc[i] += weight * to_float(in.v[i]);
  }
  Pack<T, kVec> result;
  for (int i = 0; i < kVec; ++i) result.v[i] = from_float<T>(acc[i]);
  *reinterpret_cast<Pack<T, kVec>*>(out + row * head_dim + pack * kVec) = result;
  if (pack == 0) lse_out[h * queries + q] = total;
}

template <typename T>
void launch(const Parts& all, int64_t heads, int64_t queries, int64_t head_dim, bool wide, T* out, float* lse,
            cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t threads = heads * queries * (wide ? head_dim / 8 : head_dim);
  const dim3 grid(static_cast<unsigned>((threads + kThreads - 1) / kThreads)), block(kThreads);
  if (wide) {
    window_merge_kernel<T, 8><<<grid, block, 0, stream>>>(all, heads, queries, head_dim, out, lse);
  } else {
    window_merge_kernel<T, 1><<<grid, block, 0, stream>>>(all, heads, queries, head_dim, out, lse);
  }
}

}  // namespace

const char* window_merge(const WindowPart* parts, int count, Storage type, int64_t heads, int64_t queries,
                         int64_t head_dim, void* out, float* lse, void* stream) {
  if (count < 1 || count > kMaxWindowParts) return "window_merge takes 1 to 3 parts";
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  Parts all{};
  for (int k = 0; k < count; ++k) all.part[k] = parts[k];
  all.count = count;
  // 16-byte packs where every row starts on one.
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  bool wide = head_dim % 8 == 0 && aligned(out);
  for (int k = 0; k < count; ++k) {
    wide = wide && aligned(parts[k].out) && parts[k].head_stride % 8 == 0 && parts[k].query_stride % 8 == 0;
  }
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Storage::kBFloat16:
      launch(all, heads, queries, head_dim, wide, static_cast<__nv_bfloat16*>(out), lse, s);
      break;
    case Storage::kFloat16:
      launch(all, heads, queries, head_dim, wide, static_cast<__half*>(out), lse, s);
      break;
    default:
      return "window_merge takes bf16 or fp16";
  }
  return launched();
}

}  // namespace ttt::kernels
