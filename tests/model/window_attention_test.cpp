// window_attention_by_parts (model/window_attention.h): the three rectangles merged by their
// logsumexps give `attend` under the window's mask, forward and gradients, in fp64 on the CPU
// (plain ops for the parts); on a GPU in bf16 (cuDNN's kernel for the parts) within bf16
// rounding of the fp32 composable form. cudnn_window_attention (cuDNN's own band) likewise on a
// GPU, and the sizes it takes on any machine.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "model/layers.h"
#include "model/window_attention.h"
#include "ttt_build_features.h"

#if TTT_WITH_CUDA_KERNELS
#include "kernels/window_merge.h"
#include "model/kernel_launch.h"
#endif

namespace ttt {
namespace {

struct Attended {
  torch::Tensor out;
  std::vector<torch::Tensor> grads;  // of q, k, v
};

// q [Tq, H, d], k and v [window - 1 + Tq, H, d] from a seed; the output [Tq, H * d] and the
// gradients of a fixed random weighting of it.
Attended run(bool by_parts, int64_t Tq, int64_t window, int64_t H, int64_t d, const torch::TensorOptions& options,
             torch::Dtype compute) {
  torch::manual_seed(7);
  const int64_t Tk = window - 1 + Tq;
  const auto rand = [&](int64_t rows) { return torch::randn({rows, H, d}, options.dtype(torch::kFloat64)); };
  const torch::Tensor q0 = rand(Tq), k0 = rand(Tk), v0 = rand(Tk);
  const torch::Tensor weights = torch::randn({Tq, H * d}, options.dtype(torch::kFloat64));
  const auto leaf = [&](const torch::Tensor& t) { return t.to(compute).requires_grad_(); };
  const torch::Tensor q = leaf(q0), k = leaf(k0), v = leaf(v0);
  torch::Tensor out;
  if (by_parts) {
    out = window_attention_by_parts(q, k, v, window).reshape({Tq, H * d});
  } else {
    const torch::Tensor key_positions = torch::arange(Tk, options.dtype(torch::kInt64));
    out = attend(q, k, v, attention_mask(key_positions.narrow(0, Tk - Tq, Tq), key_positions, window));
  }
  const torch::Tensor loss = (out.to(torch::kFloat64) * weights).sum();
  return {out.detach().to(torch::kFloat64), torch::autograd::grad({loss}, {q, k, v})};
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kCPU, torch::kFloat64), y = b.to(torch::kCPU, torch::kFloat64);
  return (x - y).norm().item<double>() / y.norm().item<double>();
}

TEST(WindowAttention, ByPartsIsTheWindowsAttentionInFp64) {
  // (queries, window): a middle part of several keys, of one, of none; one query.
  for (const auto& [Tq, window] : std::vector<std::pair<int64_t, int64_t>>{{4, 8}, {6, 8}, {7, 8}, {1, 5}, {5, 16}}) {
    SCOPED_TRACE("queries " + std::to_string(Tq) + ", window " + std::to_string(window));
    const auto options = torch::TensorOptions();
    const Attended parts = run(true, Tq, window, 3, 4, options, torch::kFloat64);
    const Attended reference = run(false, Tq, window, 3, 4, options, torch::kFloat64);
    EXPECT_LT(relative_error(parts.out, reference.out), 1e-12);
    for (int i = 0; i < 3; ++i) EXPECT_LT(relative_error(parts.grads[i], reference.grads[i]), 1e-12) << "input " << i;
  }
}

TEST(WindowAttention, ServesOnlyASpanAfterAFullCache) {
  EXPECT_TRUE(window_attention_by_parts_serves(4096, 8191 + 4096, 8192, 2048));
  EXPECT_FALSE(window_attention_by_parts_serves(4096, 4096 + 4096, 8192, 2048));  // cache not full
  EXPECT_FALSE(window_attention_by_parts_serves(1024, 8191 + 1024, 8192, 2048));  // too few queries
  EXPECT_FALSE(window_attention_by_parts_serves(8192, 8191 + 8192, 8192, 1));     // more than window - 1
  EXPECT_FALSE(window_attention_by_parts_serves(4, 4, 0, 1));                     // no window
}

TEST(WindowAttentionOnCuda, ByPartsInBf16IsTheWindowsAttentionWithinRounding) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0);
  for (const auto& [Tq, window] : std::vector<std::pair<int64_t, int64_t>>{{2048, 4096}, {1000, 1500}}) {
    SCOPED_TRACE("queries " + std::to_string(Tq) + ", window " + std::to_string(window));
    const Attended parts = run(true, Tq, window, 4, 64, gpu, torch::kBFloat16);
    const Attended reference = run(false, Tq, window, 4, 64, gpu, torch::kFloat32);
    EXPECT_LT(relative_error(parts.out, reference.out), 1e-2);
    for (int i = 0; i < 3; ++i) EXPECT_LT(relative_error(parts.grads[i], reference.grads[i]), 1e-2) << "input " << i;
  }
}

