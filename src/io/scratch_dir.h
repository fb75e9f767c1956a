// A scratch directory by POSIX calls (mkdtemp, nftw): code linked to libtorch must not use
// std::filesystem's directory operations (docs/ARCHITECTURE.md, portability notes).
#pragma once
#include <string>

namespace ttt::io {

// A fresh directory of its own in $TMPDIR (else /tmp), named `prefix` and a random suffix,
// removed with everything in it when the object goes away.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

}  // namespace ttt::io
