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
  // Unrolled over the most parts there can be, so that lse and at stay in registers.
  float lse[kMaxWindowParts];
  int64_t at[kMaxWindowParts];
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < kMaxWindowParts; ++k) {
    if (k >= parts.count) break;
    const WindowPart& p = parts.part[k];
    const int64_t r = p.reversed ? queries - 1 - q : q;
    lse[k] = p.lse[h * queries + r];
    at[k] = h * p.head_stride + r * p.query_stride + pack * kVec;
    m = fmaxf(m, lse[k]);
  }
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxWindowParts; ++k) {
    if (k < parts.count) sum += expf(lse[k] - m);
  }
  const float total = m + logf(sum);
  float acc[kVec] = {};
#pragma unroll
  for (int k = 0; k < kMaxWindowParts; ++k) {
    if (k >= parts.count) break;
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

struct PartGrads {
  WindowPartGrads part[kMaxWindowParts];
  int count;
};

template <typename T, int kVec>
__device__ __forceinline__ void load_rows(const PartRows& rows, int64_t h, int64_t r, int64_t pack,
                                          float (&out)[kVec]) {
  load_pack<kVec>(static_cast<const T*>(rows.at), h * rows.head_stride + r * rows.row_stride + pack * kVec, out);
}

// A thread per kVec elements of a row of dq, then of dk, then of dv.
template <typename T, int kVec>
__global__ void window_part_grads_kernel(PartGrads parts, int64_t heads, int64_t queries, int64_t keys,
                                         int64_t head_dim, T* dq, T* dk, T* dv) {
  const int64_t packs = head_dim / kVec;
  const int64_t query_threads = queries * heads * packs, key_threads = keys * heads * packs;
  int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id < query_threads) {
    const int64_t row = id / packs, pack = id % packs, t = row / heads, h = row % heads;
    float sum[kVec] = {};
    for (int k = 0; k < parts.count; ++k) {
      float v[kVec];
      load_rows<T, kVec>(parts.part[k].dq, h, parts.part[k].reversed ? queries - 1 - t : t, pack, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum[i] += v[i];
    }
    store_pack(dq, row * head_dim + pack * kVec, sum);
    return;
  }
  id -= query_threads;
  if (id >= 2 * key_threads) return;
  const bool values = id >= key_threads;
  if (values) id -= key_threads;
  const int64_t row = id / packs, pack = id % packs, t = row / heads, h = row % heads;
  int k = 0;
  int64_t first = 0;  // the part's first key among all
  while (k + 1 < parts.count && t >= first + parts.part[k].keys) first += parts.part[k++].keys;
  const WindowPartGrads& p = parts.part[k];
  float v[kVec];
  load_rows<T, kVec>(values ? p.dv : p.dk, h, p.reversed ? p.keys - 1 - (t - first) : t - first, pack, v);
  store_pack(values ? dv : dk, row * head_dim + pack * kVec, v);
}

template <typename T>
void launch_grads(const PartGrads& all, int64_t heads, int64_t queries, int64_t keys, int64_t head_dim, bool wide,
                  T* dq, T* dk, T* dv, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t threads = heads * (queries + 2 * keys) * (wide ? head_dim / 8 : head_dim);
  const dim3 grid(static_cast<unsigned>((threads + kThreads - 1) / kThreads)), block(kThreads);
  if (wide) {
    window_part_grads_kernel<T, 8><<<grid, block, 0, stream>>>(all, heads, queries, keys, head_dim, dq, dk, dv);
  } else {
    window_part_grads_kernel<T, 1><<<grid, block, 0, stream>>>(all, heads, queries, keys, head_dim, dq, dk, dv);
  }
}

// Whether rows of 8 two-byte elements, head_stride and row_stride apart from at, each start on
// 16 bytes: the packs the kernels' wide path loads.
bool packs_aligned(const void* at, int64_t head_stride, int64_t row_stride) {
  return reinterpret_cast<uintptr_t>(at) % 16 == 0 && head_stride % 8 == 0 && row_stride % 8 == 0;
}

}  // namespace

const char* window_part_grads(const WindowPartGrads* parts, int count, Storage type, int64_t heads, int64_t queries,
                              int64_t head_dim, void* dq, void* dk, void* dv, void* stream) {
  if (count < 1 || count > kMaxWindowParts) return "window_part_grads takes 1 to 3 parts";
  PartGrads all{};
  int64_t keys = 0;
  for (int k = 0; k < count; ++k) {
    all.part[k] = parts[k];
    keys += parts[k].keys;
  }
  all.count = count;
  if (heads * (queries + keys) * head_dim == 0) return nullptr;
  const auto rows_aligned = [](const PartRows& r) { return packs_aligned(r.at, r.head_stride, r.row_stride); };
  bool wide = head_dim % 8 == 0 && packs_aligned(dq, 0, 0) && packs_aligned(dk, 0, 0) && packs_aligned(dv, 0, 0);
  for (int k = 0; k < count; ++k) {
    wide = wide && rows_aligned(parts[k].dq) && rows_aligned(parts[k].dk) && rows_aligned(parts[k].dv);
  }
  const auto s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case Storage::kBFloat16:
      launch_grads(all, heads, queries, keys, head_dim, wide, static_cast<__nv_bfloat16*>(dq),
                   static_cast<__nv_bfloat16*>(dk), static_cast<__nv_bfloat16*>(dv), s);
      break;
    case Storage::kFloat16:
      launch_grads(all, heads, queries, keys, head_dim, wide, static_cast<__half*>(dq), static_cast<__half*>(dk),
                   static_cast<__half*>(dv), s);
      break;
    default:
      return "window_part_grads takes bf16 or fp16";
  }
  return launched();
}

const char* window_merge(const WindowPart* parts, int count, Storage type, int64_t heads, int64_t queries,
                         int64_t head_dim, void* out, float* lse, void* stream) {
  if (count < 1 || count > kMaxWindowParts) return "window_merge takes 1 to 3 parts";
  const int64_t rows = heads * queries;
  if (rows == 0) return nullptr;
  Parts all{};
  for (int k = 0; k < count; ++k) all.part[k] = parts[k];
  all.count = count;
  bool wide = head_dim % 8 == 0 && packs_aligned(out, 0, 0);
  for (int k = 0; k < count; ++k) {
    wide = wide && packs_aligned(parts[k].out, parts[k].head_stride, parts[k].query_stride);
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
