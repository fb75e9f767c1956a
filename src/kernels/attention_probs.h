// The elementwise work of the composable attention (the form the exact meta-gradient
// differentiates twice) in fused kernels (CUDA): softmax of the scores under the sliding
// window's band, its backward, and the row-wise part of attention's double backward; the
// products around them are GEMMs (model/layers.cpp, BandedAttention). Each kernel makes one
// or two contiguous passes over its [heads * queries, keys] rows, where the composable ops
// take ~15 (mask, casts, softmax, their backward and double backward). Scores, the
// probabilities the products read, and the gradients are in the matmul dtype (bf16, or
// fp32); softmax and its reductions in fp32 (SPEC section 6). The backward kernels read the
// probabilities as the forward stored them (what the products read too), so the scores die
// with the forward: a graph that differentiates attention twice keeps three [heads, queries,
// keys] terms a block, not four (an earlier form recomputed the probabilities from kept
// scores). fp32 or bf16 storage (fp16 is refused). Plain launchers without torch headers;
// model/layers.cpp wraps them for autograd.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// scores: [heads * queries, keys] rows (contiguous, `type`). Query i (row r, i = r % queries)
// sees key j iff 0 <= i + offset - j < window (window 0: no upper bound), offset = keys -
// queries (the cached keys come first). Writes probs in `type`: exp(s - lse) where visible, 0
// elsewhere, lse being the logsumexp of row r's visible scores (fp32; into lse[r] unless lse is
// null). `stream` is a cudaStream_t. Returns null, or CUDA's error text.
const char* attention_probs_forward(const void* scores, Storage type, int64_t heads, int64_t queries, int64_t keys,
                                    int64_t window, float* lse, void* probs, void* stream);

// With P the probabilities attention_probs_forward wrote ([rows, keys], 0 outside the band):
// grad_scores = P * (grad_probs - D), D = sum_j P * grad_probs per row (into `dots`, fp32).
const char* attention_probs_backward(const void* probs, const void* grad_probs, Storage type, int64_t rows,
                                     int64_t keys, void* grad_scores, float* dots, void* stream);

// The second order of the two above, for the written-out double backward of attention
// (model/layers.cpp): given the adjoint G of grad_scores and an adjoint A of the probabilities
// from elsewhere (the product that reads them; either null: zero), with E = sum_j P * G:
// the gradient of grad_probs, P * (G - E) (into grad_of_grad_probs, not written if G is
// null), and of the scores, P * (Q - sum_j P * Q) with Q = A + G * (grad_probs - D) -
// E * grad_probs. All [rows, keys] in `type` but dots, as attention_probs_backward wrote them.
const char* attention_probs_double_backward(const void* probs, const void* grad_probs, const float* dots,
                                            const void* grad_of_grad_scores, const void* grad_of_probs, Storage type,
                                            int64_t rows, int64_t keys, void* grad_of_grad_probs, void* grad_of_scores,
                                            void* stream);

}  // namespace ttt::kernels
