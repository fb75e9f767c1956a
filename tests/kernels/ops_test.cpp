// Every kernel-backed primitive against its plain-op reference, over a grid of shapes, dtypes
// and derivative orders (in the spirit of llama.cpp's test-backend-ops). Each entry of the
// grid is a test of its own, named op_shape_dtypes_orderK: the op's value and its
// derivatives to order K (test::derivatives: fixed random probes, each order differentiating
// the previous one's results against fresh probes) on the GPU, against the same function in
// fp64 on the CPU (which always takes plain ops), or for attention against the composable
// `attend` under `attention_mask`. Inputs are drawn once in fp64; the GPU side stores them
// in the case's dtypes and the reference sees them rounded the same way, so the comparison
// measures the op, not the rounding of its inputs (a matmul dtype's rounding, inside the op,
// is measured). The orders are those the kernels serve (layers.h, above `enum class Order`).
//
// One tolerance rule for every op, shape, dtype and order. Each compared quantity q (the
// value, or one derivative; |.| the 2-norm over its elements) must satisfy
//
//   |q_gpu - q_ref| / |q_ref|  <=  8 (u(p) + u(fp32) sqrt(n))
//
// u: the unit roundoff, 2^-24 for fp32, 2^-11 for fp16, 2^-8 for bf16.
// p: the narrowest dtype q is written or multiplied in: q's own dtype on the GPU, or the
//    matmul dtype where that is narrower. Inputs stored narrower do not count (the reference
//    reads them rounded too): a bf16 x's fp32 norm, or bf16 logits' fp32 NLL, is held to fp32.
// n: the length of the op's longest reduction (RMSNorm: the row, and the rows where the
//    gain's gradient sums over them; RoPE: 1; the NLL: the vocabulary; SwiGLU: the largest of
//    T, D and F; attention: the keys or the head width, whichever is longer).
// The first term is a few roundings to p, the second fp32 arithmetic's error over a
// reduction. So: fp32 RoPE 9.5e-7; fp32 attention over 34 keys 3.3e-6, RMSNorm of 768
// 1.4e-5, the NLL over 4096 logits 3.1e-5, over 128256 1.7e-4; fp16 about 3.9e-3; anything
// in bf16 3.1e-2. Calibration: the hand-written tests this grid replaced passed on the H200
// with 1e-6 (RoPE), 1e-5 (fp32 values; 2e-5 fused attention's gradients, 1e-4 RMSNorm's
// derivatives), 1e-2 to 3e-2 (bf16, fp16); the grid run on the CPU in fp32, fp16 and bf16
// plain ops (the kernels' rounding points, fp32 arithmetic) reached at most a third of the
// bound (bf16 attention of a single query; 2026-12-02).
//
// Every reference quantity must also be non-trivial (max |q_ref| > 1e-3), so that no
// comparison of zeros with zeros passes; the only exceptions are derivatives autograd
// reports as unused on both sides (e.g. RoPE's second derivative in x: it is linear), which
// must be unused on the GPU too. On the GPU, each op's graph must also hold its kernel
// (where our kernels are built; RMSNorm's choice is internal, not in the graph).
//
// The tests skip without a CUDA GPU; scripts/gpu.sh runs them on the GPU machine.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "model/compute.h"
#include "model/layers.h"
#include "test_util.h"
#include "ttt_build_features.h"

namespace ttt {
namespace {

const auto kF64 = torch::kFloat64;

// The dtypes of a case, as each op reads them (see the op): `input` the dtype its inputs are
// stored in, `output` the dtype it writes, `matmul` the thread's matmul dtype while it runs
// (MatmulDtypeGuard).
struct Precision {
  std::string name;
  torch::Dtype input = torch::kFloat32, output = torch::kFloat32;
  std::optional<torch::Dtype> matmul;
};

// Sizes whose meaning is the op's (see the op), and the name the tests take.
struct Shape {
  std::string name;
  std::vector<int64_t> sizes;
};

// One side of a comparison: the reference (fp64 on the CPU) or the kernels (on `device`).
struct Side {
  bool reference;
  torch::Device device;

