#include "common/host_memory.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "test_files.h"

namespace ttt {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

// Writes `text` to root/relative, making its directories.
void write(const std::string& root, const std::string& relative, const std::string& text) {
  size_t at = 0;
  while ((at = relative.find('/', at + 1)) != std::string::npos) {
    ::mkdir((root + relative.substr(0, at)).c_str(), 0755);
  }
  std::ofstream(root + relative) << text;
}

TEST(HostMemory, PhysicalWithoutCgroupLimits) {
  const test::ScratchDir root;
  EXPECT_EQ(host_memory_limit(64 * kGiB, "0::/\n", root.dir()), 64 * kGiB);     // no files at all
  write(root.dir(), "/memory.max", "max\n");                                    // v2: unlimited
  write(root.dir(), "/memory/memory.limit_in_bytes", "9223372036854771712\n");  // v1: "unlimited"
  EXPECT_EQ(host_memory_limit(64 * kGiB, "0::/\n4:memory:/\n", root.dir()), 64 * kGiB);
  write(root.dir(), "/memory.max", "garbage");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "", root.dir()), 64 * kGiB);
}

TEST(HostMemory, TheLowestCgroupLimitThatApplies) {
  const test::ScratchDir root;
  // v2 at the mount's root (a container's namespace) and along the process's own path.
  write(root.dir(), "/memory.max", std::to_string(32 * kGiB) + "\n");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "0::/\n", root.dir()), 32 * kGiB);
  write(root.dir(), "/job/task/memory.max", std::to_string(8 * kGiB) + "\n");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "0::/job/task\n", root.dir()), 8 * kGiB);
  // v1's memory controller, among others on its line.
  write(root.dir(), "/memory/api/abc/memory.limit_in_bytes", std::to_string(4 * kGiB) + "\n");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "5:devices:/\n4:memory,hugetlb:/api/abc\n0::/job/task\n", root.dir()),
            4 * kGiB);
  // A parent's limit holds for the cgroups under it, whose own files say "max" (v2: Slurm's
  // job above its steps; v1 likewise).
  write(root.dir(), "/slurm/job_7/memory.max", std::to_string(3 * kGiB) + "\n");
  write(root.dir(), "/slurm/job_7/step_0/task_0/memory.max", "max\n");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "0::/slurm/job_7/step_0/task_0\n", root.dir()), 3 * kGiB);
  write(root.dir(), "/memory/user.slice/memory.limit_in_bytes", std::to_string(kGiB) + "\n");
  EXPECT_EQ(host_memory_limit(64 * kGiB, "4:memory:/user.slice/session-1.scope\n", root.dir()), kGiB);
  // Another v1 controller's path is not the memory controller's.
  EXPECT_EQ(host_memory_limit(64 * kGiB, "3:cpu:/user.slice\n0::/job/task\n", root.dir()), 8 * kGiB);
  // A limit above the physical memory does not raise it.
  EXPECT_EQ(host_memory_limit(2 * kGiB, "4:memory:/api/abc\n", root.dir()), 2 * kGiB);
}

TEST(HostMemory, ThisMachineHasSome) {
  const int64_t bytes = host_memory_limit();
  EXPECT_GT(bytes, 256 << 20);
  EXPECT_LE(bytes, static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE));
}

}  // namespace
}  // namespace ttt
