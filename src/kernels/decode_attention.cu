#include "kernels/common.cuh"
#include "kernels/decode_attention.h"

namespace ttt::kernels {
namespace {

// A block of kThreads threads per (range of keys, head). Each warp takes chunks of 32 keys:
// a lane scores its key (one 16-byte vector of the key's row at a time, q from shared memory)
// while the warp's loads of the chunk's value rows are in flight too, then the chunk joins the
// warp's running softmax (max, sum, weighted values) through shuffles. Decode is latency-bound:
// a chunk costs one trip to memory, and every warp's chunks are in flight at once. Ranges are
// long enough that there are about kTargetRanges per head and at most kMaxChunksPerWarp chunks
// per warp.
constexpr int kThreads = 128, kWarps = kThreads / 32;
constexpr int64_t kTargetRanges = 96, kMaxChunksPerWarp = 1 << 20;

int64_t chunks_per_warp(int64_t capacity) {
  const int64_t per_warp = (capacity + kThreads * kTargetRanges - 1) / (kThreads * kTargetRanges);
  return per_warp < 1 ? 1 : (per_warp > kMaxChunksPerWarp ? kMaxChunksPerWarp : per_warp);
}
int64_t ranges_for(int64_t capacity) {
  const int64_t keys_per_range = kThreads * chunks_per_warp(capacity);
  return (capacity + keys_per_range - 1) / keys_per_range;
}

// 16 bytes of a row as fp32 values: 8 bf16 or 4 floats.
template <typename T>
struct Vector;
template <>
struct Vector<__nv_bfloat16> {
  static constexpr int kSize = 8;
  __device__ static void load(const __nv_bfloat16* p, float* out) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};
template <>
struct Vector<float> {
  static constexpr int kSize = 4;
  __device__ static void load(const float* p, float* out) {
    const float4 raw = *reinterpret_cast<const float4*>(p);
    out[0] = raw.x;
    out[1] = raw.y;
    out[2] = raw.z;
    out[3] = raw.w;
  }
};

// Elements (2i, 2i + 1) of a row, as stored (one 4-byte or 8-byte load), and as fp32.
__device__ __forceinline__ __nv_bfloat162 load_pair(const __nv_bfloat16* row, int i) {
  return reinterpret_cast<const __nv_bfloat162*>(row)[i];
}
__device__ __forceinline__ float2 load_pair(const float* row, int i) { return reinterpret_cast<const float2*>(row)[i]; }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(float2 v) { return v; }
template <typename T>
struct PairOf {
  using Type = float2;
};
template <>
struct PairOf<__nv_bfloat16> {
  using Type = __nv_bfloat162;
};
template <typename T>
using Pair = typename PairOf<T>::Type;

__device__ __forceinline__ bool seen(int64_t key_position, int64_t token_position, int64_t window) {
  return key_position <= token_position && (window <= 0 || token_position - key_position < window);
}

// Per (range, head): the range's max score m, sum of exp(s - m), and sum of exp(s - m) v,
// into scratch as [heads][ranges] values and [heads][ranges][head_dim] sums.
template <typename T, int kMaxDim>
__global__ void __launch_bounds__(kThreads)
    range_kernel(const float* __restrict__ q, const T* __restrict__ keys, const T* __restrict__ values,
                 const int64_t* __restrict__ slot_positions, const int64_t* __restrict__ token_position,
                 int64_t capacity, int heads, int dim, int64_t window, float scale, int64_t per_warp,
                 float* __restrict__ range_max, float* __restrict__ range_sum, float* __restrict__ range_out) {
  constexpr int kVector = Vector<T>::kSize, kPairs = kMaxDim / 64;  // a lane's dimension pairs
  __shared__ float query[kMaxDim];                                  // read by every lane at once: broadcasts
  __shared__ float warp_out[kWarps][kMaxDim];
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  const int head = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t range = blockIdx.x, first = range * kThreads * per_warp;
  const int64_t row_stride = static_cast<int64_t>(heads) * dim, column = static_cast<int64_t>(head) * dim;
  const int64_t t = *token_position;
  // q * scale rounded as the keys' storage rounds (the matmul paths round their operands).
  for (int i = threadIdx.x; i < kMaxDim; i += kThreads) {
    query[i] = i < dim ? to_float(from_float<T>(q[head * dim + i] * scale)) : 0.f;
  }
  __syncthreads();

  float m = -INFINITY, l = 0.f, acc[2 * kPairs];
#pragma unroll
  for (int i = 0; i < 2 * kPairs; ++i) acc[i] = 0.f;
  for (int64_t c = 0; c < per_warp; ++c) {
    const int64_t base = first + (c * kWarps + warp) * 32;
    if (base >= capacity) break;  // the same for the whole warp
    const int64_t j = base + lane;
    const bool inside = j < capacity;
    // Issued together: the key's position and row, and the chunk's value rows (finite even
    // where unseen: rings start as zeros).
    const bool visible = inside && seen(slot_positions[j], t, window);
    float s = 0.f;
    if (inside) {
      const T* row = keys + j * row_stride + column;
#pragma unroll
      for (int i = 0; i < kMaxDim; i += kVector) {
        if (i < dim) {
          float k[kVector];
          Vector<T>::load(row + i, k);
#pragma unroll
          for (int e = 0; e < kVector; ++e) s += query[i + e] * k[e];
        }
      }
    }
    Pair<T> v[32][kPairs];
#pragma unroll
    for (int key = 0; key < 32; ++key) {
      const T* row = values + (base + key < capacity ? base + key : base) * row_stride + column;
#pragma unroll
      for (int c2 = 0; c2 < kPairs; ++c2) {
        const int pair = lane + 32 * c2;
        if (2 * pair < dim) v[key][c2] = load_pair(row, pair);
      }
    }
    s = visible ? s : -INFINITY;
    const float chunk_max = warp_max(s);
    if (chunk_max == -INFINITY) continue;                                   // nothing seen in the chunk
    const float m_new = fmaxf(m, chunk_max), correction = expf(m - m_new);  // exp(-inf) = 0 at the first
    const float p = visible ? expf(s - m_new) : 0.f;
    l = l * correction + warp_sum(p);
#pragma unroll
    for (int i = 0; i < 2 * kPairs; ++i) acc[i] *= correction;
#pragma unroll
    for (int key = 0; key < 32; ++key) {
      const float weight = __shfl_sync(0xffffffffu, p, key);  // 0 for keys past the ring's end
#pragma unroll
      for (int c2 = 0; c2 < kPairs; ++c2) {
        if (2 * (lane + 32 * c2) < dim) {
          const float2 f = to_float2(v[key][c2]);
          acc[2 * c2] += weight * f.x;
          acc[2 * c2 + 1] += weight * f.y;
        }
      }
    }
    m = m_new;
  }
#pragma unroll
  for (int c2 = 0; c2 < kPairs; ++c2) {
    const int pair = lane + 32 * c2;
    if (2 * pair < dim) {
      warp_out[warp][2 * pair] = acc[2 * c2];
      warp_out[warp][2 * pair + 1] = acc[2 * c2 + 1];
    }
  }
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
  __syncthreads();
  float range_m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) range_m = fmaxf(range_m, warp_m[w]);
  float weights[kWarps], range_l = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    weights[w] = range_m == -INFINITY ? 0.f : expf(warp_m[w] - range_m);
    range_l += weights[w] * warp_l[w];
  }
  const int64_t slot = static_cast<int64_t>(head) * gridDim.x + range;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += weights[w] * warp_out[w][i];
    range_out[slot * dim + i] = total;
  }
  if (threadIdx.x == 0) {
    range_max[slot] = range_m;
    range_sum[slot] = range_l;
  }
}