  // An input drawn in fp64 (on the CPU), stored in `storage`: as it is on the kernel side,
  // rounded to it and back to fp64 for the reference. Rounded on the CPU for both.
  torch::Tensor input(const torch::Tensor& drawn, torch::Dtype storage) const {
    const torch::Tensor stored = drawn.to(storage);
    return reference ? stored.to(kF64) : stored.to(device);
  }
  torch::Tensor leaf(const torch::Tensor& drawn, torch::Dtype storage) const {
    return input(drawn, storage).detach().requires_grad_();
  }
  // The dtype an argument asks for on this side: the case's, or for the reference fp64.
  std::optional<torch::Dtype> dtype(torch::Dtype kernel_side) const {
    return reference ? std::nullopt : std::optional<torch::Dtype>(kernel_side);
  }
};

// What one side of a case computes: f of the leaves (each requiring grad), whose value and
// derivatives are compared.
struct Instance {
  std::vector<torch::Tensor> leaves;
  std::vector<std::string> leaf_names;
  std::function<torch::Tensor()> f;
  torch::Dtype value_dtype = torch::kFloat32;  // of the value on the kernel side
};

// An op of the table: its shapes and precisions, the highest order its kernels serve, the
// length of the longest reduction in its value or derivatives (for the tolerance), how to
// build a side; and on the GPU, a node the value's graph must hold (empty: none to look
// for; where `ours`, one of our kernels, looked for where they are built, else PyTorch's,
// looked for with libtorch 2.x) and nodes it must not (a composable form's).
struct Op {
  std::string name;
  int max_order;
  std::vector<Shape> shapes;
  std::vector<Precision> precisions;
  std::function<int64_t(const Shape&)> reduction;
  std::function<Instance(const Shape&, const Precision&, const Side&)> build;
  std::string kernel_node;
  bool ours = true;
  std::vector<std::string> composable_nodes = {};
};

const Precision kF32{"f32"};

// RMSNorm: x of shape `sizes` (the last axis normed), gain [dim] fp32 (what the kernels
// serve), x stored in `input`, y written in `output`; eps 1e-6. With or without the
// gain's gradient (the inner loop differentiates norms whose gains are not leaves).
Instance rms_norm_case(const Shape& s, const Precision& p, const Side& side, bool gain_gradient) {
  torch::manual_seed(1);
  const torch::Tensor x = side.leaf(torch::randn(s.sizes, kF64) * 3, p.input);
  const torch::Tensor gain =
      side.input(1 + 0.1 * torch::randn({s.sizes.back()}, kF64), torch::kFloat32).requires_grad_(gain_gradient);
  Instance in{{x}, {"x"}};
  if (gain_gradient) {
    in.leaves.push_back(gain);
    in.leaf_names.push_back("gain");
  }
  const std::optional<torch::Dtype> out = side.dtype(p.output);
  in.f = [x, gain, out] { return rms_norm(x, gain, 1e-6, out); };
  in.value_dtype = p.output;
  return in;
}

Instance rms_norm_gain_gradient_case(const Shape& s, const Precision& p, const Side& side) {
  return rms_norm_case(s, p, side, true);
}
Instance rms_norm_fixed_gain_case(const Shape& s, const Precision& p, const Side& side) {
  return rms_norm_case(s, p, side, false);
}

// RoPE: x [T, H, d] fp32 at positions start.. start + T - 1, theta 500000, the table in x's
// dtype (fp64 for the reference). sizes: {T, H, d, start}.
Instance rope_case(const Shape& s, const Precision& p, const Side& side) {
  const int64_t T = s.sizes[0], H = s.sizes[1], d = s.sizes[2], start = s.sizes[3];
  torch::manual_seed(2);
  const torch::Tensor x = side.leaf(torch::randn({T, H, d}, kF64), p.input);
  const torch::Tensor positions = torch::arange(start, start + T, torch::kInt64);
  const RopeTable table =
      rope_table(side.reference ? positions : positions.to(side.device), d, 500000, side.dtype(p.input).value_or(kF64));
  return {{x}, {"x"}, [x, table] { return rope(x, table); }, p.input};
}

// The per-token NLL: logits [T, V] stored in `input`, targets uniform over the vocabulary;
// the NLL in fp32. sizes: {T, V}.
Instance token_nll_case(const Shape& s, const Precision& p, const Side& side) {
  const int64_t T = s.sizes[0], V = s.sizes[1];
  torch::manual_seed(3);
  const torch::Tensor logits = side.leaf(torch::randn({T, V}, kF64) * 4, p.input);
  const torch::Tensor drawn_targets = torch::randint(0, V, {T}, torch::kInt64);
  const torch::Tensor targets = side.reference ? drawn_targets : drawn_targets.to(side.device);
  return {{logits}, {"logits"}, [logits, targets] { return token_nll(logits, targets); }, torch::kFloat32};
}

// The head and the loss before an inner step: normed [T, D] stored in the matmul dtype (as
// the final norm writes it; else in `input`), the head in `input`, targets uniform over the
// vocabulary, the masked mean's weights with one target masked. sizes: {T, D, V, head,
// outputs}. head 0: a [D, V] leaf; 1: the transpose of a [V, D] leaf, as a tied embedding's
// is; 2: a constant (no gradient asked of it). outputs 0: nll and hidden_grad side by side,
// 1: nll alone (the first-order meta-gradient's use), 2: hidden_grad alone; in fp32 (fp64 for
// the reference). Their derivatives (order 1) are what the outer backward asks of the fused
// function: nll's and hidden_grad's adjoints at once, or one of them.
Instance head_loss_case(const Shape& s, const Precision& p, const Side& side) {
  const int64_t T = s.sizes[0], D = s.sizes[1], V = s.sizes[2], head_kind = s.sizes[3], outputs = s.sizes[4];
  torch::manual_seed(6);
  const torch::Tensor normed = side.leaf(torch::randn({T, D}, kF64), p.matmul.value_or(p.input));
  const std::vector<int64_t> shape = head_kind == 1 ? std::vector<int64_t>{V, D} : std::vector<int64_t>{D, V};
  const torch::Tensor drawn = torch::randn(shape, kF64) * (1.5 / std::sqrt(static_cast<double>(D)));
  const torch::Tensor matrix = head_kind == 2 ? side.input(drawn, p.input) : side.leaf(drawn, p.input);
  torch::Tensor targets = torch::randint(0, V, {T}, torch::kInt64);
  targets[0] = V - 1;  // masked as bos
  const torch::Tensor weights = side.input(masked_mean_weights(targets, V - 1, kF64), torch::kFloat32);
  const torch::Tensor ids = side.reference ? targets : targets.to(side.device);
  Instance in{{normed}, {"normed"}};
  if (head_kind != 2) {
    in.leaves.push_back(matrix);
    in.leaf_names.push_back(head_kind == 1 ? "embedding" : "head");
  }
  in.f = [=] {
    const HeadLoss out = head_loss(normed, head_kind == 1 ? matrix.t() : matrix, ids, weights, Order::kSecond);
    const torch::Tensor hidden_grad = out.hidden_grad.flatten().to(out.nll.scalar_type());
    return outputs == 1 ? out.nll : outputs == 2 ? hidden_grad : torch::cat({out.nll, hidden_grad});
  };
  in.value_dtype = torch::kFloat32;
  return in;
}

// SwiGLU, (silu(x w1) * (x w3)) w2 with x [T, D] stored in `input`, the weights fp32, the
// product silu(.) * (.) in fp32 (what the gate's kernel serves: the engine's residual dtype),
// the result in `output`, matmuls in `matmul`. sizes: {T, D, F}.
Instance swiglu_case(const Shape& s, const Precision& p, const Side& side) {
  const int64_t T = s.sizes[0], D = s.sizes[1], F = s.sizes[2];
  torch::manual_seed(4);
  const double in_scale = 1.7 / std::sqrt(static_cast<double>(D)), out_scale = 2 / std::sqrt(static_cast<double>(F));
  const torch::Tensor x = side.leaf(torch::randn({T, D}, kF64), p.input);
  const torch::Tensor w1 = side.leaf(torch::randn({D, F}, kF64) * in_scale, torch::kFloat32);
  const torch::Tensor w2 = side.leaf(torch::randn({F, D}, kF64) * out_scale, torch::kFloat32);
  const torch::Tensor w3 = side.leaf(torch::randn({D, F}, kF64) * in_scale, torch::kFloat32);
  const std::optional<torch::Dtype> hidden = side.dtype(torch::kFloat32), out = side.dtype(p.output);
  Instance in{{x, w1, w2, w3}, {"x", "w1", "w2", "w3"}};
  in.f = [=] { return swiglu(x, MlpParams{w1, w2, w3}, hidden, out); };
  in.value_dtype = p.output;
  return in;
}

// Attention of a span of queries after a cache (attend_span's layout) at positions from
// 100 on: q [span, H, d] fp32 (the engine's residual dtype), k and v [cached + span, H, d]
// stored in `input` (the engine caches them in the matmul dtype), matmuls in `matmul`. The
// reference is the composable `attend` under `attention_mask`. sizes: {cached, span, window,
// H, d}; window 0 is full causal attention.
Instance attention_case(const Shape& s, const Precision& p, const Side& side, Order order) {
  const int64_t cached = s.sizes[0], span = s.sizes[1], window = s.sizes[2], H = s.sizes[3], d = s.sizes[4];
  const int64_t Tk = cached + span;
  torch::manual_seed(5);
  const torch::Tensor q = side.leaf(torch::randn({span, H, d}, kF64), torch::kFloat32);
  const torch::Tensor k = side.leaf(torch::randn({Tk, H, d}, kF64), p.input);
  const torch::Tensor v = side.leaf(torch::randn({Tk, H, d}, kF64), p.input);
  const torch::Tensor key_positions = torch::arange(100, 100 + Tk, torch::kInt64);
  const torch::Tensor query_positions = key_positions.narrow(0, cached, span);
  Instance in{{q, k, v}, {"q", "k", "v"}};
  in.value_dtype = p.matmul.value_or(torch::kFloat32);
  if (order == Order::kFirst && side.device.is_cuda()) EXPECT_TRUE(fused_attention_available(q));
  if (side.reference) {
    const torch::Tensor mask = attention_mask(query_positions, key_positions, window);
    in.f = [q, k, v, mask] { return attend(q, k, v, mask); };
  } else {
    const torch::Tensor qp = query_positions.to(side.device), kp = key_positions.to(side.device);
    in.f = [q, k, v, qp, kp, window, order] { return attend_span(q, k, v, qp, kp, window, order); };
  }
  return in;
}

Instance fused_attention_case(const Shape& s, const Precision& p, const Side& side) {
  return attention_case(s, p, side, Order::kFirst);
}
Instance composable_attention_case(const Shape& s, const Precision& p, const Side& side) {
  return attention_case(s, p, side, Order::kSecond);
}

std::string joined(const std::vector<int64_t>& sizes) {
  std::string name;
  for (const int64_t n : sizes) {
    if (!name.empty()) name += 'x';
    name += std::to_string(n);
  }
  return name;
}

Shape sizes_shape(std::vector<int64_t> sizes) { return {joined(sizes), sizes}; }

Shape rope_shape(int64_t T, int64_t H, int64_t d, int64_t start) {
  return {joined({T, H, d}) + "_at" + std::to_string(start), {T, H, d, start}};
}

Shape attention_shape(int64_t cached, int64_t span, int64_t window, int64_t H, int64_t d) {
  return {"cache" + std::to_string(cached) + "_span" + std::to_string(span) + "_" +
              (window == 0 ? std::string("full") : "window" + std::to_string(window)) + "_" + joined({H, d}),
          {cached, span, window, H, d}};
}

// The longest reductions (see the ops' sizes).
int64_t no_reduction(const Shape&) { return 1; }
int64_t last_size(const Shape& s) { return s.sizes.back(); }
int64_t largest_size(const Shape& s) { return *std::max_element(s.sizes.begin(), s.sizes.end()); }
int64_t rms_norm_reduction(const Shape& s) {  // the row, or the rows for the gain's gradient
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < s.sizes.size(); ++i) rows *= s.sizes[i];
  return std::max(rows, s.sizes.back());
}
int64_t head_loss_reduction(const Shape& s) {  // over the vocabulary, the width and the rows
  return std::max({s.sizes[0], s.sizes[1], s.sizes[2]});
}
int64_t attention_reduction(const Shape& s) {
  return std::max({s.sizes[0] + s.sizes[1], s.sizes[4]});  // over keys (and queries), over the head
}

// The table. Shapes: the hand-written tests' before this one, odd sizes, rows that are not
// a multiple of the kernels' blocks (4 rows a block and the gain's sums in blocks of 16 for
// RMSNorm, 256 threads a row for the NLL and the attention probabilities, 256 pairs or
// values a block for RoPE and the gate; the gate's 16-byte packs, and values that do not
// fill them), a 128K vocabulary, vocabularies with and without
// whole 16-byte rows (the NLL's vector loads), windows in and out, single queries, causal
// squares and spans after a cache.
const std::vector<Op>& ops() {
  static const std::vector<Op> table = [] {
    const Precision bf16{"bf16", torch::kBFloat16, torch::kBFloat16};
    const Precision f16{"f16", torch::kHalf, torch::kHalf};
    // RMSNorm: every (x, y) dtype pair the kernels serve.
    const std::vector<Precision> norm_precisions = {kF32,
                                                    {"f32_to_bf16", torch::kFloat32, torch::kBFloat16},
                                                    {"bf16_to_f32", torch::kBFloat16, torch::kFloat32},
                                                    bf16};
    // SwiGLU and attention: fp32, bf16 matmuls on fp32 inputs, and the engine's bf16 storage
    // under bf16 matmuls (SwiGLU: x and the result; attention: the cached keys and values).
    const std::vector<Precision> matmul_precisions = {
        kF32,
        {"bf16_matmul", torch::kFloat32, torch::kFloat32, torch::kBFloat16},
        {"bf16_matmul_bf16_io", torch::kBFloat16, torch::kBFloat16, torch::kBFloat16}};
    std::vector<Op> t;
    t.push_back({.name = "rms_norm",
                 .max_order = 3,
                 .shapes = {sizes_shape({37, 64}), sizes_shape({37, 768}), sizes_shape({37, 100}), sizes_shape({1, 33}),
                            sizes_shape({13, 3, 64}), sizes_shape({300, 257})},
                 .precisions = norm_precisions,
                 .reduction = rms_norm_reduction,
                 .build = rms_norm_gain_gradient_case});
    t.push_back(
        {.name = "rms_norm_fixed_gain",
         .max_order = 3,
         .shapes = {sizes_shape({37, 64}), sizes_shape({37, 768}), sizes_shape({37, 100}), sizes_shape({300, 257})},
         .precisions = norm_precisions,
         .reduction = last_size,
         .build = rms_norm_fixed_gain_case});
    t.push_back({.name = "rope",
                 .max_order = 3,
                 .shapes = {rope_shape(33, 3, 16, 1000), rope_shape(1, 1, 2, 0), rope_shape(37, 5, 64, 0),
                            rope_shape(7, 4, 128, 1000000), rope_shape(17, 3, 6, 5)},
                 .precisions = {kF32},
                 .reduction = no_reduction,
                 .build = rope_case,
                 .kernel_node = "FusedRope"});
    t.push_back({.name = "token_nll",
                 .max_order = 2,
                 .shapes = {sizes_shape({37, 4096}), sizes_shape({37, 1001}), sizes_shape({1, 1004}),
                            sizes_shape({7, 128256}), sizes_shape({1031, 97}), sizes_shape({3, 5})},
                 .precisions = {kF32, bf16, f16},
                 .reduction = last_size,
                 .build = token_nll_case,
                 .kernel_node = "FusedTokenNll"});
    // The head's GEMMs are the function's own (cuBLAS), its row-wise work the NLL's kernels.
    t.push_back({.name = "head_loss",
                 .max_order = 1,
                 .shapes = {sizes_shape({37, 64, 4096, 1, 0}), sizes_shape({7, 64, 128256, 1, 0}),
                            sizes_shape({5, 16, 1001, 0, 0}), sizes_shape({33, 32, 97, 0, 0}),
                            sizes_shape({37, 64, 4096, 0, 1}), sizes_shape({37, 64, 4096, 1, 2}),
                            sizes_shape({37, 64, 4096, 2, 0})},
                 .precisions = {kF32,
                                {"bf16_matmul", torch::kFloat32, torch::kFloat32, torch::kBFloat16},
                                {"bf16_matmul_bf16_io", torch::kBFloat16, torch::kBFloat16, torch::kBFloat16}},
                 .reduction = head_loss_reduction,
                 .build = head_loss_case,
                 .kernel_node = "FusedHeadLoss"});
    t.push_back({.name = "swiglu",
                 .max_order = 2,
                 .shapes = {sizes_shape({37, 32, 48}), sizes_shape({1, 64, 96}), sizes_shape({67, 48, 136}),
                            sizes_shape({130, 256, 688}), sizes_shape({5, 16, 13})},
                 .precisions = matmul_precisions,
                 .reduction = largest_size,
                 .build = swiglu_case,
                 .kernel_node = "SwigluGate"});
    // cuDNN's and flash's kernels (the memory-efficient one in fp32), whose autograd nodes
    // are named after them (ScaledDotProduct...AttentionBackward, FlashAttentionBackward),
    // not a composable form (ours, BandedAttention, or PyTorch's math one, a softmax): first
    // order.
    t.push_back({.name = "attention_fused",
                 .max_order = 1,
                 .shapes = {attention_shape(0, 64, 0, 4, 16), attention_shape(0, 64, 16, 4, 16),
                            attention_shape(40, 1, 0, 4, 16), attention_shape(15, 1, 16, 4, 16),
                            attention_shape(31, 16, 32, 4, 16), attention_shape(10, 16, 32, 4, 16),
                            attention_shape(15, 40, 16, 4, 16), attention_shape(100, 24, 0, 4, 16),
                            attention_shape(0, 37, 0, 3, 64), attention_shape(2, 1, 0, 2, 16),
                            attention_shape(200, 1, 64, 2, 64), attention_shape(127, 33, 64, 2, 128),
                            attention_shape(300, 16, 0, 2, 16)},
                 .precisions = matmul_precisions,
                 .reduction = attention_reduction,
                 .build = fused_attention_case,
                 .kernel_node = "Attention",
                 .ours = false,
                 .composable_nodes = {"BandedAttention", "Softmax"}});
    // The composable form, BandedAttention (its backward and double backward written out, the
    // row-wise work our kernels): to the second order.
    t.push_back({.name = "attention_composable",
                 .max_order = 2,
                 .shapes = {attention_shape(21, 13, 16, 2, 8), attention_shape(21, 13, 0, 2, 8),
                            attention_shape(0, 37, 0, 4, 16), attention_shape(0, 37, 16, 4, 16),
                            attention_shape(40, 1, 0, 4, 16), attention_shape(15, 1, 16, 4, 16),
                            attention_shape(300, 16, 0, 2, 16), attention_shape(300, 16, 64, 2, 16),
                            attention_shape(63, 16, 64, 2, 16)},  // a full window's cache, 79 keys: padded
                 .precisions = matmul_precisions,
                 .reduction = attention_reduction,
                 .build = composable_attention_case,
                 .kernel_node = "BandedAttention"});
    return t;
  }();
  return table;
}

// One entry of the grid.
struct Case {
  const Op* op;
  Shape shape;
  Precision precision;
  int order;
  std::string name;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> grid() {
  std::vector<Case> cases;
  for (const Op& op : ops()) {
    for (const Shape& shape : op.shapes) {
      for (const Precision& precision : op.precisions) {
        for (int order = 1; order <= op.max_order; ++order) {
          cases.push_back({&op, shape, precision, order,
                           op.name + "_" + shape.name + "_" + precision.name + "_order" + std::to_string(order)});
        }
      }
    }
  }
  return cases;
}

// The unit roundoff of a dtype: half the distance from 1 to the next value.
double unit_roundoff(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return std::ldexp(1.0, -8);
    case torch::kHalf:
      return std::ldexp(1.0, -11);
    case torch::kFloat64:
      return std::ldexp(1.0, -53);
    default:
      return std::ldexp(1.0, -24);
  }
}

// The tolerance rule (see the top): 8 (u(p) + u(fp32) sqrt(n)), p the narrowest of the
// quantity's dtype on the GPU and the matmul dtype, n the op's longest reduction.
double tolerance(const Case& c, torch::Dtype quantity) {
  torch::Dtype p = quantity;
  if (c.precision.matmul && unit_roundoff(*c.precision.matmul) > unit_roundoff(p)) p = *c.precision.matmul;
  const double n = static_cast<double>(c.op->reduction(c.shape));
  return 8 * (unit_roundoff(p) + unit_roundoff(torch::kFloat32) * std::sqrt(n));
}

double relative_error(const torch::Tensor& value, const torch::Tensor& reference) {
  const torch::Tensor a = value.detach().to(torch::kCPU, kF64), b = reference.detach().to(torch::kCPU, kF64);
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-300);
}

