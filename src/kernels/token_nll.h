// Fused per-token negative log-likelihood over a large vocabulary (CUDA). The logits are
// read in their own dtype (bf16 from the LM head) and reduced in fp32: no fp32 copy of
// [T, V], no [T, V] log-probabilities, and a gradient written once in the logits' dtype.
// Plain launchers without torch headers; model/layers.cpp wraps them for autograd.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// Row-major logits [rows, vocab] (contiguous), targets [rows] (each in [0, vocab); another
// gives NaN). Writes nll[r] = logsumexp(logits[r]) - logits[r, targets[r]] and lse[r] =
// logsumexp(logits[r]), both fp32. `stream` is a cudaStream_t. Returns null, or CUDA's
// error text.
const char* token_nll_forward(const void* logits, Storage type, const int64_t* targets, int64_t rows, int64_t vocab,
                              float* nll, float* lse, void* stream);

// grad_logits[r, v] = grad_nll[r] * (exp(logits[r, v] - lse[r]) - [v == targets[r]]), in
// the logits' dtype.
const char* token_nll_backward(const void* logits, Storage type, const int64_t* targets, const float* lse,
                               const float* grad_nll, int64_t rows, int64_t vocab, void* grad_logits, void* stream);

// The backward of token_nll_backward (the second order, for the exact meta-gradient): with
// p = softmax(logits[r]), u = the adjoint of grad_logits[r] (in the logits' dtype) and
// s = <p, u>, writes grad_logits[r, v] = grad_nll[r] * p[v] * (u[v] - s) in the logits'
// dtype and, unless grad_scale is null, grad_scale[r] = s - u[targets[r]] (the adjoint of
// grad_nll[r]) in fp32. In the same pass, two first-order terms where their pointers are not
// null: outer_grad_nll[r] * (p[v] - [v == targets[r]]) added to grad_logits (the gradient of
// a loss that reads the NLL itself, summed with the second-order one before it is rounded),
// and token_nll_backward's grad_nll[r] * (p[v] - [v == targets[r]]) written to
// first_order_grad.
const char* token_nll_double_backward(const void* logits, Storage type, const int64_t* targets, const float* lse,
                                      const float* grad_nll, const void* adjoint, const float* outer_grad_nll,
                                      int64_t rows, int64_t vocab, void* grad_logits, void* first_order_grad,
                                      float* grad_scale, void* stream);

}  // namespace ttt::kernels