// Per head: the ranges' sums rescaled to the largest max, divided by the total. Warp w takes
// ranges w, w + kWarps, ...; lane l the dimensions l, l + 32, ...
template <typename Out, int kMaxDim>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* __restrict__ range_max, const float* __restrict__ range_sum,
                 const float* __restrict__ range_out, int64_t ranges, int dim, Out* __restrict__ out) {
  __shared__ float warp_out[kWarps][kMaxDim];
  const int head = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* maxes = range_max + static_cast<int64_t>(head) * ranges;
  const float* sums = range_sum + static_cast<int64_t>(head) * ranges;
  const float* outs = range_out + static_cast<int64_t>(head) * ranges * dim;
  float local = -INFINITY;
  for (int64_t r = threadIdx.x; r < ranges; r += kThreads) local = fmaxf(local, maxes[r]);
  const float m = block_reduce<kThreads>(
      local, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
  const auto weight = [&](int64_t r) { return m == -INFINITY ? 0.f : expf(maxes[r] - m); };  // exp(-inf) = 0
  float partial = 0.f;
  for (int64_t r = threadIdx.x; r < ranges; r += kThreads) partial += sums[r] * weight(r);
  const float total = block_sum<kThreads>(partial);
  float acc[kMaxDim / 32];
#pragma unroll
  for (int i = 0; i < kMaxDim / 32; ++i) acc[i] = 0.f;
#pragma unroll 4
  for (int64_t r = warp; r < ranges; r += kWarps) {
    const float w = weight(r);
#pragma unroll
    for (int i = 0; i < kMaxDim / 32; ++i) {
      if (lane + 32 * i < dim) acc[i] += w * outs[r * dim + lane + 32 * i];
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxDim / 32; ++i) {
    if (lane + 32 * i < dim) warp_out[warp][lane + 32 * i] = acc[i];
  }
  __syncthreads();
  const float inverse = total > 0.f ? 1.f / total : 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float value = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) value += warp_out[w][i];
    store(out, static_cast<int64_t>(head) * dim + i, value * inverse);
  }
}