// Whether a node of t's autograd graph has `part` in its name.
bool graph_has(const torch::Tensor& t, const std::string& part) {
  std::vector<torch::autograd::Node*> pending;
  std::set<torch::autograd::Node*> seen;
  if (t.grad_fn()) pending.push_back(t.grad_fn().get());
  while (!pending.empty()) {
    torch::autograd::Node* node = pending.back();
    pending.pop_back();
    if (!seen.insert(node).second) continue;
    if (node->name().find(part) != std::string::npos) return true;
    for (const torch::autograd::Edge& edge : node->next_edges()) {
      if (edge.function) pending.push_back(edge.function.get());
    }
  }
  return false;
}

// The names of test::derivatives' results for these leaves: the value, then each order's
// derivatives with respect to the leaves and the probes of every order before.
std::vector<std::pair<std::string, int>> quantity_names(const std::vector<std::string>& leaves, int orders) {
  std::vector<std::pair<std::string, int>> names = {{"value", 0}};
  std::vector<std::string> wrt = leaves, outputs = {"value"};
  for (int order = 1; order <= orders; ++order) {
    std::vector<std::string> next, probes;
    for (const std::string& w : wrt) {
      next.push_back(std::string("d").append(std::to_string(order)).append("/d").append(w));
    }
    for (const std::string& o : outputs) probes.push_back("probe(" + o + ")");
    for (const std::string& n : next) names.emplace_back(n, order);
    wrt.insert(wrt.end(), probes.begin(), probes.end());
    outputs = next;
  }
  return names;
}

