#include "common/device_allocator.h"

#include <cstdlib>
#include <optional>
#include <string>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "model/compute.h"

namespace ttt {
namespace {

constexpr const char* kCudaConf = "PYTORCH_CUDA_ALLOC_CONF";
constexpr const char* kConf = "PYTORCH_ALLOC_CONF";

std::optional<std::string> read_env(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::optional<std::string>(value) : std::nullopt;
}

void write_env(const char* name, const std::optional<std::string>& value) {
  if (value) {
    setenv(name, value->c_str(), 1);
  } else {
    unsetenv(name);
  }
}

// The process's allocator settings, put back as they were when the test ends.
class AllocatorEnv : public ::testing::Test {
 protected:
  void TearDown() override {
    write_env(kCudaConf, cuda_conf_);
    write_env(kConf, conf_);
  }
  const std::optional<std::string> cuda_conf_ = read_env(kCudaConf), conf_ = read_env(kConf);
};

TEST_F(AllocatorEnv, AsksForExpandableSegmentsWhereNothingIsSet) {
  unsetenv(kCudaConf);
  unsetenv(kConf);
  EXPECT_TRUE(prefer_expandable_device_segments());
  EXPECT_EQ(read_env(kCudaConf), "expandable_segments:True");
  EXPECT_EQ(read_env(kConf), std::nullopt);
  EXPECT_FALSE(prefer_expandable_device_segments());  // asked once: nothing more to set
  EXPECT_EQ(read_env(kCudaConf), "expandable_segments:True");
  EXPECT_TRUE(expandable_device_segments_asked());
}

TEST_F(AllocatorEnv, LeavesTheUsersSettingAlone) {
  setenv(kCudaConf, "expandable_segments:False", 1);
  unsetenv(kConf);
  EXPECT_FALSE(prefer_expandable_device_segments());
  EXPECT_EQ(read_env(kCudaConf), "expandable_segments:False");
  EXPECT_FALSE(expandable_device_segments_asked());

  unsetenv(kCudaConf);
  setenv(kConf, "max_split_size_mb:64", 1);  // PyTorch's newer name counts as a choice too
  EXPECT_FALSE(prefer_expandable_device_segments());
  EXPECT_EQ(read_env(kCudaConf), std::nullopt);
  EXPECT_EQ(read_env(kConf), "max_split_size_mb:64");
  EXPECT_FALSE(expandable_device_segments_asked());
}

// The test program asks for expandable segments at its start, as `ttt` does: on a GPU the
// allocator must have taken them (it reads its settings once, at CUDA's first allocation).
TEST(DeviceAllocatorOnCuda, TakesExpandableSegmentsAskedForAtStart) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA GPU";
  if (read_env(kCudaConf) != "expandable_segments:True" || read_env(kConf)) {
    GTEST_SKIP() << "the allocator's settings were chosen outside the program";
  }
  const torch::Device device(torch::kCUDA, 0);
  const torch::Tensor t = torch::ones({1024}, torch::TensorOptions().device(device));
  EXPECT_EQ(t.sum().item<float>(), 1024.0F);
  EXPECT_EQ(device_segments_expandable(device), true);  // a segment holds t
  EXPECT_EQ(device_segments_expandable(torch::Device(torch::kCPU)), std::nullopt);
}

}  // namespace
}  // namespace ttt
