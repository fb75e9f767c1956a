#include "kernels/common.cuh"
#include "kernels/window_merge.h"

namespace ttt::kernels {
namespace {

struct Parts {
  WindowPart part[kMaxWindowParts];
  int count;
};

constexpr int kWarps = 8;

// A warp per (query, head): its lanes walk the head's dimensions.
template <typename T>
__global__ void window_merge_kernel(Parts parts, int64_t heads, int64_t queries, int64_t head_dim, T* out,
                                    float* lse_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= heads * queries) return;
  const int64_t q = row / heads, h = row % heads;
  const int lane = threadIdx.x % 32;
  float lse[kMaxWindowParts];
  int64_t base[kMaxWindowParts];
  float m = -INFINITY;
  for (int k = 0; k < parts.count; ++k) {
    const WindowPart& p = parts.part[k];
    const int64_t r = p.reversed ? queries - 1 - q : q;
    lse[k] = p.lse[h * queries + r];
    base[k] = h * p.head_stride + r * p.query_stride;
    m = fmaxf(m, lse[k]);
  }
  float sum = 0.f;
  for (int k = 0; k < parts.count; ++k) sum += expf(lse[k] - m);
  const float total = m + logf(sum);
  float weight[kMaxWindowParts];
  for (int k = 0; k < parts.count; ++k) weight[k] = expf(lse[k] - total);
  T* o = out + (q * heads + h) * head_dim;
  for (int64_t i = lane; i < head_dim; i += 32) {
    float acc = 0.f;
    for (int k = 0; k < parts.count; ++k) acc += weight[k] * load(static_cast<const T*>(parts.part[k].out), base[k] + i);
    store(o, i, acc);
  }
  if (lane == 0) lse_out[h * queries + q] = total;
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
  const dim3 grid(static_cast<unsigned>((rows + kWarps - 1) / kWarps)), block(kWarps * 32);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Storage::kBFloat16:
      window_merge_kernel<<<grid, block, 0, s>>>(all, heads, queries, head_dim, static_cast<__nv_bfloat16*>(out), lse);
      break;
    case Storage::kFloat16:
      window_merge_kernel<<<grid, block, 0, s>>>(all, heads, queries, head_dim, static_cast<__half*>(out), lse);
      break;
    default:
      return "window_merge takes bf16 or fp16";
  }
  return launched();
}

}  // namespace ttt::kernels
