// Training end to end on real text: the loss falls, an interrupted run resumes exactly, a
// step's gradient is `ttt grad`'s, and bad input gets clear errors.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "io/token_file.h"
#include "model/params.h"
#include "test_util.h"
#include "train/trainer.h"

namespace ttt {
namespace {

using nlohmann::json;
using test::expect_error;
using test::temp_path;

// Byte-level tokens of a text Debian always ships: ids 0..255 are bytes, 256 is bos.
std::string byte_tokens(const std::string& text_path, int64_t max_bytes) {
  std::ifstream in(text_path, std::ios::binary);
  std::vector<int64_t> tokens{256};
  for (char c; tokens.size() <= static_cast<size_t>(max_bytes) && in.get(c);) {
    tokens.push_back(static_cast<unsigned char>(c));
  }
  EXPECT_GT(tokens.size(), 1000u) << text_path;
  const std::string path = temp_path("text.u32");
  io::write_token_file(path, tokens);
  return path;
}

ModelConfig byte_model(Variant variant) {
  ModelConfig c;
  c.variant = variant;
  c.vocab_size = 258;
  c.d_model = 32;
  c.n_layers = 4;
  c.n_heads = 2;
  c.d_ff = 64;
  c.rms_eps = 1e-6;
  c.rope_theta = 10000;
  c.window = variant == Variant::kFullAttention ? 0 : 32;
  c.mini_batch = 16;
  c.suffix_len = variant == Variant::kTttE2E ? 1 : 0;
  c.inner_lr = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.inner_clip = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.bos_id = 256;
  c.eos_id = 257;
  c.validate();
  return c;
}

TrainConfig small_run(Variant variant) {
  static const std::string train = byte_tokens("/usr/share/common-licenses/GPL-3", 40000);
  static const std::string val = byte_tokens("/usr/share/common-licenses/Apache-2.0", 12000);
  TrainConfig c;
  c.model = byte_model(variant);
  c.train_tokens = train;
  c.val_tokens = val;
  c.seq_len = 64;
  c.batch_size = 2;
  c.steps = 8;
  c.lr = 3e-3;
  c.val_sequences = 4;
  c.eval_every = 4;
  c.checkpoint_every = 0;
  return c;
}

std::vector<json> read_metrics(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

class TrainVariant : public ::testing::TestWithParam<Variant> {};

TEST_P(TrainVariant, LossFallsOnRealText) {
  TrainConfig c = small_run(GetParam());
  c.steps = 40;
  c.eval_every = 0;
  test::ScratchDir dir;
  auto trainer = Trainer::start(c, dir.path("run"));
  const double before = trainer->validation_loss();
  EXPECT_NEAR(before, std::log(258.0), 0.3);  // untrained: about uniform over the vocabulary
  int64_t reports = 0;
  ASSERT_EQ(trainer->run([&](const StepReport&) { ++reports; }, {}), Trainer::Outcome::kFinished);
  EXPECT_EQ(reports, 40);
  const std::vector<json> metrics = read_metrics(dir.path("run"));
  ASSERT_EQ(metrics.size(), 40u);
  for (const json& step : metrics) {  // the update's share of the step
    EXPECT_GT(step.at("update_s").get<double>(), 0.0);
    EXPECT_LT(step.at("update_s").get<double>(), step.at("elapsed_s").get<double>());
  }
  const double after = metrics.back().at("val_loss").get<double>();
  EXPECT_LT(after, before - 1.5) << "validation loss " << before << " -> " << after;
  EXPECT_NEAR(after, trainer->validation_loss(), 1e-9);
  // The saved model is the trained one.
  const Model saved = load_model(dir.path("run/model.safetensors"));
  EXPECT_TRUE(torch::equal(saved.params.embed, trainer->model().params.embed.detach()));
}

INSTANTIATE_TEST_SUITE_P(Variants, TrainVariant,
                         ::testing::Values(Variant::kFullAttention, Variant::kSlidingWindow, Variant::kTttE2E),
                         [](const auto& info) {
                           return std::string(info.param == Variant::kFullAttention    ? "fa"
                                              : info.param == Variant::kSlidingWindow ? "swa"
                                                                                      : "ttt");
                         });

TEST(Trainer, InterruptedRunResumesExactly) {
  const TrainConfig c = small_run(Variant::kTttE2E);
  test::ScratchDir dir;
  auto whole = Trainer::start(c, dir.path("whole"));
  ASSERT_EQ(whole->run({}, {}), Trainer::Outcome::kFinished);

  auto first = Trainer::start(c, dir.path("split"));
  int64_t steps = 0;
  ASSERT_EQ(first->run([&](const StepReport&) { ++steps; }, [&] { return steps == 3; }), Trainer::Outcome::kStopped);
  EXPECT_EQ(first->steps_done(), 3);
  first.reset();
  // A kill while a later step's metrics were appended leaves a torn last line: resuming drops it.
  std::ofstream(dir.path("split/metrics.jsonl"), std::ios::app) << "{\"step\":4,\"loss\":5.";
  // Kills inside writes leave temporaries: of a save, or of a resume's config and metrics.
  const std::vector<std::string> files = {"checkpoint.safetensors", "model.safetensors", "config.json",
                                          "metrics.jsonl"};
  for (const std::string& file : files) std::ofstream(dir.path("split/" + file + ".tmp.99999.0")) << "torn";
  auto second = Trainer::resume(dir.path("split"), json::object());
  for (const std::string& file : files) EXPECT_EQ(test::file_size(dir.path("split/" + file + ".tmp.99999.0")), -1);
  EXPECT_EQ(second->steps_done(), 3);
  EXPECT_EQ(read_metrics(dir.path("split")).size(), 3u);
  ASSERT_EQ(second->run({}, {}), Trainer::Outcome::kFinished);

  const auto a = read_metrics(dir.path("whole")), b = read_metrics(dir.path("split"));
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].at("loss").get<double>(), b[i].at("loss").get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i].at("grad_norm").get<double>(), b[i].at("grad_norm").get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i].contains("val_loss"), b[i].contains("val_loss"));
    if (a[i].contains("val_loss")) EXPECT_EQ(a[i].at("val_loss").get<double>(), b[i].at("val_loss").get<double>());
  }
  for (const auto& [name, p] : named_params(whole->model().config, whole->model().params)) {
    EXPECT_TRUE(torch::equal(p, named_params(second->model().config, second->model().params).at(name))) << name;
  }
}

