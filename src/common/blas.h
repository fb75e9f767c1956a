// Which BLAS libtorch's CPU matrix products run on. Debian's libtorch falls back to the
// reference BLAS (~25x slower) unless an optimised one such as OpenBLAS is installed.
#pragma once
#include <string>

namespace ttt {

struct BlasInfo {
  std::string library;  // path of the BLAS library in use, or "MKL" when built in
  bool optimized = false;
};

BlasInfo blas_info();

}  // namespace ttt
