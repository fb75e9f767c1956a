// The inner loop's SGD step over every fast weight at once (SPEC section 5), and its backward
// (ttt/inner_loop.cpp's ClippedUpdate runs both while autograd does not record):
//   W' = W - (step * s) * g,   s = min(1, clip / ||g||), ||g|| over all tensors together
// (s = 1 when clip = 0; a zero gradient takes its norm as 1, as the composable form does).
// Two kernels for any number of tensors where the composable form takes five a tensor and a
// cast of each gradient to fp32: the squares summed by blocks into `partials`, then every
// block sums the partials in one fixed order (run to run the same bits) and updates its
// share. The products and the difference are rounded apart, as the composable form's mul
// and sub; only the order of the squares' sum differs from it. Graph-capturable.
#pragma once
#include <cstdint>

#include "kernels/storage.h"

namespace ttt::kernels {

// One fast weight: `n` values of W (fp32), of g (in the launch's gradient storage) and of W'
// (fp32), each contiguous; W' may not overlap W or g.
struct SgdTensor {
  const float* weights;
  const void* grad;
  float* out;
  int64_t n;
};
constexpr int kSgdMaxTensors = 64;

// The fp32 scratch values the launch needs in `partials`: block b's sum of squares in
// partials[b] after the launch (untouched when clip <= 0: no norm is needed then).
int64_t clipped_sgd_partials();

// `count` tensors (at most kSgdMaxTensors), gradients of `grad_type`; `step_size` a device
// fp32 scalar. `stream` is a cudaStream_t. Returns null, or CUDA's error text.
const char* clipped_sgd_step(const SgdTensor* tensors, int count, Storage grad_type, const float* step_size, float clip,
                             float* partials, void* stream);

// The step's backward, given the adjoints A of W' (the exact meta-gradient differentiates the
// step through g and the clip): with n = ||g|| (1 for a zero gradient), s and f = step * s as
// above, and k = <A, g> over all tensors,
//   dW = A (no kernel needed), dg = -f A + c g, c = f k / n^2 where the clip binds (n > clip),
//   else 0, and d(step) = -s k.
// Two kernels: <A, g> and the squares summed by blocks into `partials`, then every block sums
// them in one fixed order and writes its share of dg (in the gradients' storage).
struct SgdAdjoint {
  const float* adjoint;  // of W', fp32; null: zero
  const void* grad;      // g
  void* grad_out;        // dg, in g's storage; may not overlap the others; null: not wanted
  int64_t n;
};

// The fp32 scratch values clipped_sgd_backward needs in `partials`.
int64_t clipped_sgd_backward_partials();

// `count` tensors (at most kSgdMaxTensors); `step_grad` (a device fp32 scalar, or null) is
// overwritten with d(step). Returns null, or CUDA's error text. (ClippedUpdate's g are
// gradients of fp32 weights, fp32: the bf16 and fp16 builds serve direct callers.)
const char* clipped_sgd_backward(const SgdAdjoint* tensors, int count, Storage grad_type, const float* step_size,
                                 float clip, float* partials, float* step_grad, void* stream);

}  // namespace ttt::kernels
