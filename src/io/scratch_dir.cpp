#include "io/scratch_dir.h"

#include <ftw.h>
#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace ttt::io {

ScratchDir::ScratchDir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  require(::mkdtemp(pattern.data()) != nullptr,
          "cannot create a temporary directory " + pattern + ": " + std::strerror(errno));
  dir_ = pattern;
}

ScratchDir::~ScratchDir() {
  // Children before their directory (FTW_DEPTH); links are removed, never followed (FTW_PHYS).
  ::nftw(
      dir_.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return std::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

}  // namespace ttt::io