// A training checkpoint with one bit flipped anywhere in its header, or at any of many places
// in its tensors, is refused naming the file (it carries a checksum of its contents); so is
// metadata that is not ours under a valid checksum, naming the key too.
TEST(Trainer, ADamagedCheckpointIsRefused) {
  TrainConfig c = small_run(Variant::kTttE2E);
  c.model->d_model = 8;  // a small file: every byte of the header is tried
  c.model->d_ff = 16;
  c.steps = 1;
  test::ScratchDir dir;
  ASSERT_EQ(Trainer::start(c, dir.path("run"))->run({}, {}), Trainer::Outcome::kFinished);
  const std::string checkpoint = dir.path("run/checkpoint.safetensors");
  const std::string bytes = test::read_bytes(checkpoint);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  test::expect_every_bit_flip_rejected(bytes, checkpoint, 8 + header_size, 400,
                                       [&](const std::string&) { Trainer::resume(dir.path("run"), json::object()); });
  // Metadata that is not ours under a valid checksum (a file rewritten by another program).
  test::write_bytes(checkpoint, bytes);
  const io::SafetensorsFile file = io::read_safetensors(checkpoint);
  for (const auto& [train_config, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"{\"lr\": ", "not valid JSON"}, {std::string(1000, '['), "nested deeper"}, {"{\"nosuch\": 1}", "nosuch"}}) {
    std::map<std::string, std::string> metadata = file.metadata;
    metadata["train_config"] = train_config;
    io::write_safetensors(checkpoint, file.tensors, metadata);
    expect_error([&] { Trainer::resume(dir.path("run"), json::object()); }, {checkpoint + ": ", fragment});
  }
  struct DamagedNumber {
    std::string key, value, message;
  };
  for (const DamagedNumber& damaged : std::vector<DamagedNumber>{
           {"step", "", "metadata 'step': not valid JSON"},
           {"step", "1x", "metadata 'step': not valid JSON"},
           {"step", "-1", "metadata 'step' must be an integer >= 0, got -1"},
           {"step", "1.5", "metadata 'step' must be an integer >= 0, got 1.5"},
           {"step", "99999999999999999999", "metadata 'step' must be an integer >= 0, got 1e+20"},
           {"elapsed_s", "nan", "metadata 'elapsed_s': not valid JSON"},
           {"elapsed_s", "1e999", "metadata 'elapsed_s': not valid JSON"},
           {"elapsed_s", "-2.5", "metadata 'elapsed_s' must be a number >= 0, got -2.5"},
           {"elapsed_s", "\"3\"", "metadata 'elapsed_s' must be a number >= 0, got \"3\""}}) {
    SCOPED_TRACE(damaged.key + " = " + damaged.value);
    std::map<std::string, std::string> metadata = file.metadata;
    metadata[damaged.key] = damaged.value;
    io::write_safetensors(checkpoint, file.tensors, metadata);
    expect_error([&] { Trainer::resume(dir.path("run"), json::object()); }, {checkpoint + ": " + damaged.message});
  }
  test::write_bytes(checkpoint, bytes);
  EXPECT_EQ(Trainer::resume(dir.path("run"), json::object())->steps_done(), 1);
}

