// The attention probabilities of the composable attention (the form the exact meta-gradient
// differentiates twice) in fused kernels (CUDA): softmax of the scores under the sliding
// window's band, its backward, and that backward's own backward. The composable ops take
// ~15 passes over [heads, queries, keys] fp32 tensors per block and chunk (mask, casts,
// softmax, their backward and double backward); these take 3 kernels. Scores, the
// probabilities the PV product reads, and the gradients are in the matmul dtype (bf16, or
// fp32); softmax and its reductions in fp32 (SPEC section 6), with an fp32 copy of the
// probabilities for the backward; fp32 or bf16 storage (fp16 is refused). Plain launchers
// without torch headers; model/layers.cpp wraps them for autograd.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// scores: [heads * queries, keys] rows (contiguous, `type`). Query i (row r, i = r % queries)
// sees key j iff 0 <= i + offset - j < window (window 0: no upper bound), offset = keys -
// queries (the cached keys come first). Writes probs32 (fp32) and, unless null, probs in
// `type`; invisible keys get 0. `stream` is a cudaStream_t. Returns null, or CUDA's error text.
const char* attention_probs_forward(const void* scores, Storage type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* probs32, void* probs, void* stream);

// grad_scores = probs * (grad_probs - D), D = sum_j probs * grad_probs per row (into `dots`).
const char* attention_probs_backward(const float* probs32, const void* grad_probs, Storage type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream);

// The backward of attention_probs_backward given `adjoint` (the gradient of grad_scores),
// with E = sum_j probs * adjoint: the gradient of grad_probs, probs * (adjoint - E), and of
// the scores through the probabilities, probs * (q - sum_j probs * q) with
// q = adjoint * (grad_probs - D) - E * grad_probs.
const char* attention_probs_double_backward(const float* probs32, const void* grad_probs, const float* dots,
                                            const void* adjoint, Storage type, int64_t rows, int64_t keys,
                                            void* grad_of_scores, void* grad_of_grad_probs, void* stream);

}  // namespace ttt::kernels
