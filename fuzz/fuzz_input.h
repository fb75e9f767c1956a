// Shared by the fuzz harnesses: most parsers read files, so the input goes to one.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace ttt::fuzz {

// A path of this process's own in $TMPDIR (or /tmp), removed when the object goes.
struct ScratchFile {
  explicit ScratchFile(const std::string& name) {
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp != nullptr ? tmp : "/tmp") + "/ttt_fuzz." + std::to_string(::getpid()) + "." + name;
  }
  ~ScratchFile() { std::remove(path.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  std::string path;
};

// The input as a file.
struct InputFile : ScratchFile {
  InputFile(const uint8_t* data, size_t size, const std::string& name = "input") : ScratchFile(name) {
    FILE* file = std::fopen(path.c_str(), "wb");
    if (file == nullptr || std::fwrite(data, 1, size, file) != size || std::fclose(file) != 0) {
      std::perror(path.c_str());
      std::abort();
    }
  }
};

// A fuzz harness's property check: a failure is a crash the fuzzer reports.
inline void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz check failed: %s\n", what);
    std::abort();
  }
}

}  // namespace ttt::fuzz
