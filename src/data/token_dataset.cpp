#include "data/token_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <torch/types.h>

#include "common/error.h"
#include "data/prepare_manifest.h"
#include "io/paths.h"

namespace ttt {
namespace {

// SplitMix64's finaliser: a well-mixed 64-bit hash.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

TokenDataset::TokenDataset(const std::string& path, int64_t vocab_size, int64_t min_tokens) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, path + ": cannot open the token file: " + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  const auto bytes = static_cast<size_t>(info.st_size);
  if (bytes == 0 || bytes % 4 != 0) {
    ::close(fd);
    throw Error(path + (bytes == 0 ? ": the token file is empty"
                                   : ": size " + std::to_string(bytes) +
                                         " bytes is not a multiple of 4 (expected uint32 token ids)"));
  }
  void* mapped = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  require(mapped != MAP_FAILED, path + ": cannot map the token file: " + std::strerror(errno));
  tokens_ = static_cast<const uint32_t*>(mapped);
  mapped_bytes_ = bytes;
  size_ = static_cast<int64_t>(bytes / 4);
  try {
    require(size_ >= min_tokens, path + ": holds " + std::to_string(size_) + " tokens, fewer than the " +
                                     std::to_string(min_tokens) + " one sequence needs (seq_len + 1)");
    for (int64_t i = 0; i < size_; ++i) {
      require(static_cast<int64_t>(tokens_[i]) < vocab_size,
              path + ": token " + std::to_string(tokens_[i]) + " at index " + std::to_string(i) +
                  " is outside the model's vocabulary (vocab_size " + std::to_string(vocab_size) + ")");
    }
  } catch (...) {
    ::munmap(const_cast<uint32_t*>(tokens_), mapped_bytes_);
    throw;
  }
}

TokenDataset::~TokenDataset() {
  if (tokens_) ::munmap(const_cast<uint32_t*>(tokens_), mapped_bytes_);
}

torch::Tensor TokenDataset::slice(int64_t offset, int64_t length) const {
  require(offset >= 0 && length >= 0 && offset + length <= size_, "internal: token slice out of range");
  torch::Tensor out = torch::empty({length}, torch::kInt64);
  int64_t* data = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < length; ++i) data[i] = tokens_[offset + i];
  return out;
}

void check_tokenizer_fits_model(const std::string& path, int64_t vocab_size, int64_t bos_id) {
  const std::optional<PrepareManifest> manifest = PrepareManifest::read(io::parent_directory(path));
  if (!manifest) return;
  for (const PrepareManifest::Entry& entry : manifest->entries) {
    if (io::file_name(entry.path) == io::file_name(path)) {
      manifest->check_fits_model(path, vocab_size, bos_id);
    }
  }
}

int64_t sequence_offset(uint64_t seed, int64_t step, int64_t index, int64_t max_offset) {
  const uint64_t h = mix(mix(mix(seed) ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(index));
  return static_cast<int64_t>(h % static_cast<uint64_t>(max_offset + 1));
}

}  // namespace ttt