// dtype bf16 on the GPU: the same run as fp32 on the CPU within bf16 rounding, and a
// checkpoint that resumes onto the GPU. Skips without a CUDA GPU (scripts/gpu.sh runs it).
TEST(Trainer, TrainsOnCudaInBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  const TrainConfig on_cpu = small_run(Variant::kTttE2E);
  TrainConfig on_gpu = on_cpu;
  on_gpu.device = "cuda";
  on_gpu.dtype = "bf16";
  test::ScratchDir dir;
  ASSERT_EQ(Trainer::start(on_cpu, dir.path("cpu"))->run({}, {}), Trainer::Outcome::kFinished);
  auto gpu = Trainer::start(on_gpu, dir.path("gpu"));
  ASSERT_EQ(gpu->run({}, {}), Trainer::Outcome::kFinished);
  EXPECT_TRUE(gpu->model().params.embed.is_cuda());
  const auto a = read_metrics(dir.path("cpu")), b = read_metrics(dir.path("gpu"));
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  EXPECT_NEAR(b[0].at("loss").get<double>(), a[0].at("loss").get<double>(), 2e-2 * a[0].at("loss").get<double>());
  const double val_a = a.back().at("val_loss").get<double>(), val_b = b.back().at("val_loss").get<double>();
  EXPECT_NEAR(val_b, val_a, 5e-2 * val_a);
  auto resumed = Trainer::resume(dir.path("gpu"), json::object());
  EXPECT_EQ(resumed->steps_done(), 8);
  EXPECT_TRUE(resumed->model().params.embed.is_cuda());
  EXPECT_NEAR(resumed->validation_loss(), val_b, 1e-6 * val_b);
  EXPECT_FALSE(a[0].contains("gpu_peak_gib"));
  EXPECT_FALSE(a[0].contains("gpu_reserved_gib"));
  for (const json& step : b) {
    EXPECT_GT(step.at("gpu_peak_gib").get<double>(), 0.0);
    EXPECT_GE(step.at("gpu_reserved_gib").get<double>(), step.at("gpu_peak_gib").get<double>());
    EXPECT_GT(step.at("update_s").get<double>(), 0.0);
    EXPECT_LT(step.at("update_s").get<double>(), step.at("elapsed_s").get<double>());
  }

  // AdamW's moments in host memory between updates: the same run (up to the GPU's
  // run-to-run rounding), and a checkpoint that resumes.
  TrainConfig moments_on_host = on_gpu;
  moments_on_host.moments_on_host = "true";
  auto host = Trainer::start(moments_on_host, dir.path("host"));
  EXPECT_TRUE(host->optimizer().moments_on_host());
  EXPECT_TRUE(host->optimizer().host_moments_pinned());  // a tiny model's sequences park nothing
  EXPECT_FALSE(gpu->optimizer().moments_on_host());      // "auto": a tiny model's fit the GPU
  ASSERT_EQ(host->run({}, {}), Trainer::Outcome::kFinished);
  const auto c = read_metrics(dir.path("host"));
  ASSERT_EQ(c.size(), b.size());
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_NEAR(c[i].at("loss").get<double>(), b[i].at("loss").get<double>(), 1e-4 * b[i].at("loss").get<double>())
        << "step " << i + 1;
  }
  auto host_resumed = Trainer::resume(dir.path("host"), json::object());
  EXPECT_EQ(host_resumed->steps_done(), 8);
  EXPECT_TRUE(host_resumed->optimizer().moments_on_host());
  // Where the sequence parks, the host's pinned memory is the parking's: the moments stay pageable.
  TrainConfig parked = moments_on_host;
  parked.seq_len = 17 * parked.model->mini_batch;  // beyond 16 chunks a GPU parks
  auto pageable = Trainer::start(parked, dir.path("pageable"));
  EXPECT_TRUE(pageable->optimizer().moments_on_host());
  EXPECT_FALSE(pageable->optimizer().host_moments_pinned());
  EXPECT_NEAR(host_resumed->validation_loss(), c.back().at("val_loss").get<double>(), 1e-6 * val_b);
}

