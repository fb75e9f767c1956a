// A span's sliding-window attention on cuDNN's fused attention kernel (its Hopper flash
// kernel), through cuDNN's graph API (the header-only cudnn-frontend, third_party/): the band
// is cuDNN's own mask, aligned to the last key (query i of Tq is key Tk - Tq + i and sees the
// `window` keys ending at it; window 0: every key up to it), so the kernel skips whole tiles
// outside it. cuDNN plans a kernel per shape and pass on the host (once per shape, pass, device
// and thread that runs it; the plans are kept for the process). Plain launchers without torch
// headers: the model's wrapper (model/window_attention.h) allocates the outputs and the
// workspace.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// q [queries, heads, head_dim], k and v [keys, heads, head_dim] with the given strides of rows
// and heads in elements (head_dim contiguous), all in `type` (bf16 or fp16).
struct CudnnWindowShape {
  Storage type;
  int64_t heads, queries, keys, head_dim, window;
  int64_t q_row, q_head, k_row, k_head, v_row, v_head;
};

// Null where cuDNN runs this shape forward, and backward if asked, else why not (cuDNN's
// reason). Builds the forward's plan (about a quarter of a second on an H100) and only checks
// the backward's: autograd runs the backward on a thread of its own, which builds it there (a
// build cuDNN refuses after the check is cudnn_window_backward's error; cuDNN 9.0 and 9.1 build
// in the check already).
const char* cudnn_window_refusal(const CudnnWindowShape& shape, bool backward);

// Bytes of device workspace the forward or the backward takes (a shape cuDNN runs).
int64_t cudnn_window_workspace(const CudnnWindowShape& shape, bool backward);

// out [queries, heads, head_dim] contiguous; lse [heads, queries] fp32 contiguous, the
// logsumexp of each query's scaled scores (1/sqrt(head_dim)). `workspace` holds
// cudnn_window_workspace(shape, false) bytes; `stream` is a cudaStream_t. Returns null, or
// the error's text.
const char* cudnn_window_forward(const CudnnWindowShape& shape, const void* q, const void* k, const void* v, void* out,
                                 float* lse, void* workspace, void* stream);

// The adjoints of q, k and v for the output's adjoint `grad` (both `out` and `grad`
// [queries, heads, head_dim] contiguous, lse as the forward gave it): dq like q, dk and dv like
// k, all contiguous. Returns null, or the error's text.
const char* cudnn_window_backward(const CudnnWindowShape& shape, const void* q, const void* k, const void* v,
                                  const void* out, const void* grad, const float* lse, void* dq, void* dk, void* dv,
                                  void* workspace, void* stream);

}  // namespace ttt::kernels