template <typename T, int kMaxDim>
const char* launch(const float* q, const void* keys, const void* values, const int64_t* slot_positions,
                   const int64_t* token_position, int64_t capacity, int64_t heads, int64_t dim, int64_t window,
                   float scale, float* scratch, void* out, Storage out_type, cudaStream_t stream) {
  const int64_t per_warp = chunks_per_warp(capacity), ranges = ranges_for(capacity);
  float* range_max = scratch;
  float* range_sum = range_max + heads * ranges;
  float* range_out = range_sum + heads * ranges;
  range_kernel<T, kMaxDim><<<dim3(static_cast<unsigned>(ranges), static_cast<unsigned>(heads)), kThreads, 0, stream>>>(
      q, static_cast<const T*>(keys), static_cast<const T*>(values), slot_positions, token_position, capacity,
      static_cast<int>(heads), static_cast<int>(dim), window, scale, per_warp, range_max, range_sum, range_out);
  const char* error = launched();
  if (error != nullptr) return error;
  const dim3 grid(static_cast<unsigned>(heads));
  if (out_type == Storage::kBFloat16) {
    merge_kernel<__nv_bfloat16, kMaxDim><<<grid, kThreads, 0, stream>>>(
        range_max, range_sum, range_out, ranges, static_cast<int>(dim), static_cast<__nv_bfloat16*>(out));
  } else {
    merge_kernel<float, kMaxDim><<<grid, kThreads, 0, stream>>>(range_max, range_sum, range_out, ranges,
                                                                static_cast<int>(dim), static_cast<float*>(out));
  }
  return launched();
}

template <typename T>
const char* launch_for_dim(const float* q, const void* keys, const void* values, const int64_t* slot_positions,
                           const int64_t* token_position, int64_t capacity, int64_t heads, int64_t dim, int64_t window,
                           float scale, float* scratch, void* out, Storage out_type, cudaStream_t stream) {
  // Registers and shared memory sized by the head's dimension, rounded up to 64.
  if (dim <= 64) {
    return launch<T, 64>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale, scratch,
                         out, out_type, stream);
  }
  if (dim <= 128) {
    return launch<T, 128>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale, scratch,
                          out, out_type, stream);
  }
  return launch<T, 256>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale, scratch,
                        out, out_type, stream);
}

}  // namespace

bool decode_attention_serves(Storage type, int64_t head_dim) {
  const int64_t vector = type == Storage::kBFloat16 ? 8 : 4;
  return (type == Storage::kBFloat16 || type == Storage::kFloat32) && head_dim > 0 &&
         head_dim <= kDecodeAttentionMaxDim && head_dim % vector == 0;
}

int64_t decode_attention_scratch(int64_t capacity, int64_t heads, int64_t head_dim) {
  return heads * ranges_for(capacity) * (2 + head_dim);
}

const char* decode_attention(const float* q, const void* keys, const void* values, Storage type,
                             const int64_t* slot_positions, const int64_t* token_position, int64_t capacity,
                             int64_t heads, int64_t head_dim, int64_t window, float scale, float* scratch, void* out,
                             Storage out_type, void* stream) {
  if (!decode_attention_serves(type, head_dim) || capacity <= 0 || heads <= 0 || heads > 65535 ||
      (out_type != Storage::kBFloat16 && out_type != Storage::kFloat32)) {
    return "decode_attention: unsupported sizes or storage";
  }
  if (ranges_for(capacity) > 2147483647) return "decode_attention: too many keys";
  const auto s = static_cast<cudaStream_t>(stream);
  return type == Storage::kBFloat16
             ? launch_for_dim<__nv_bfloat16>(q, keys, values, slot_positions, token_position, capacity, heads, head_dim,
                                             window, scale, scratch, out, out_type, s)
             : launch_for_dim<float>(q, keys, values, slot_positions, token_position, capacity, heads, head_dim, window,
                                     scale, scratch, out, out_type, s);
}

}  // namespace ttt::kernels
