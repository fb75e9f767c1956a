// Scratch files and error checks shared by every test program; no libtorch here, so the
// torch-free test program (ttt_text_tests) uses it too.
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

#include <gtest/gtest.h>

#include "common/error.h"

namespace ttt::test {

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