class OnCudaOp : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA GPU visible: the op test runs on the GPU machine, see scripts/gpu.sh";
    }
  }
  torch::Device device_{torch::kCUDA, 0};
};

TEST_P(OnCudaOp, MatchesItsPlainOpReferenceInFp64) {
  const Case& c = GetParam();
  constexpr uint64_t kProbeSeed = 7;
  const auto run = [&](const Side& side) {
    const MatmulDtypeGuard precision(side.reference ? std::nullopt : c.precision.matmul);
    const Instance instance = c.op->build(c.shape, c.precision, side);
    EXPECT_EQ(instance.leaves.size(), instance.leaf_names.size());
    std::vector<torch::Tensor> results = test::derivatives(instance.f, instance.leaves, c.order, kProbeSeed);
    if (!side.reference) {
      const torch::Tensor& value = results[0];
      EXPECT_EQ(value.device(), side.device);
      EXPECT_EQ(value.scalar_type(), instance.value_dtype);
      for (size_t i = 0; i < instance.leaves.size(); ++i) {  // gradients in their leaves' dtypes
        if (results[1 + i].dim() == 0) continue;             // unused (none is, at the first order)
        EXPECT_EQ(results[1 + i].scalar_type(), instance.leaves[i].scalar_type()) << instance.leaf_names[i];
      }
      const bool built = c.op->ours ? TTT_WITH_CUDA_KERNELS : TORCH_VERSION_MAJOR >= 2;
      if (side.device.is_cuda() && built && !c.op->kernel_node.empty()) {
        EXPECT_TRUE(graph_has(value, c.op->kernel_node)) << "no " << c.op->kernel_node << " kernel in the graph";
      }
      for (const std::string& node : c.op->composable_nodes) {
        EXPECT_FALSE(side.device.is_cuda() && graph_has(value, node)) << "a composable form ran: " << node;
      }
    }
    return std::make_pair(results, quantity_names(instance.leaf_names, c.order));
  };
  const auto [reference, names] = run({true, torch::kCPU});
  const std::vector<torch::Tensor> ours = run({false, device_}).first;
  ASSERT_EQ(reference.size(), names.size());
  ASSERT_EQ(ours.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) {
    const auto& [name, order] = names[i];
    SCOPED_TRACE(name);
    if (order > 0 && reference[i].dim() == 0) {  // unused: test::derivatives' zero scalar
      EXPECT_EQ(ours[i].dim(), 0) << "a derivative the reference does not have";
      EXPECT_EQ(ours[i].item<double>(), 0.0);
      continue;
    }
    ASSERT_EQ(ours[i].sizes(), reference[i].sizes());
    EXPECT_GT(reference[i].abs().max().item<double>(), 1e-3) << "a trivial reference";
    const double error = relative_error(ours[i], reference[i]), bound = tolerance(c, ours[i].scalar_type());
    EXPECT_LE(error, bound) << "in " << c10::toString(ours[i].scalar_type());
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, OnCudaOp, ::testing::ValuesIn(grid()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Launches over many rows (issue 19: 128K tokens of per-head norms are 1.5M rows, past the
// grid's y limit of 65535 blocks that the gain's partial sums once used): each kernel over
// 128K and 1M + 17 rows gives what it gives over the same rows in pieces of at most 50,000,
// which launch small grids. Row-wise results must be identical; sums over rows (the gain's
// gradient) equal up to their order of summation.
class OnCudaLargeLaunch : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible: runs on the GPU machine";
  }
  // f over `inputs` whole, and over pieces of their rows concatenated, with the gradients of
  // sum(f * probe) w.r.t. each input (those of shared inputs summed over the pieces).
  static void expect_same_in_pieces(const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
                                    const std::vector<torch::Tensor>& rows, const std::vector<torch::Tensor>& shared) {
    const auto leaves = [](const std::vector<torch::Tensor>& ts) {
      std::vector<torch::Tensor> out;
      for (const torch::Tensor& t : ts) out.push_back(t.detach().clone().requires_grad_(t.is_floating_point()));
      return out;
    };
    const auto gradients = [](const torch::Tensor& out, const torch::Tensor& probe, std::vector<torch::Tensor> wrt) {
      std::vector<torch::Tensor> floating;
      for (const torch::Tensor& t : wrt) {
        if (t.requires_grad()) floating.push_back(t);
      }
      return torch::autograd::grad({(out.to(torch::kFloat64) * probe).sum()}, floating);
    };
    torch::manual_seed(11);
    std::vector<torch::Tensor> whole_rows = leaves(rows), whole_shared = leaves(shared);
    std::vector<torch::Tensor> args = whole_rows;
    args.insert(args.end(), whole_shared.begin(), whole_shared.end());
    const torch::Tensor whole = f(args);
    const torch::Tensor probe = torch::randn(whole.sizes(), whole.options().dtype(torch::kFloat64));
    std::vector<torch::Tensor> wrt = whole_rows;
    wrt.insert(wrt.end(), whole_shared.begin(), whole_shared.end());
    const std::vector<torch::Tensor> whole_grads = gradients(whole, probe, wrt);

    constexpr int64_t kPiece = 50000;
    const int64_t n = rows[0].size(0);
    std::vector<torch::Tensor> outs;
    std::vector<std::vector<torch::Tensor>> row_grads(rows.size());
    std::vector<torch::Tensor> shared_grads;
    for (int64_t start = 0; start < n; start += kPiece) {
      const int64_t length = std::min(kPiece, n - start);
      std::vector<torch::Tensor> piece_rows, piece_shared = leaves(shared);
      for (const torch::Tensor& r : rows) piece_rows.push_back(r.narrow(0, start, length));
      piece_rows = leaves(piece_rows);
      std::vector<torch::Tensor> piece_args = piece_rows;
      piece_args.insert(piece_args.end(), piece_shared.begin(), piece_shared.end());
      const torch::Tensor out = f(piece_args);
      outs.push_back(out.detach());
      std::vector<torch::Tensor> piece_wrt = piece_rows;
      piece_wrt.insert(piece_wrt.end(), piece_shared.begin(), piece_shared.end());
      const std::vector<torch::Tensor> g = gradients(out, probe.narrow(0, start, length), piece_wrt);
      size_t k = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i].is_floating_point()) row_grads[i].push_back(g[k++]);
      }
      for (size_t i = 0; k < g.size(); ++i, ++k) {
        if (shared_grads.size() <= i) {
          shared_grads.push_back(g[k].to(torch::kFloat64));
        } else {
          shared_grads[i] += g[k];
        }
      }
    }
    EXPECT_TRUE(torch::equal(whole, torch::cat(outs))) << "the values differ";
    size_t k = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (!rows[i].is_floating_point()) continue;
      EXPECT_TRUE(torch::equal(whole_grads[k++], torch::cat(row_grads[i]))) << "the gradient of row input " << i;
    }
    for (size_t i = 0; k < whole_grads.size(); ++i, ++k) {
      const torch::Tensor expected = shared_grads[i];
      const double error =
          (whole_grads[k].to(torch::kFloat64) - expected).norm().item<double>() / expected.norm().item<double>();
      EXPECT_LT(error, 1e-5) << "the gradient of shared input " << i;
    }
  }
  torch::Device device_{torch::kCUDA, 0};
};

