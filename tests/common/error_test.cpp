#include "common/error.h"

#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace ttt {
namespace {

// PyTorch's out-of-memory text, as an 80 GB H100 gave it (one line; the advice at its end).
const std::string kOutOfMemory =
    "CUDA out of memory. Tried to allocate 576.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 414.19 MiB "
    "is free. Of the allocated memory 76.51 GiB is allocated by PyTorch, and 1.26 GiB is reserved by PyTorch but "
    "unallocated.";
const std::string kAdvice =
    " If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to "
    "avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/"
    "cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)";

// PYTORCH_CUDA_ALLOC_CONF as the test sets it, put back afterwards.
class OutOfMemoryText : public ::testing::Test {
 protected:
  void TearDown() override {
    if (saved_) {
      setenv("PYTORCH_CUDA_ALLOC_CONF", saved_->c_str(), 1);
    } else {
      unsetenv("PYTORCH_CUDA_ALLOC_CONF");
    }
  }
  const char* const was_ = std::getenv("PYTORCH_CUDA_ALLOC_CONF");
  const std::optional<std::string> saved_ = was_ ? std::optional<std::string>(was_) : std::nullopt;
};

TEST_F(OutOfMemoryText, DropsTheAdviceToAskForWhatIsAskedFor) {
  setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", 1);
  EXPECT_EQ(describe(std::runtime_error(kOutOfMemory + kAdvice + "\nmore context")), kOutOfMemory);
}

TEST_F(OutOfMemoryText, KeepsTheAdviceWhereTheUserChoseOtherwise) {
  setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False", 1);
  EXPECT_EQ(describe(std::runtime_error(kOutOfMemory + kAdvice)), kOutOfMemory + kAdvice);
  unsetenv("PYTORCH_CUDA_ALLOC_CONF");
  EXPECT_EQ(describe(std::runtime_error(kOutOfMemory + kAdvice)), kOutOfMemory + kAdvice);
}

TEST(Describe, FirstLineOnly) {
  EXPECT_EQ(describe(Error("bad flag\nsecond line")), "bad flag");
  EXPECT_EQ(describe(std::runtime_error("one line")), "one line");
}

}  // namespace
}  // namespace ttt
