// `ttt bench`: speed of the paper's model shapes with random weights, per variant: prefill,
// evaluation (loss over every token, what the authors' code times), decode and one training
// step. Timings end on a value read back from the device, so they include all queued work.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include "cli_support.h"
#include "commands.h"
#include "eval/model_flops.h"
#include "infer/decode_step.h"
#include "infer/session.h"
#include "io/atomic_file.h"
#include "io/paths.h"
#include "ttt/chunk_graphs.h"
#include "ttt/inner_loop.h"
#include "ttt/sequence_gradient.h"

namespace ttt::cli {
namespace {

using nlohmann::json;

// The paper's shapes (SPEC section 2; 760M is the GPT-3 shape with d_ff scaled like the
// others: ttt-e2e trades width of every MLP for its prime MLPs at equal parameters).
struct Shape {
  std::string name;
  int64_t d_model, n_layers, n_heads, d_ff_ttt, d_ff_baseline;
};
const Shape kShapes[] = {
    {"125m", 768, 12, 12, 1664, 2048},
    {"760m", 1536, 24, 16, 3328, 4096},
    {"3b", 2560, 32, 32, 5632, 6912},
};

ModelConfig bench_config(const Shape& shape, Variant variant) {
  ModelConfig c;
  c.variant = variant;
  c.vocab_size = 128256;
  c.d_model = shape.d_model;
  c.n_layers = shape.n_layers;
  c.n_heads = shape.n_heads;
  c.d_ff = variant == Variant::kTttE2E ? shape.d_ff_ttt : shape.d_ff_baseline;
  c.rms_eps = 1e-6;
  c.rope_theta = 500000;
  c.window = variant == Variant::kFullAttention ? 0 : 8192;
  c.mini_batch = 1024;
  c.suffix_len = variant == Variant::kTttE2E ? shape.n_layers / 4 : 0;
  c.bos_id = 128000;
  c.eos_id = 128001;
  c.inner_lr = 1.0;
  c.inner_clip = 1.0;
  c.validate();
  return c;
}

// Random weights drawn on the device (N(0, 0.02^2) matrices, unit gains) in fp32.
Params random_weights(const ModelConfig& config, const torch::Device& device) {
  Params params;
  visit_params(config, params, [&](const std::string&, const std::vector<int64_t>& shape, ParamKind kind,
                                   torch::Tensor& slot) {
    const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    slot = kind == ParamKind::kGain ? torch::ones(shape, options) : torch::randn(shape, options) * 0.02;
  });
  return params;
}

struct BenchOptions {
  ComputeFlags compute;
  std::string sizes = "125m", variants = "ttt-e2e,swa,fa", modes = "eval,prefill,decode", contexts = "8192,32768,131072";
  std::string json_path, profile_dir, config_out;
  std::string train_contexts = "8192";
  int64_t decode_tokens = 64;
  int64_t prefix_span = 0;  // train rows' prefix span in tokens; 0: the engine's choice
  int64_t tail_chunks = 0;  // train rows' chunks run once, as one graph; 0: the engine's choice
  double repeat_below_s = 5.0;
  int64_t repeats = 3;
  double peak_tflops = -1;  // negative: from the device's name
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Runs `once` under the Kineto profiler (host ops and device kernels) and saves its
// trace, in Chrome's trace format, to `path` (scripts/profile_summary.py reads it).
void profile(const std::string& path, const std::function<void()>& once) {
  namespace profiler = torch::autograd::profiler;
  const profiler::ProfilerConfig config(profiler::ProfilerState::KINETO);
  const std::set<profiler::ActivityType> activities = {profiler::ActivityType::CPU, profiler::ActivityType::CUDA};
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  try {
    once();
  } catch (...) {
    profiler::disableProfiler();
    throw;
  }
  profiler::disableProfiler()->save(path);
}

// Runs `once` untimed (warm-up: kernels chosen and loaded, memory pools grown for these
// shapes), then timed, repeated while quick; returns the median seconds. With a profile
// path, one more run is profiled there (after the timed ones: it does not slow them).
double timed(const BenchOptions& options, const std::function<void()>& once, const std::string& profile_path) {
  once();
  std::vector<double> seconds;
  do {
    const auto start = std::chrono::steady_clock::now();
    once();
    seconds.push_back(seconds_since(start));
  } while (seconds.back() < options.repeat_below_s && static_cast<int64_t>(seconds.size()) < options.repeats);
  if (!profile_path.empty()) profile(profile_path, once);
  return median(seconds);
}

torch::Tensor random_ids(int64_t n, const ModelConfig& config, const torch::Device& device) {
  torch::Tensor ids = torch::randint(0, 128000, {n}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  ids[0] = config.bos_id;
  return ids;
}

// One measurement: fills `row` with its numbers.
void measure(const BenchOptions& options, const ModelConfig& config, const Params& inference, const Params& trainable,
             const std::string& mode, int64_t context, const torch::Device& device, json& row) {
  const std::string profile_path =
      options.profile_dir.empty()
          ? ""
          : options.profile_dir + "/" + row["size"].get<std::string>() + "-" + row["variant"].get<std::string>() + "-" +
                mode + "-" + std::to_string(context) + ".json";
  const auto run_timed = [&](const std::function<void()>& once) { return timed(options, once, profile_path); };
  if (mode == "eval") {
    const torch::Tensor tokens = random_ids(context + 1, config, device);
    // ttt-e2e's CUDA graphs are captured in a second warm-up run (the first runs eagerly).
    const std::unique_ptr<ChunkGraphs> graphs = ChunkGraphs::where_supported(config, inference);
    if (graphs) evaluate(config, inference, tokens, {}, graphs.get());
    const double s = run_timed([&] { evaluate(config, inference, tokens, {}, graphs.get()); });
    row["seconds"] = s;
    row["tokens_per_s"] = static_cast<double>(context) / s;
    row["model_flops"] = evaluation_flops(config, context);
  } else if (mode == "prefill") {
    const torch::Tensor tokens = random_ids(context, config, device);
    const double s = run_timed([&] {
      Session session(config, inference);
      session.feed(tokens).sum().item<double>();
    });
    row["seconds"] = s;
    row["tokens_per_s"] = static_cast<double>(context) / s;
  } else if (mode == "decode") {
    // The context is read so that the decoded tokens cross a mini-batch boundary: one of
    // them completes a chunk and (ttt-e2e) takes its inner step. The two tokens before them
    // are a warm-up: the decode step runs eagerly once and is captured as a CUDA graph at the
    // second (infer/decode_step.h).
    const int64_t k = options.decode_tokens, warm_up = 2, before = std::max<int64_t>(1, context - k / 2 - warm_up);
    Session session(config, inference);
    session.feed(random_ids(before, config, device));
    std::vector<double> latencies;
    int64_t token = session.last_logits().argmax().item<int64_t>();
    for (int64_t i = 0; i < warm_up; ++i) token = session.feed(std::vector<int64_t>{token}).argmax().item<int64_t>();
    const auto replays = [&] { return session.decode_step() ? session.decode_step()->replays() : int64_t{0}; };
    const int64_t replays_before = replays();
    for (int64_t i = 0; i < k; ++i) {
      const auto start = std::chrono::steady_clock::now();
      token = session.feed(std::vector<int64_t>{token}).argmax().item<int64_t>();
      latencies.push_back(seconds_since(start));
    }
    row["graph_replays"] = replays() - replays_before;  // timed tokens that replayed the step's graph
    const auto next = [&] { token = session.feed(std::vector<int64_t>{token}).argmax().item<int64_t>(); };
    const auto to_inner_step = [&] {  // the next token fed takes the inner step (ttt-e2e)
      while (config.is_ttt() && session.position() % config.mini_batch != 0) next();
    };
    const double typical = median(latencies), worst = *std::max_element(latencies.begin(), latencies.end());
    double inner_step = worst;
    if (config.is_ttt()) {
      // The timed tokens' inner step ran its chunk's graph eagerly (a graph runs eagerly once,
      // is captured the next time, replayed after); so does the next while the window still
      // fills (8K: the cache grows to the full window at the next chunk). The inner-step token
      // at each of the next three chunks: the last replays, as every later one does.
      json steps = json::array();
      for (int chunk = 0; chunk < 3; ++chunk) {
        to_inner_step();
        const auto start = std::chrono::steady_clock::now();
        next();
        inner_step = seconds_since(start);
        steps.push_back(inner_step * 1e3);
      }
      row["inner_steps_ms"] = steps;
      row["inner_step_ms"] = inner_step * 1e3;
    }
    if (!profile_path.empty()) {
      // ttt-e2e: the first of the profiled tokens is the next one that takes an inner step.
      to_inner_step();
      profile(profile_path, [&] {
        for (int i = 0; i < 4; ++i) next();
      });
    }
    const double amortised = typical + (inner_step - typical) / static_cast<double>(config.mini_batch);
    row["ms_per_token"] = typical * 1e3;
    row["worst_ms"] = worst * 1e3;
    row["amortised_ms"] = amortised * 1e3;
    row["tokens_per_s"] = 1.0 / amortised;
    row["seconds"] = typical;
  } else if (mode == "train") {
    // One outer step's gradient as the trainer takes it: the prefix by spans, the suffix by
    // per-chunk recomputation (ttt-e2e's exact meta-gradient). The optimiser update is not
    // included. Where graphs serve (not fa), the gradient replays as a CUDA graph after an
    // eager run and a capture.
    const torch::Tensor tokens = random_ids(context + 1, config, device);
    // The gradient in one allocation, cleared by one fill, as the trainer keeps it (the
    // graphs take its views as their buffers).
    GradientBuffer gradients;
    gradients.clear(config, trainable);
    const std::unique_ptr<GradientGraphs> graphs = GradientGraphs::where_supported(config, trainable);
    GradientOptions gradient;
    gradient.graphs = graphs.get();
    gradient.prefix_span_tokens = options.prefix_span;
    if (options.prefix_span > 0) row["prefix_span_tokens"] = options.prefix_span;
    gradient.tail_chunks = options.tail_chunks;
    if (options.tail_chunks > 0) row["tail_chunks"] = options.tail_chunks;
    if (graphs) accumulate_sequence_gradient(config, trainable, tokens, gradient);
    const double s = run_timed([&] {
      gradients.clear(config, trainable);
      accumulate_sequence_gradient(config, trainable, tokens, gradient);
      trainable.embed.grad().sum().item<double>();
    });
    row["seconds"] = s;
    row["tokens_per_s"] = static_cast<double>(context) / s;
    row["model_flops"] = training_flops(config, context);
  } else {
    throw Error("unknown mode '" + mode + "' (expected eval, prefill, decode or train)");
  }
}

void print_row(const json& row) {
  std::printf("%-5s %-8s %-8s %8lld  ", row["size"].get<std::string>().c_str(), row["variant"].get<std::string>().c_str(),
              row["mode"].get<std::string>().c_str(), static_cast<long long>(row["context"].get<int64_t>()));
  if (row.contains("error")) {
    std::printf("%s\n", row["error"].get<std::string>().c_str());
  } else if (row["mode"] == "decode") {
    std::printf("%9.3f ms/token  worst %8.2f ms", row["ms_per_token"].get<double>(), row["worst_ms"].get<double>());
    if (row.contains("inner_step_ms")) std::printf("  inner step %6.2f ms", row["inner_step_ms"].get<double>());
    std::printf("  amortised %8.3f ms  %3lld graph replays", row["amortised_ms"].get<double>(),
                static_cast<long long>(row.value("graph_replays", int64_t{0})));
  } else {
    std::printf("%9.3f s  %11.0f tokens/s", row["seconds"].get<double>(), row["tokens_per_s"].get<double>());
    if (row.contains("mfu")) std::printf("  MFU %4.1f%%", 100 * row["mfu"].get<double>());
  }
  if (!row.contains("error") && row.contains("gpu_peak_reserved_gib")) {
    std::printf("  GPU peak %.1f GiB (%.1f reserved)", row["gpu_peak_allocated_gib"].get<double>(),
                row["gpu_peak_reserved_gib"].get<double>());
  }
  if (!row.contains("error")) std::printf("\n");
  std::fflush(stdout);
}

const Shape& shape_named(const std::string& size) {
  for (const Shape& s : kShapes) {
    if (s.name == size) return s;
  }
  throw Error("unknown size '" + size + "' (expected 125m, 760m or 3b)");
}

Variant variant_or_error(const std::string& variant) {
  const std::optional<Variant> named = variant_named(variant);
  require(named.has_value(), "unknown variant '" + variant + "' (expected ttt-e2e, swa or fa)");
  return *named;
}

// --config-out: the one shape asked for as a model config file, for scripts that run the
// same shapes through other commands (bench/serve_latency.sh).
void write_bench_config(const BenchOptions& options) {
  const std::vector<std::string> sizes = split(options.sizes), variants = split(options.variants);
  require(sizes.size() == 1 && variants.size() == 1, "--config-out takes one --sizes and one --variants");
  io::write_text_file(options.config_out,
                      bench_config(shape_named(sizes[0]), variant_or_error(variants[0])).to_json().dump(1) + "\n");
}

void run_bench(const BenchOptions& options) {
  if (!options.config_out.empty()) return write_bench_config(options);
  const ComputeOptions compute = options.compute.compute();
  require(options.compute.param_dtype() == torch::kFloat32, "ttt bench: --dtype f64 is not a benchmark precision");
  const MatmulDtypeGuard precision(compute.matmul_dtype);
  const std::vector<int64_t> contexts = parse_integers("--contexts", options.contexts, "lengths like 8192,32768");
  const std::vector<int64_t> train_contexts =
      parse_integers("--train-contexts", options.train_contexts, "lengths like 8192,32768");
  if (!options.profile_dir.empty()) io::make_directories(options.profile_dir);
  // MFU: the rows' model FLOPs (eval/model_flops.h) against the device's matmul peak.
  const std::string device = device_name(compute.device);
  const bool half = compute.matmul_dtype == torch::kBFloat16 || compute.matmul_dtype == torch::kHalf;
  const std::optional<double> peak = options.peak_tflops > 0    ? std::optional<double>(options.peak_tflops * 1e12)
                                     : options.peak_tflops == 0 ? std::nullopt
                                     : half                     ? peak_half_precision_flops(device)
                                                                : std::nullopt;
  if (peak) std::printf("%s: MFU against a matmul peak of %.0f TFLOP/s\n", device.c_str(), *peak / 1e12);
  // Flags that depend on the config checked for every one before any weights are drawn.
  const std::vector<std::string> all_modes = split(options.modes);
  const bool trains = std::find(all_modes.begin(), all_modes.end(), "train") != all_modes.end();
  for (const std::string& size : trains ? split(options.sizes) : std::vector<std::string>()) {
    for (const std::string& variant : split(options.variants)) {
      const int64_t chunk = bench_config(shape_named(size), variant_or_error(variant)).mini_batch;
      require(options.prefix_span % chunk == 0, "--prefix-span " + std::to_string(options.prefix_span) +
                                                    " is not a whole number of chunks (" + std::to_string(chunk) +
                                                    " tokens)");
    }
  }
  json rows = json::array();
  std::printf("%-5s %-8s %-8s %8s  result\n", "size", "variant", "mode", "context");
  for (const std::string& size : split(options.sizes)) {
    const Shape& shape = shape_named(size);
    for (const std::string& variant : split(options.variants)) {
      const ModelConfig config = bench_config(shape, variant_or_error(variant));
      // The fp32 weights stay only where a train mode needs them (3B: 12 GB).
      const std::vector<std::string> modes = split(options.modes);
      Params trainable = random_weights(config, compute.device);
      const Params inference = params_for_inference(config, trainable, compute);
      if (std::find(modes.begin(), modes.end(), "train") == modes.end()) {
        trainable = Params();
      } else {
        trainable = convert_params(config, trainable, torch::kFloat32, /*requires_grad=*/true);
      }
      for (const std::string& mode : modes) {
        for (const int64_t context : mode == "train" ? train_contexts : contexts) {
          json row = {{"size", size}, {"variant", variant}, {"mode", mode}, {"context", context},
                      {"params", count_params(config, inference)}};
          // Each row from an allocator without cached blocks: its memory peaks are its own,
          // not what the rows before left reserved.
          release_cached_device_memory(compute.device);
          reset_device_memory_peaks(compute.device);
          try {
            measure(options, config, inference, trainable, mode, context, compute.device, row);
            if (peak && row.contains("model_flops")) {
              row["mfu"] = row["model_flops"].get<double>() / row["seconds"].get<double>() / *peak;
            }
          } catch (const std::exception& e) {
            std::string what = describe(e);
            what = what.substr(0, what.find('\n'));
            if (what.find("out of memory") != std::string::npos) {
              row["error"] = "out of memory";
              row["error_detail"] = what;
              std::fprintf(stderr, "%s\n", what.c_str());
            } else {
              row["error"] = what;
            }
          }
          if (const std::optional<DeviceMemory> memory = device_memory(compute.device)) {
            row["gpu_peak_allocated_gib"] = static_cast<double>(memory->peak_allocated) / (1 << 30);
            row["gpu_peak_reserved_gib"] = static_cast<double>(memory->peak_reserved) / (1 << 30);
          }
          print_row(row);
          rows.push_back(row);
          if (!options.json_path.empty()) {
            json out{{"device", options.compute.device},
                     {"device_name", device},
                     {"dtype", options.compute.dtype},
                     {"rows", rows}};
            if (peak) out["peak_flops"] = *peak;
            if (const std::optional<bool> expandable = device_segments_expandable(compute.device)) {
              out["expandable_segments"] = *expandable;
            }
            io::write_text_file(options.json_path, out.dump(1) + "\n");
          }
        }
      }
    }
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  options->compute.device = torch::cuda::is_available() ? "cuda" : "cpu";
  CLI::App* command = app.add_subcommand(
      "bench",
      "Time the paper's model shapes (random weights, Llama-3 vocabulary 128256, window 8192, mini-batch\n"
      "1024) per variant. Modes: eval (loss over every token), prefill (a prompt to its last logits and\n"
      "final state, inner steps included), decode (latency per token after the context, median and\n"
      "worst; ttt-e2e: also the token that takes an inner step three chunks on, its graph replayed,\n"
      "amortised over a mini-batch), train (one outer step's gradient at --train-contexts, as `ttt train`\n"
      "takes it: the meta-gradient for ttt-e2e). Each number is the\n"
      "median of up to --repeats runs (one when a run takes over --repeat-below seconds) after a warm-up.");
  options->compute.add_to(command);
  command->add_option("--sizes", options->sizes, "model shapes: 125m, 760m, 3b (comma-separated)")->capture_default_str();
  command->add_option("--variants", options->variants, "ttt-e2e, swa, fa (comma-separated)")->capture_default_str();
  command->add_option("--modes", options->modes, "eval, prefill, decode, train (comma-separated)")->capture_default_str();
  command->add_option("--contexts", options->contexts, "context lengths in tokens (comma-separated)")
      ->capture_default_str();
  command
      ->add_option("--train-contexts,--train-context", options->train_contexts,
                   "sequence lengths of the train mode (comma-separated)")
      ->capture_default_str();
  command
      ->add_option("--prefix-span", options->prefix_span,
                   "train rows: tokens per span of the prefix's checkpoints, a whole number of chunks (more:\n"
                   "faster, more GPU memory); 0: the engine's choice (4K on a GPU, a sequence of two such spans\n"
                   "as one where its graph is small)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command
      ->add_option("--tail-chunks", options->tail_chunks,
                   "train rows: the last chunks that skip the forward pass and run once, as one graph, in\n"
                   "the reverse scan (more: faster, more GPU memory); 0: the engine's choice (ttt-e2e: the\n"
                   "last chunks whose graphs fit 8 GiB and a quarter of the GPU by a rough count, where they\n"
                   "are at least half the sequence)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--decode-tokens", options->decode_tokens, "tokens timed one by one in the decode mode")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command->add_option("--repeats", options->repeats, "runs per measurement at most (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command->add_option("--repeat-below", options->repeat_below_s, "repeat only runs shorter than this (seconds)")
      ->capture_default_str();
  command->add_option("--json", options->json_path, "write every row here as JSON (rewritten after each row)");
  command
      ->add_option("--peak-tflops", options->peak_tflops,
                   "the device's dense matmul peak for the MFU of eval and train rows (their model FLOPs:\n"
                   "src/eval/model_flops.h); default: from the GPU's name under bf16 matmuls (H100, H200,\n"
                   "A100), none elsewhere; 0: no MFU")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--config-out", options->config_out,
                      "write the model config of the one --sizes and --variants here and exit (nothing is timed)");
  command->add_option("--profile", options->profile_dir,
                      "profile one more run of each row (decode: 4 tokens, for ttt-e2e from the next inner step on)\n"
                      "into DIR/SIZE-VARIANT-MODE-CONTEXT.json,\n"
                      "a Chrome trace of host ops and kernels; scripts/profile_summary.py sums it up. The\n"
                      "profiler's hooks slow the host a little even when off: take timings without it");
  command->callback([options] { run_bench(*options); });
}

}  // namespace ttt::cli
