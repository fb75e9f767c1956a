#include "io/paths.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>

#include "io/scratch_dir.h"

namespace ttt::io {
namespace {

TEST(Paths, FileSizeOrZero) {
  const ScratchDir scratch("ttt-paths-test");
  std::ofstream(scratch.path("five.txt")) << "12345";
  EXPECT_EQ(file_size_or_zero(scratch.path("five.txt")), 5u);
  EXPECT_EQ(file_size_or_zero(scratch.path("missing.txt")), 0u);
  EXPECT_EQ(file_size_or_zero(scratch.dir()), 0u);  // not a regular file
}

// A directory not made yet (a run's --out) has the free space of its nearest existing parent.
TEST(Paths, FreeDiskBytesOfAPathNotYetThere) {
  const ScratchDir scratch("ttt-paths-test");
  const std::optional<uint64_t> here = free_disk_bytes(scratch.dir());
  const std::optional<uint64_t> below = free_disk_bytes(scratch.path("not/made/yet"));
  ASSERT_TRUE(here.has_value());
  ASSERT_TRUE(below.has_value());
  EXPECT_GT(*here, 0u);
  // Other processes may write meanwhile: the two readings agree within 256 MiB.
  const uint64_t apart = *here > *below ? *here - *below : *below - *here;
  EXPECT_LT(apart, uint64_t{256} << 20);
}

}  // namespace
}  // namespace ttt::io
