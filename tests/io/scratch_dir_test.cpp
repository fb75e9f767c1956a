#include "io/scratch_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "io/paths.h"
#include "test_files.h"

namespace ttt::io {
namespace {

TEST(ScratchDir, IsFreshAndRemovedWithEverythingInIt) {
  std::string kept;
  {
    const ScratchDir scratch("ttt-scratch-test");
    const ScratchDir other("ttt-scratch-test");
    kept = scratch.dir();
    EXPECT_NE(scratch.dir(), other.dir());
    EXPECT_EQ(file_name(scratch.dir()).rfind("ttt-scratch-test-", 0), 0u) << scratch.dir();
    ASSERT_TRUE(is_directory(scratch.dir()));
    EXPECT_TRUE(list_files(scratch.dir(), "").empty());
    make_directories(scratch.path("a/b"));
    std::ofstream(scratch.path("a/b/c.txt")) << "c";
    std::ofstream(scratch.path("top.txt")) << "top";
  }
  EXPECT_FALSE(is_directory(kept));
  struct stat info {};
  EXPECT_NE(::stat(kept.c_str(), &info), 0);
}

TEST(ScratchDir, LinksArePassedOverNotFollowed) {
  const ScratchDir other("ttt-scratch-test");
  std::ofstream(other.path("outside.txt")) << "outside";
  {
    const ScratchDir scratch("ttt-scratch-test");
    ASSERT_EQ(::symlink(other.path("outside.txt").c_str(), scratch.path("link").c_str()), 0);
    ASSERT_EQ(::symlink(other.dir().c_str(), scratch.path("dir-link").c_str()), 0);
  }
  EXPECT_EQ(test::file_size(other.path("outside.txt")), 7);
}

TEST(ScratchDir, GoesInTmpdir) {
  const ScratchDir base("ttt-scratch-test");
  const char* previous = std::getenv("TMPDIR");
  const std::string saved = previous ? previous : "";
  const auto restore = [&] { previous ? ::setenv("TMPDIR", saved.c_str(), 1) : ::unsetenv("TMPDIR"); };
  ::setenv("TMPDIR", base.dir().c_str(), 1);
  const ScratchDir inside("inner");
  restore();
  EXPECT_EQ(parent_directory(inside.dir()), base.dir());
  ::setenv("TMPDIR", "/nonexistent", 1);
  test::expect_error([] { ScratchDir("inner"); }, {"cannot create a temporary directory", "/nonexistent/inner-"});
  restore();
}

}  // namespace
}  // namespace ttt::io
