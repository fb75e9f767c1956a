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

// Uses `threads` CPU threads for tensor math. With OpenBLAS, whose own thread pool would
// fight libtorch's OpenMP threads for the cores (2.4x slower than one thread on 2 cores,
// measured), the GEMMs get the threads and libtorch's elementwise ops run on one.
void set_cpu_threads(int threads);

}  // namespace ttt
