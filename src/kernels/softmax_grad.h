// The backward of softmax over the last axis and its own backward (CUDA), for the attention
// scores of the exact meta-gradient, which differentiates the inner step's graph (where
// softmax's backward is) again: two fused kernels instead of the ~10 passes over the
// [heads, queries, keys] tensors that the composable forms take. Plain launchers without
// torch headers; model/layers.cpp wraps them for autograd.
#pragma once
#include <cstdint>

namespace ttt::kernels {

// probs, grad_probs, grad_scores: [rows, cols] fp32, contiguous. With D = sum_j probs * grad_probs
// per row: grad_scores = probs * (grad_probs - D); `dots` [rows] receives D. `stream` is a
// cudaStream_t. Returns null, or CUDA's error text.
const char* softmax_backward(const float* probs, const float* grad_probs, int64_t rows, int64_t cols,
                             float* grad_scores, float* dots, void* stream);

// The backward of softmax_backward, given `adjoint` (the gradient of grad_scores): with
// E = sum_j probs * adjoint per row, writes the gradient of probs,
// adjoint * (grad_probs - D) - E * grad_probs, and of grad_probs, probs * (adjoint - E).
const char* softmax_double_backward(const float* probs, const float* grad_probs, const float* dots,
                                    const float* adjoint, int64_t rows, int64_t cols, float* grad_of_probs,
                                    float* grad_of_grad_probs, void* stream);

}  // namespace ttt::kernels
