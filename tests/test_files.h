// Scratch files and error checks shared by every test program; no libtorch here, so the
// torch-free test program (ttt_text_tests) uses it too.
#pragma once
#include <dirent.h>
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
#include "io/scratch_dir.h"

namespace ttt::test {

// io::ScratchDir (a fresh directory, removed with everything in it) with a listing for checks.
class ScratchDir : public io::ScratchDir {
 public:
  ScratchDir() : io::ScratchDir("ttt_test") {}

  // Names of the entries in the directory, sorted.
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    if (DIR* handle = opendir(dir().c_str())) {
      while (const dirent* entry = readdir(handle)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      closedir(handle);
    }
    std::sort(names.begin(), names.end());
    return names;
  }
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
