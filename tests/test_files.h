// Scratch files and error checks shared by every test program; no libtorch here, so the
// torch-free test program (ttt_text_tests) uses it too.
#pragma once
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
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

// A whole file's bytes ("" if it cannot be read), and a file made of `bytes`.
inline std::string read_bytes(const std::string& path) {
  std::string bytes;
  if (FILE* file = std::fopen(path.c_str(), "rb")) {
    char buffer[1 << 16];
    for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, file)) > 0;) bytes.append(buffer, n);
    std::fclose(file);
  }
  return bytes;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), file), bytes.size()) << path;
  std::fclose(file);
}

// Damages a copy of `bytes` at `damaged`, once per byte offset of `offsets`, flipping the bit
// offset % 8 of that byte, and expects `load` of the damaged file to fail with a one-line
// ttt::Error that names it. Offsets: every byte of the first `dense` (the header), then
// `sampled` spread evenly over the rest.
template <typename Load>
void expect_every_bit_flip_rejected(const std::string& bytes, const std::string& damaged, size_t dense, size_t sampled,
                                    Load load) {
  std::vector<size_t> offsets;
  for (size_t i = 0; i < std::min(dense, bytes.size()); ++i) offsets.push_back(i);
  for (size_t k = 0; k < sampled && dense < bytes.size(); ++k) {
    offsets.push_back(dense + k * (bytes.size() - dense) / sampled);
  }
  size_t accepted = 0;
  for (const size_t offset : offsets) {
    std::string copy = bytes;
    copy[offset] = static_cast<char>(copy[offset] ^ (1 << (offset % 8)));
    write_bytes(damaged, copy);
    try {
      load(damaged);
      ++accepted;
      const size_t from = offset < 24 ? 0 : offset - 24;
      ADD_FAILURE() << "a bit flip at byte " << offset << " of " << bytes.size() << " was accepted; the bytes from "
                    << from << ": " << ::testing::PrintToString(bytes.substr(from, 48));
    } catch (const ttt::Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      EXPECT_NE(message.find(damaged), std::string::npos) << "byte " << offset << ": " << message;
    }
    if (accepted > 10) return;  // enough to show the failure
  }
}

// A fresh path in this test process's scratch directory.
inline std::string temp_path(const std::string& name) {
  static ScratchDir dir;
  static int counter = 0;
  return dir.path(std::to_string(counter++) + "_" + name);
}

// A loopback TCP port that was free a moment ago (the kernel's pick), for a server started later.
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
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