// attend_span sends a span longer than the window to the parts by blocks of queries (those
// after a full cache), the first blocks of a sequence to the causal and windowed kernels.
TEST(WindowAttentionOnCuda, LongSpansGoByBlocksWithinRounding) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0);
  struct Case {
    int64_t cached, Tq, window, H;
  };
  // Blocks of window - 1 queries: at 8192 two full blocks by parts and a remainder on FA2.
  for (const Case& c : std::vector<Case>{{0, 14000, 4096, 4}, {4095, 9000, 4096, 4}, {8191, 16500, 8192, 2}}) {
    const auto [cached, Tq, window, H] = c;
    SCOPED_TRACE("cached " + std::to_string(cached) + ", queries " + std::to_string(Tq) + ", window " +
                 std::to_string(window));
    const int64_t d = 64, Tk = cached + Tq;
    torch::manual_seed(3);
    const torch::Tensor q = torch::randn({Tq, H, d}, gpu), k = torch::randn({Tk, H, d}, gpu),
                        v = torch::randn({Tk, H, d}, gpu);
    const torch::Tensor key_positions = torch::arange(Tk, gpu.dtype(torch::kInt64));
    const torch::Tensor query_positions = key_positions.narrow(0, cached, Tq);
    const torch::Tensor fused = attend_span(q.to(torch::kBFloat16), k.to(torch::kBFloat16), v.to(torch::kBFloat16),
                                            query_positions, key_positions, window, Order::kFirst);
    const torch::Tensor reference = attend(q, k, v, attention_mask(query_positions, key_positions, window));
    EXPECT_LT(relative_error(fused, reference), 1e-2);
  }
}

TEST(WindowAttention, CudnnWindowTakesOnlyChunksAfterAFullCache) {
  EXPECT_TRUE(cudnn_window_sizes_served(1024, 8191 + 1024, 8192));    // a chunk after a full window's cache
  EXPECT_TRUE(cudnn_window_sizes_served(16384, 8191 + 16384, 8192));  // a prefix span longer than the window
  EXPECT_FALSE(cudnn_window_sizes_served(1024, 3072 + 1024, 8192));   // a cache not full: a shape of its own
  EXPECT_FALSE(cudnn_window_sizes_served(16384, 16384, 8192));        // a sequence's first span
  EXPECT_FALSE(cudnn_window_sizes_served(2048, 4096, 0));             // full attention: its cache grows
  EXPECT_FALSE(cudnn_window_sizes_served(1000, 8191 + 1000, 8192));   // queries not whole blocks
  EXPECT_FALSE(cudnn_window_sizes_served(1, 8192, 8192));             // a decoded token
  const torch::Tensor cpu = torch::zeros({1024, 2, 64});
  const torch::Tensor cache = torch::zeros({8191 + 1024, 2, 64});
  EXPECT_FALSE(cudnn_window_attention_refusal(cpu, cache, cache, 8192).empty());  // not on CUDA (or not built)
}