// The gradients live in one allocation (the ranks' all-reduce sends it whole), a slice a
// parameter: every step clears it and adds into it in place, and a .grad replaced from
// outside is pointed back at its slice.
TEST(Trainer, GradientsLiveInOneAllocationThatEveryStepClears) {
  test::ScratchDir dir;
  auto trainer = Trainer::start(small_run(Variant::kTttE2E), dir.path("run"));
  const auto params = named_params(trainer->model().config, trainer->model().params);
  const auto check_one_allocation = [&](const std::string& when) {
    const void* storage = params.begin()->second.grad().storage().data_ptr().get();
    std::vector<std::pair<const char*, int64_t>> slices;  // start, bytes
    int64_t bytes = 0;
    for (const auto& [name, p] : params) {
      ASSERT_TRUE(p.grad().defined()) << name << " " << when;
      EXPECT_EQ(p.grad().storage().data_ptr().get(), storage) << name << " " << when;
      slices.emplace_back(static_cast<const char*>(p.grad().data_ptr()), p.grad().nbytes());
      bytes += p.grad().nbytes();
    }
    std::sort(slices.begin(), slices.end());
    for (size_t i = 1; i < slices.size(); ++i) {
      EXPECT_LE(slices[i - 1].first + slices[i - 1].second, slices[i].first) << "slices overlap " << when;
    }
    EXPECT_EQ(params.begin()->second.grad().storage().nbytes(), static_cast<size_t>(bytes)) << when;
  };
  const auto expect_gradients = [&](const std::map<std::string, torch::Tensor>& expected, const std::string& when) {
    for (const auto& [name, p] : params) {
      EXPECT_TRUE(torch::allclose(p.grad(), expected.at(name), 1e-6, 1e-9)) << name << " " << when;
    }
  };
  ASSERT_TRUE(trainer->accumulate_gradients(0).has_value());
  check_one_allocation("after the first step");
  std::map<std::string, torch::Tensor> first;
  for (const auto& [name, p] : params) first.emplace(name, p.grad().clone());
  const void* allocation = params.begin()->second.grad().data_ptr();

  ASSERT_TRUE(trainer->accumulate_gradients(0).has_value());
  expect_gradients(first, "again: cleared before the step, not added to");
  EXPECT_EQ(params.begin()->second.grad().data_ptr(), allocation) << "a new allocation";

  params.begin()->second.mutable_grad() = torch::ones_like(params.begin()->second);
  ASSERT_TRUE(trainer->accumulate_gradients(0).has_value());
  check_one_allocation("after a .grad was replaced");
  expect_gradients(first, "after a .grad was replaced");
  EXPECT_EQ(params.begin()->second.grad().data_ptr(), allocation) << "a new allocation";
}

