// The model FLOPs of the engine's procedures, for model FLOP utilisation (MFU): the matrix
// products a procedure needs, counted once (a multiply-add is 2 FLOPs; recomputation, norms,
// softmax and other elementwise work are not counted), from the config alone.
//
// Per token at position t (from 0), with k(t) = min(t + 1, window) keys seen (t + 1 for fa):
//   forward   L (8 d^2 + 6 d f + 4 d k(t)) + s 6 d f + 2 d V
// (L blocks: q, k, v, o projections, the MLP, scores and mix; s suffix blocks' prime MLPs;
// the head). ttt-e2e's inner step adds, for every token of a chunk that updates, the backward
// from the chunk's loss to the fast weights: the head's input gradient 2 d V; in every suffix
// block the MLP's input gradient 6 d f and the prime MLP's weight gradients 8 d f (its hidden
// layer's gradient 2 d f, then the three matrices'); in every suffix block but the first (the
// gradient stops at the first prime MLP) the prime MLP's input gradient 4 d f and the
// attention's backward (projections 8 d^2, scores and mix 8 d k(t)).
// Training differentiates that whole computation once more, each product's backward costing
// two of it: 3x the evaluation's FLOPs (for fa and swa 3x the forward, as usual).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "config/model_config.h"

namespace ttt {

// `ttt eval` over one sequence of `tokens` inputs (each chunk's loss, then its inner step
// after every full chunk but the last).
double evaluation_flops(const ModelConfig& config, int64_t tokens);

// One outer gradient over the same sequence (`ttt train`'s step without the optimiser).
double training_flops(const ModelConfig& config, int64_t tokens);

// The dense bf16/fp16 matmul peak of a GPU by its name (NVIDIA's data sheet, without
// sparsity: H100 SXM and H200 989 TFLOP/s, their NVL cards 835, H100 PCIe 756, A100 312),
// in FLOP/s; none for devices it does not know.
std::optional<double> peak_half_precision_flops(const std::string& device_name);

}  // namespace ttt