// cudnn_window_attention's output and gradients in bf16 within rounding of the fp32 composable
// form, after a full window's cache: chunks, a span longer than the window, several head
// counts and head sizes (the 760M and 3B models'), q a view of a fused projection.
TEST(WindowAttentionOnCuda, CudnnWindowInBf16IsTheWindowsAttentionWithinRounding) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  if (!TTT_WITH_CUDNN_WINDOW) GTEST_SKIP() << "built without cuDNN's frontend";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0);
  struct Case {
    int64_t cached, Tq, window, H, d;
    bool strided_q;
  };
  for (const Case& c : std::vector<Case>{{8191, 1024, 8192, 2, 64, false},
                                         {4095, 1024, 4096, 4, 64, true},
                                         {4095, 8192, 4096, 2, 64, false},
                                         {2047, 64, 2048, 1, 64, false},
                                         {1023, 512, 1024, 3, 80, true},
                                         {1023, 512, 1024, 2, 128, false}}) {
    SCOPED_TRACE("cached " + std::to_string(c.cached) + ", queries " + std::to_string(c.Tq) + ", window " +
                 std::to_string(c.window) + ", head_dim " + std::to_string(c.d));
    const int64_t Tk = c.cached + c.Tq;
    torch::manual_seed(5);
    const torch::Tensor q0 = torch::randn({c.Tq, 3, c.H, c.d}, gpu), k0 = torch::randn({Tk, c.H, c.d}, gpu),
                        v0 = torch::randn({Tk, c.H, c.d}, gpu);
    const torch::Tensor weights = torch::randn({c.Tq, c.H * c.d}, gpu);
    const torch::Tensor key_positions = torch::arange(Tk, gpu.dtype(torch::kInt64));
    const torch::Tensor mask = attention_mask(key_positions.narrow(0, c.cached, c.Tq), key_positions, c.window);
    Attended got, want;
    for (const bool cudnn : {true, false}) {
      const auto leaf = [&](const torch::Tensor& t) {
        return t.to(cudnn ? torch::kBFloat16 : torch::kFloat32).requires_grad_();
      };
      const torch::Tensor fused = leaf(q0), k = leaf(k0), v = leaf(v0);
      const torch::Tensor q = c.strided_q ? fused.select(1, 1) : fused.select(1, 1).contiguous();
      torch::Tensor out;
      if (cudnn) {
        const std::string refusal = cudnn_window_attention_refusal(q, k, v, c.window);
        ASSERT_TRUE(refusal.empty()) << refusal;
        out = cudnn_window_attention(q, k, v, c.window).reshape({c.Tq, c.H * c.d});
      } else {
        out = attend(q, k, v, mask);
      }
      const torch::Tensor loss = (out.to(torch::kFloat32) * weights).sum();
      Attended& result = cudnn ? got : want;
      result.out = out.detach();
      result.grads = torch::autograd::grad({loss}, {fused, k, v});
    }
    EXPECT_LT(relative_error(got.out, want.out), 1e-2);
    for (int i = 0; i < 3; ++i) EXPECT_LT(relative_error(got.grads[i], want.grads[i]), 1e-2) << "input " << i;
  }
}

// Exactly the keys of the window: with q = 0 every visible key weighs 1 / window, and v one-hot
// by key (head h, dimension m: key h * d + m) shows which keys each query saw, where a key too
// many or too few would move the outputs by about 1 / window, within the rounding above.
TEST(WindowAttentionOnCuda, CudnnWindowSeesExactlyTheWindowsKeys) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  if (!TTT_WITH_CUDNN_WINDOW) GTEST_SKIP() << "built without cuDNN's frontend";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0).dtype(torch::kBFloat16);
  const int64_t window = 65, Tq = 64, Tk = window - 1 + Tq, H = 2, d = 64;  // H * d = Tk: a dimension per key
  const torch::Tensor q = torch::zeros({Tq, H, d}, gpu), k = torch::randn({Tk, H, d}, gpu);
  const torch::Tensor v = torch::eye(Tk, gpu).reshape({Tk, H, d});
  const std::string refusal = cudnn_window_attention_refusal(q, k, v, window);
  ASSERT_TRUE(refusal.empty()) << refusal;
  const torch::Tensor out = cudnn_window_attention(q, k, v, window).reshape({Tq, Tk}).to(torch::kFloat32).cpu();
  const torch::Tensor key_positions = torch::arange(Tk, torch::kInt64);
  const torch::Tensor visible = attention_mask(key_positions.narrow(0, Tk - Tq, Tq), key_positions, window);
  EXPECT_TRUE(torch::equal(out > 0, visible));
  EXPECT_LT((out - visible.to(torch::kFloat32) / window).abs().max().item<double>(), 1e-4);
}