// The paper's Stage 2: a model trained at one length goes on at a longer one from its weights
// alone (fresh optimiser state and schedule), fa with a larger rope_theta.
TEST(Trainer, ExtensionStartsFromAnotherRunsWeights) {
  test::ScratchDir dir;
  TrainConfig short_run = small_run(Variant::kFullAttention);
  short_run.steps = 12;
  ASSERT_EQ(Trainer::start(short_run, dir.path("short"))->run({}, {}), Trainer::Outcome::kFinished);
  const double fresh_loss = read_metrics(dir.path("short"))[0].at("loss").get<double>();
  const Model trained = load_model(dir.path("short") + "/model.safetensors");

  TrainConfig longer = small_run(Variant::kFullAttention);
  longer.init = dir.path("short");  // a run directory: its model.safetensors
  longer.model->rope_theta = 1e6;
  longer.seq_len = 128;
  longer.steps = 2;
  auto trainer = Trainer::start(longer, dir.path("long"));
  EXPECT_EQ(trainer->steps_done(), 0);
  EXPECT_EQ(trainer->model().config.rope_theta, 1e6);
  ASSERT_EQ(trainer->changed_from_init().size(), 1u);
  EXPECT_EQ(trainer->changed_from_init()[0], "rope_theta 10000.0 -> 1000000.0");
  for (const auto& [name, p] : named_params(trained.config, trained.params)) {
    EXPECT_TRUE(torch::equal(named_params(trainer->model().config, trainer->model().params).at(name).detach(), p))
        << name;
  }
  ASSERT_EQ(trainer->run({}, {}), Trainer::Outcome::kFinished);
  const std::vector<json> metrics = read_metrics(dir.path("long"));
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[0].at("step").get<int64_t>(), 1);  // a schedule of its own
  // Trained weights start well below a fresh model's loss.
  EXPECT_LT(metrics[0].at("loss").get<double>(), fresh_loss - 0.4);

  // Without 'model', the checkpoint's own config; a model file works as well as a run.
  longer.model.reset();
  longer.init = dir.path("short") + "/model.safetensors";
  auto same = Trainer::start(longer, dir.path("same"));
  EXPECT_EQ(same->model().config.rope_theta, 10000.0);
  EXPECT_TRUE(same->changed_from_init().empty());

  // Shapes that differ, and a directory without a model, are named.
  longer.model = byte_model(Variant::kFullAttention);
  longer.model->d_model = 48;
  longer.model->n_heads = 3;
  expect_error([&] { Trainer::start(longer, dir.path("x")); },
               {"'init'", "does not fit 'model'", "embed.weight", "expected [258, 48]"});
  longer.model = byte_model(Variant::kTttE2E);
  expect_error([&] { Trainer::start(longer, dir.path("y")); }, {"does not fit 'model'", "missing tensor"});
  longer.init = dir.path("nothing_here");
  expect_error([&] { Trainer::start(longer, dir.path("z")); }, {"'init'", "nothing_here", "does not exist"});
}