TEST_P(OnCudaLargeLaunch, RmsNormOfPerHeadRows) {
  const int64_t rows = GetParam();
  const torch::TensorOptions f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  expect_same_in_pieces([](const std::vector<torch::Tensor>& in) { return rms_norm(in[0], in[1], 1e-6); },
                        {torch::randn({rows, 64}, f32)}, {1 + 0.1 * torch::randn({64}, f32)});
}

TEST_P(OnCudaLargeLaunch, RopeOfManyTokens) {
  const int64_t tokens = GetParam();
  const torch::TensorOptions f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  const torch::Tensor positions = torch::arange(tokens, torch::TensorOptions().dtype(torch::kInt64).device(device_));
  expect_same_in_pieces(
      [](const std::vector<torch::Tensor>& in) { return rope(in[0], rope_table(in[1], 64, 500000, torch::kFloat32)); },
      {torch::randn({tokens, 2, 64}, f32), positions}, {});
}

TEST_P(OnCudaLargeLaunch, TokenNllOfManyRows) {
  const int64_t rows = GetParam();
  const torch::TensorOptions f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  const torch::Tensor targets = torch::randint(0, 40, {rows}, f32.dtype(torch::kInt64));
  expect_same_in_pieces([](const std::vector<torch::Tensor>& in) { return token_nll(in[0], in[1]); },
                        {torch::randn({rows, 40}, f32) * 3, targets}, {});
}

INSTANTIATE_TEST_SUITE_P(Rows, OnCudaLargeLaunch, ::testing::Values(int64_t{131072}, int64_t{1048576 + 17}));

}  // namespace
}  // namespace ttt
