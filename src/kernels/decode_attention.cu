#include "kernels/common.cuh"
#include "kernels/decode_attention.h"

namespace ttt::kernels {
namespace {

// A block of kThreads threads per (range of keys, head); each thread scores kThreads-strided
// keys of its range, one 16-byte vector of a key row at a time, from registers holding q.
// Ranges are made long enough that there are about kTargetRanges per head (enough blocks to
// keep the GPU's memory busy) and at most kMaxKeysPerThread keys per thread (their scores
// wait in shared memory for the range's softmax).
constexpr int kThreads = 128, kWarps = kThreads / 32;
constexpr int64_t kTargetRanges = 96, kMaxKeysPerThread = 64;

int64_t keys_per_thread(int64_t capacity) {
  const int64_t per_thread = (capacity + kThreads * kTargetRanges - 1) / (kThreads * kTargetRanges);
  return per_thread < 1 ? 1 : (per_thread > kMaxKeysPerThread ? kMaxKeysPerThread : per_thread);
}
int64_t ranges_for(int64_t capacity) {
  const int64_t keys_per_range = kThreads * keys_per_thread(capacity);
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

// Elements (2i, 2i + 1) of a row as fp32: one 4-byte (bf16) or 8-byte (fp32) load.
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* row, int i) {
  return __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(row)[i]);
}
__device__ __forceinline__ float2 load_pair(const float* row, int i) { return reinterpret_cast<const float2*>(row)[i]; }

__device__ __forceinline__ bool seen(int64_t key_position, int64_t token_position, int64_t window) {
  return key_position <= token_position && (window <= 0 || token_position - key_position < window);
}

// Per (range, head): the range's max score m, sum of exp(s - m), and sum of exp(s - m) v,
// into scratch as [heads][ranges] pairs and [heads][ranges][head_dim] sums.
template <typename T, int kMaxDim>
__global__ void __launch_bounds__(kThreads)
    range_kernel(const float* __restrict__ q, const T* __restrict__ keys, const T* __restrict__ values,
                 const int64_t* __restrict__ slot_positions, const int64_t* __restrict__ token_position,
                 int64_t capacity, int heads, int dim, int64_t window, float scale, int per_thread,
                 float* __restrict__ range_max, float* __restrict__ range_sum, float* __restrict__ range_out) {
  extern __shared__ float scores[];  // [per_thread * kThreads]
  __shared__ float query[kMaxDim];    // read by every thread at once: broadcasts
  __shared__ float partial[kWarps][kMaxDim];
  const int head = blockIdx.y, ranges = gridDim.x;
  const int64_t range = blockIdx.x, keys_per_range = static_cast<int64_t>(per_thread) * kThreads;
  const int64_t first = range * keys_per_range, row_stride = static_cast<int64_t>(heads) * dim;
  const int64_t t = *token_position;
  constexpr int kVector = Vector<T>::kSize;
  // q * scale rounded as the keys' storage rounds (the matmul paths round their operands).
  for (int i = threadIdx.x; i < kMaxDim; i += kThreads) {
    query[i] = i < dim ? to_float(from_float<T>(q[head * dim + i] * scale)) : 0.f;
  }
  __syncthreads();

  float local_max = -INFINITY;
  for (int r = 0; r < per_thread; ++r) {
    const int64_t j = first + r * kThreads + threadIdx.x;
    float s = -INFINITY;
    if (j < capacity && seen(slot_positions[j], t, window)) {
      const T* row = keys + j * row_stride + static_cast<int64_t>(head) * dim;
      s = 0.f;
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
    scores[r * kThreads + threadIdx.x] = s;
    local_max = fmaxf(local_max, s);
  }
  const float m = block_reduce<kThreads>(local_max, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
  const int64_t slot = static_cast<int64_t>(head) * ranges + range;
  if (m == -INFINITY) {  // no key of the range is seen (empty slots, or outside the window)
    if (threadIdx.x == 0) {
      range_max[slot] = -INFINITY;
      range_sum[slot] = 0.f;
    }
    for (int i = threadIdx.x; i < dim; i += kThreads) range_out[slot * dim + i] = 0.f;
    return;
  }
  float local_sum = 0.f;
  for (int r = 0; r < per_thread; ++r) {
    float& s = scores[r * kThreads + threadIdx.x];
    s = s == -INFINITY ? 0.f : expf(s - m);
    local_sum += s;
  }
  const float sum = block_sum<kThreads>(local_sum);  // its barrier also publishes the exponentials

  // Weighted values: warp w takes keys w, w + kWarps, ...; lane l the dimension pairs l, l + 32, ...
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc[kMaxDim / 32];
#pragma unroll
  for (int i = 0; i < kMaxDim / 32; ++i) acc[i] = 0.f;
  const int64_t last = capacity - first < keys_per_range ? capacity - first : keys_per_range;
  // Unseen keys weigh 0 (their rows are finite: rings start as zeros); no branch, so that
  // the unrolled loads are in flight together.
#pragma unroll 4
  for (int64_t i = warp; i < last; i += kWarps) {
    const float p = scores[i];
    const T* row = values + (first + i) * row_stride + static_cast<int64_t>(head) * dim;
#pragma unroll
    for (int c = 0; c < kMaxDim / 64; ++c) {
      const int pair = lane + 32 * c;
      if (2 * pair < dim) {
        const float2 v = load_pair(row, pair);
        acc[2 * c] += p * v.x;
        acc[2 * c + 1] += p * v.y;
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kMaxDim / 64; ++c) {
    const int pair = lane + 32 * c;
    if (2 * pair < dim) {
      partial[warp][2 * pair] = acc[2 * c];
      partial[warp][2 * pair + 1] = acc[2 * c + 1];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += partial[w][i];
    range_out[slot * dim + i] = total;
  }
  if (threadIdx.x == 0) {
    range_max[slot] = m;
    range_sum[slot] = sum;
  }
}

// Per head: the ranges' sums rescaled to the largest max, divided by the total.
template <typename Out>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* __restrict__ range_max, const float* __restrict__ range_sum,
                 const float* __restrict__ range_out, int ranges, int dim, Out* __restrict__ out) {
  const int head = blockIdx.x;
  const float* maxes = range_max + static_cast<int64_t>(head) * ranges;
  const float* sums = range_sum + static_cast<int64_t>(head) * ranges;
  float m = -INFINITY;
  for (int r = 0; r < ranges; ++r) m = fmaxf(m, maxes[r]);
  float total = 0.f;
  for (int r = 0; r < ranges; ++r) total += maxes[r] == -INFINITY ? 0.f : sums[r] * expf(maxes[r] - m);
  const float inverse = total > 0.f ? 1.f / total : 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    float value = 0.f;
    for (int r = 0; r < ranges; ++r) {
      if (maxes[r] != -INFINITY) value += range_out[(static_cast<int64_t>(head) * ranges + r) * dim + i] * expf(maxes[r] - m);
    }
    store(out, static_cast<int64_t>(head) * dim + i, value * inverse);
  }
}

template <typename T, int kMaxDim>
const char* launch_ranges(const float* q, const void* keys, const void* values, const int64_t* slot_positions,
                          const int64_t* token_position, int64_t capacity, int64_t heads, int64_t dim,
                          int64_t window, float scale, float* scratch, cudaStream_t stream) {
  const int64_t per_thread = keys_per_thread(capacity), ranges = ranges_for(capacity);
  float* range_max = scratch;
  float* range_sum = range_max + heads * ranges;
  float* range_out = range_sum + heads * ranges;
  const dim3 grid(static_cast<unsigned>(ranges), static_cast<unsigned>(heads));
  const size_t shared = static_cast<size_t>(per_thread) * kThreads * sizeof(float);
  range_kernel<T, kMaxDim><<<grid, kThreads, shared, stream>>>(
      q, static_cast<const T*>(keys), static_cast<const T*>(values), slot_positions, token_position, capacity,
      static_cast<int>(heads), static_cast<int>(dim), window, scale, static_cast<int>(per_thread), range_max, range_sum,
      range_out);
  return launched();
}

template <typename T>
const char* launch_for_dim(const float* q, const void* keys, const void* values, const int64_t* slot_positions,
                           const int64_t* token_position, int64_t capacity, int64_t heads, int64_t dim,
                           int64_t window, float scale, float* scratch, cudaStream_t stream) {
  // The query lives in registers: sized by the head's dimension, rounded up to 64.
  if (dim <= 64) {
    return launch_ranges<T, 64>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale,
                                scratch, stream);
  }
  if (dim <= 128) {
    return launch_ranges<T, 128>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale,
                                 scratch, stream);
  }
  return launch_ranges<T, 256>(q, keys, values, slot_positions, token_position, capacity, heads, dim, window, scale,
                               scratch, stream);
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
  if (!decode_attention_serves(type, head_dim) || capacity <= 0 || heads <= 0 || heads > 65535) {
    return "decode_attention: unsupported sizes or storage";
  }
  if (capacity > kThreads * kMaxKeysPerThread * int64_t{2147483647}) return "decode_attention: too many keys";
  const auto s = static_cast<cudaStream_t>(stream);
  const char* error =
      type == Storage::kBFloat16
          ? launch_for_dim<__nv_bfloat16>(q, keys, values, slot_positions, token_position, capacity, heads, head_dim,
                                          window, scale, scratch, s)
          : launch_for_dim<float>(q, keys, values, slot_positions, token_position, capacity, heads, head_dim, window,
                                  scale, scratch, s);
  if (error != nullptr) return error;
  const int64_t ranges = ranges_for(capacity);
  const float* range_max = scratch;
  const float* range_sum = range_max + heads * ranges;
  const float* range_out = range_sum + heads * ranges;
  const dim3 grid(static_cast<unsigned>(heads));
  switch (out_type) {
    case Storage::kBFloat16:
      merge_kernel<<<grid, kThreads, 0, s>>>(range_max, range_sum, range_out, static_cast<int>(ranges),
                                             static_cast<int>(head_dim), static_cast<__nv_bfloat16*>(out));
      break;
    case Storage::kFloat32:
      merge_kernel<<<grid, kThreads, 0, s>>>(range_max, range_sum, range_out, static_cast<int>(ranges),
                                             static_cast<int>(head_dim), static_cast<float*>(out));
      break;
    default:
      return "decode_attention: unsupported output storage";
  }
  return launched();
}

}  // namespace ttt::kernels