// A save writes the checkpoint, then the model, each whole beside the file it replaces.
TEST(Trainer, DiskNeededForSaves) {
  SaveSizes fresh;
  fresh.checkpoint = 10;
  fresh.model = 4;
  EXPECT_EQ(disk_needed_for_saves(fresh, 0), 0u);
  EXPECT_EQ(disk_needed_for_saves(fresh, 1), 14u);  // both files, none there yet
  EXPECT_EQ(disk_needed_for_saves(fresh, 2), 24u);  // then a checkpoint's temporary beside them
  EXPECT_EQ(disk_needed_for_saves(fresh, 5), 24u);  // and so on, no more
  SaveSizes again = fresh;
  again.existing_checkpoint = 10;
  again.existing_model = 4;
  EXPECT_EQ(disk_needed_for_saves(again, 1), 10u);
  EXPECT_EQ(disk_needed_for_saves(again, 2), 10u);
  SaveSizes smaller = fresh;  // files there larger than the new ones: their room is reused
  smaller.existing_checkpoint = 30;
  smaller.existing_model = 20;
  EXPECT_EQ(disk_needed_for_saves(smaller, 1), 10u);
  EXPECT_EQ(disk_needed_for_saves(smaller, 2), 10u);
  smaller.checkpoint = 1;
  EXPECT_EQ(disk_needed_for_saves(smaller, 2), 1u);
  SaveSizes larger_model;  // a model larger than the checkpoint: its temporary is the larger one
  larger_model.checkpoint = 3;
  larger_model.model = 5;
  EXPECT_EQ(disk_needed_for_saves(larger_model, 1), 8u);
  EXPECT_EQ(disk_needed_for_saves(larger_model, 2), 13u);

  const SaveSizes gb{34'800'000'000, 11'600'000'000, 0, 0};  // 3B: weights and moments, and its model
  EXPECT_NO_THROW(check_room_to_save("/runs/a", gb, 2, 81'200'000'000, "", "free some space"));
  expect_error([&] { check_room_to_save("/runs/a", gb, 2, 68'000'000'000, "ctx: ", "free some space"); },
               {"ctx: /runs/a has 68.0 GB free", "this run's saves need 81.2 GB", "checkpoint of 34.8 GB",
                "model of 11.6 GB", "--checkpoint-every 0"});
  expect_error([&] { check_room_to_save("/runs/a", gb, 1, 40'000'000'000, "", "free X or Y"); },
               {"40.0 GB free", "saving needs 46.4 GB", "replaces); free X or Y"});
  bool refused = false;
  try {
    check_room_to_save("/runs/a", gb, 2, 40'000'000'000, "", "free some space");
  } catch (const Error& e) {
    refused = true;
    EXPECT_EQ(std::string(e.what()).find("--checkpoint-every"), std::string::npos) << "one save does not fit either";
  }
  EXPECT_TRUE(refused);
}

TEST(Trainer, PlannedSaves) {
  EXPECT_EQ(planned_saves(10, 0, 0), 1);    // only the last
  EXPECT_EQ(planned_saves(10, 0, 100), 1);  // checkpoint_every beyond the run
  EXPECT_EQ(planned_saves(10, 0, 10), 1);   // its one multiple is the last step
  EXPECT_EQ(planned_saves(10, 0, 9), 2);    // 9 and 10
  EXPECT_EQ(planned_saves(10, 0, 5), 2);    // 5 and 10
  EXPECT_EQ(planned_saves(10, 0, 3), 4);    // 3, 6, 9, 10
  EXPECT_EQ(planned_saves(10, 5, 5), 1);    // resumed at 5: 10
  EXPECT_EQ(planned_saves(10, 4, 5), 2);    // resumed at 4: 5 and 10
  EXPECT_EQ(planned_saves(10, 9, 1), 1);
  EXPECT_EQ(planned_saves(10, 10, 1), 0);  // finished
}

// 3B's moments (21.6 GiB) on a host of 128 GiB: pinned where the gradient parks nothing and
// the host's ranks' moments take at most 60% of it.
TEST(Trainer, PinHostMoments) {
  const int64_t gib = int64_t{1} << 30, moments_3b = 21.6 * gib, host = 128 * gib;
  EXPECT_TRUE(pin_host_moments(false, moments_3b, 1, host));
  EXPECT_FALSE(pin_host_moments(true, moments_3b, 1, host));  // the parking's budget
  EXPECT_TRUE(pin_host_moments(false, moments_3b, 3, host));  // 64.8 of 76.8 GiB
  EXPECT_FALSE(pin_host_moments(false, moments_3b, 4, host));
  EXPECT_TRUE(pin_host_moments(false, host / 5 * 3, 1, host));
  EXPECT_FALSE(pin_host_moments(false, host / 5 * 3 + 1, 1, host));
}

// moments_on_host "auto": the parameters, gradients and moments (fp32) against the GPU.
TEST(Trainer, MomentsOnHostByDefault) {
  const int64_t gib = int64_t{1} << 30, state_3b = 43.2 * gib, state_760m = 11.3 * gib;
  const int64_t h100 = 81559 * (int64_t{1} << 20), h200 = 143771 * (int64_t{1} << 20);
  EXPECT_TRUE(moments_on_host_by_default(state_3b, h100));
  EXPECT_FALSE(moments_on_host_by_default(state_3b, h200));
  EXPECT_FALSE(moments_on_host_by_default(state_760m, h100));
  EXPECT_FALSE(moments_on_host_by_default(state_3b, std::nullopt));  // the CPU: nowhere else to go
  EXPECT_FALSE(moments_on_host_by_default(h100 / 20 * 9, h100));
  EXPECT_TRUE(moments_on_host_by_default(h100 / 20 * 9 + 1, h100));
}

// What a run that ran out of GPU memory is told to change.
TEST(Trainer, OutOfMemoryAdvice) {
  TrainConfig c;
  const int64_t moments_3b = 23'200'000'000;
  const std::string all = out_of_memory_advice(c, true, false, moments_3b);
  for (const char* part : {"--moments-on-host true", "23.2 GB", "--tail-chunks 1", "--seq-len", "--batch-size"})
    EXPECT_NE(all.find(part), std::string::npos) << part << " in: " << all;
  const std::string moved = out_of_memory_advice(c, true, true, moments_3b);
  EXPECT_EQ(moved.find("--moments-on-host"), std::string::npos) << moved;
  EXPECT_NE(moved.find("--tail-chunks 1"), std::string::npos) << moved;
  c.tail_chunks = 1;
  EXPECT_EQ(out_of_memory_advice(c, true, true, moments_3b).find("--tail-chunks"), std::string::npos);
  c.tail_chunks = 0;
  EXPECT_EQ(out_of_memory_advice(c, false, true, moments_3b).find("--tail-chunks"), std::string::npos);  // fa, swa
}

// The sizes the disk check counts are those of the files a save writes (headers a little over).
TEST(Trainer, SaveSizesAreTheFilesSizes) {
  test::ScratchDir dir;
  TrainConfig c = small_run(Variant::kTttE2E);
  c.steps = 1;
  auto trainer = Trainer::start(c, dir.path("run"));
  const SaveSizes before = trainer->save_sizes();
  EXPECT_EQ(before.existing_checkpoint, 0u);
  EXPECT_EQ(before.existing_model, 0u);
  ASSERT_EQ(trainer->run({}, {}), Trainer::Outcome::kFinished);
  const SaveSizes after = trainer->save_sizes();
  EXPECT_EQ(after.checkpoint, before.checkpoint);
  for (const auto& [estimate, written] :
       {std::pair{after.checkpoint, after.existing_checkpoint}, std::pair{after.model, after.existing_model}}) {
    EXPECT_GT(written, 0u);
    EXPECT_GE(estimate, written);
    EXPECT_LE(estimate, written + (1u << 20));
  }
}

// A run that diverges says whether a checkpoint stays to resume from.
TEST(Trainer, DivergenceSaysWhatWasSaved) {
  test::ScratchDir dir;
  TrainConfig c = small_run(Variant::kSlidingWindow);
  c.steps = 3;
  c.lr = 1e30;  // the first update leaves no finite weight
  c.warmup_frac = 0;
  c.checkpoint_every = 1;
  c.val_tokens.clear();
  auto trainer = Trainer::start(c, dir.path("saved"));
  expect_error([&] { trainer->run({}, {}); }, {"diverged at step 2", "the last checkpoint in", "is intact"});
  EXPECT_EQ(Trainer::resume(dir.path("saved"), json::object())->steps_done(), 1);

  c = small_run(Variant::kTttE2E);
  c.model->inner_lr = 1e30;  // the inner steps diverge: the first step's loss is not finite
  c.model->inner_clip = 0;
  auto at_once = Trainer::start(c, dir.path("unsaved"));
  expect_error([&] { at_once->run({}, {}); }, {"diverged at step 1", "nothing was saved"});
}

TEST(Trainer, BadInputGetsClearErrors) {
  test::ScratchDir dir;
  TrainConfig c = small_run(Variant::kTttE2E);
  c.seq_len = 60;  // not a multiple of mini_batch 16
  expect_error([&] { Trainer::start(c, dir.path("a")); }, {"'seq_len'", "multiple", "mini_batch (16)"});

  c = small_run(Variant::kTttE2E);
  c.train_tokens = dir.path("missing.u32");
  expect_error([&] { Trainer::start(c, dir.path("b")); }, {"missing.u32", "cannot open"});

  c = small_run(Variant::kTttE2E);
  c.train_tokens = temp_path("big_ids.u32");
  io::write_token_file(c.train_tokens, std::vector<int64_t>(100, 300));
  expect_error([&] { Trainer::start(c, dir.path("c")); }, {"token 300 at index 0", "vocab_size 258"});

  c = small_run(Variant::kTttE2E);
  c.model.reset();
  expect_error([&] { Trainer::start(c, dir.path("d")); }, {"'model'", "'init'"});

  c = small_run(Variant::kTttE2E);
  c.steps = 1;
  Trainer::start(c, dir.path("e"))->run({}, {});
  expect_error([&] { Trainer::start(c, dir.path("e")); }, {"already holds a training run", "--resume"});
  expect_error([&] { Trainer::resume(dir.path("e"), {{"seq_len", 32}, {"lr", 1e-4}}); },
               {"different config", "seq_len (saved 64, now 32)", "lr"});
  expect_error([&] { Trainer::resume(dir.path("nothing"), json::object()); }, {"no training run to resume"});
  // Reporting keys may change.
  EXPECT_NO_THROW(Trainer::resume(dir.path("e"), {{"log_every", 1}, {"eval_every", 1}}));
}

}  // namespace
}  // namespace ttt
