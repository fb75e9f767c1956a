// Small models and inputs shared by the tests.
#pragma once
#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "common/error.h"
#include "config/model_config.h"
#include "model/params.h"

namespace ttt::test {

// A tiny model: 4 blocks (2 with prime MLPs for ttt-e2e), D = 8, 2 heads of width 4,
// window 6 > mini_batch 3, so the KV cache carries keys across chunks.
inline ModelConfig tiny_config(Variant variant) {
  ModelConfig c;
  c.variant = variant;
  c.vocab_size = 13;
  c.d_model = 8;
  c.n_layers = 4;
  c.n_heads = 2;
  c.d_ff = 12;
  c.rms_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.window = variant == Variant::kFullAttention ? 0 : 6;
  c.mini_batch = 3;
  c.suffix_len = variant == Variant::kTttE2E ? 2 : 0;
  c.bos_id = 1;
  c.eos_id = 2;
  c.inner_lr = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.inner_clip = variant == Variant::kTttE2E ? 1.0 : 0.0;
  c.validate();
  return c;
}

// Parameters with matrices of std `scale` (larger than the spec's 0.02, so that every
// path, second-order terms included, moves the loss measurably) and gains near 1.
inline Params random_params(const ModelConfig& config, uint64_t seed, double scale,
                            torch::Dtype dtype = torch::kFloat64) {
  Params params = init_params(config, seed, dtype);
  torch::manual_seed(seed);
  visit_params(config, params, [&](const std::string&, const std::vector<int64_t>&, ParamKind kind,
                                   torch::Tensor& slot) {
    slot = kind == ParamKind::kMatrix ? slot * (scale / 0.02) : slot + 0.1 * torch::randn_like(slot);
  });
  return params;
}

// Random ids in [3, vocab) with bos at the given indices.
inline torch::Tensor random_tokens(int64_t n, int64_t vocab, uint64_t seed, std::vector<int64_t> bos_at = {},
                                   int64_t bos_id = 1) {
  torch::manual_seed(seed);
  torch::Tensor tokens = torch::randint(3, vocab, {n}, torch::kInt64);
  for (int64_t i : bos_at) tokens[i] = bos_id;
  return tokens;
}

// A fresh directory of its own, removed with everything in it when the object goes away.
// POSIX calls, not std::filesystem: PyTorch's wheels export statically linked copies of
// libstdc++'s filesystem symbols, and programs linked to them crash in remove_all and
// directory_iterator (pytorch/pytorch#133437). See docs/ARCHITECTURE.md.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/ttt_test_XXXXXX";
    if (!mkdtemp(pattern.data())) throw std::runtime_error("cannot create a scratch directory");
    dir_ = pattern;
  }
  ~ScratchDir() {
    nftw(dir_.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
         FTW_DEPTH | FTW_PHYS);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Names of the entries in the directory, sorted.
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    if (DIR* dir = opendir(dir_.c_str())) {
      while (const dirent* entry = readdir(dir)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      closedir(dir);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string dir_;
};

// Size of a file in bytes, -1 if it cannot be read.
inline int64_t file_size(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 ? static_cast<int64_t>(info.st_size) : -1;
}

// A fresh path in this test process's scratch directory.
inline std::string temp_path(const std::string& name) {
  static ScratchDir dir;
  static int counter = 0;
  return dir.path(std::to_string(counter++) + "_" + name);
}

// Expects `action` to throw ttt::Error with a one-line message containing every one of `parts`.
template <typename Action>
void expect_error(Action action, const std::vector<std::string>& parts) {
  EXPECT_THROW(
      {
        try {
          action();
        } catch (const ttt::Error& e) {
          const std::string message = e.what();
          EXPECT_EQ(message.find('\n'), std::string::npos) << message;
          for (const std::string& part : parts) {
            EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' is not in: " << message;
          }
          throw;
        }
      },
      ttt::Error);
}

}  // namespace ttt::test