// attend_span sends a chunk after a full cache to cuDNN's band unless TTT_CUDNN_WINDOW=0: the
// same bits as cudnn_window_attention called directly.
TEST(WindowAttentionOnCuda, AttendSpanTakesChunksToCudnnWindow) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  if (!TTT_WITH_CUDNN_WINDOW) GTEST_SKIP() << "built without cuDNN's frontend";
  const char* setting = std::getenv("TTT_CUDNN_WINDOW");
  if (setting != nullptr && std::string(setting) == "0") GTEST_SKIP() << "TTT_CUDNN_WINDOW=0";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0).dtype(torch::kBFloat16);
  const int64_t cached = 4095, Tq = 1024, window = 4096, H = 2, d = 64, Tk = cached + Tq;
  torch::manual_seed(9);
  const torch::Tensor q = torch::randn({Tq, H, d}, gpu), k = torch::randn({Tk, H, d}, gpu),
                      v = torch::randn({Tk, H, d}, gpu);
  const torch::Tensor key_positions = torch::arange(Tk, gpu.dtype(torch::kInt64));
  const torch::Tensor spanned =
      attend_span(q, k, v, key_positions.narrow(0, cached, Tq), key_positions, window, Order::kFirst);
  EXPECT_TRUE(torch::equal(spanned, cudnn_window_attention(q, k, v, window).reshape({Tq, H * d})));
}

#if TTT_WITH_CUDA_KERNELS
// The backward's gather kernel called directly, against the plain ops it replaces (fp32 zeros
// plus each part's dq, flipped where reversed, rounded once; the parts' key rows concatenated):
// the same bits, with parts of head-major and of row-major layout, 16-byte packs and single values.
TEST(WindowAttentionOnCuda, PartGradsGatherAsThePlainOps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  const auto gpu = torch::TensorOptions().device(torch::kCUDA, 0).dtype(torch::kBFloat16);
  struct Layout {
    std::vector<int64_t> keys;
    std::vector<bool> reversed;
  };
  // The engine's (a reversed square first), and reversed parts elsewhere with other key counts.
  const std::vector<Layout> layouts{{{37, 50, 37}, {true, false, false}}, {{29, 50, 41}, {false, true, true}}};
  for (const int64_t d : {int64_t{64}, int64_t{6}}) {
    for (const Layout& layout : layouts) {
      SCOPED_TRACE("head_dim " + std::to_string(d) + ", first part's keys " + std::to_string(layout.keys[0]));
      const int64_t H = 3, Tq = 37;
      torch::manual_seed(11);
      // [H, T, d] as cuDNN hands them: contiguous for reversed parts, views of [T, H, d] for the others.
      const auto part_rows = [&](int64_t rows, bool head_major) {
        return head_major ? torch::randn({H, rows, d}, gpu) : torch::randn({rows, H, d}, gpu).transpose(0, 1);
      };
      const auto rows_of = [](const torch::Tensor& t) {
        return kernels::PartRows{t.data_ptr(), t.stride(0), t.stride(1)};
      };
      std::vector<kernels::WindowPartGrads> described;
      std::vector<torch::Tensor> dq_parts, dk_parts, dv_parts;
      torch::Tensor want_q = torch::zeros({H, Tq, d}, gpu.dtype(torch::kFloat32));
      int64_t Tk = 0;
      for (size_t i = 0; i < layout.keys.size(); ++i) {
        const bool reversed = layout.reversed[i];
        dq_parts.push_back(part_rows(Tq, reversed));
        dk_parts.push_back(part_rows(layout.keys[i], reversed));
        dv_parts.push_back(part_rows(layout.keys[i], reversed));
        described.push_back(
            {rows_of(dq_parts[i]), rows_of(dk_parts[i]), rows_of(dv_parts[i]), layout.keys[i], reversed});
        want_q.add_(reversed ? dq_parts[i].flip({1}) : dq_parts[i]);
        Tk += layout.keys[i];
      }
      const auto joined = [&](const std::vector<torch::Tensor>& parts) {
        std::vector<torch::Tensor> in_order;
        for (size_t i = 0; i < parts.size(); ++i) {
          in_order.push_back(layout.reversed[i] ? parts[i].flip({1}) : parts[i]);
        }
        return torch::cat(in_order, 1).transpose(0, 1);
      };
      torch::Tensor dq = torch::empty({Tq, H, d}, gpu), dk = torch::empty({Tk, H, d}, gpu),
                    dv = torch::empty({Tk, H, d}, gpu);
      check("window_part_grads", kernels::window_part_grads(described.data(), 3, kernels::Storage::kBFloat16, H, Tq, d,
                                                            dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), stream()));
      EXPECT_TRUE(torch::equal(dq, want_q.transpose(0, 1).to(torch::kBFloat16)));
      EXPECT_TRUE(torch::equal(dk, joined(dk_parts)));
      EXPECT_TRUE(torch::equal(dv, joined(dv_parts)));
    }
  }
}
#endif

}  // namespace
}  // namespace ttt
