#include "common/blas.h"

#include <dlfcn.h>

#include <fstream>

#include <ATen/Context.h>
#include <torch/types.h>

namespace ttt {

BlasInfo blas_info() {
  if (at::hasMKL()) return {"MKL", true};
  // The dynamic loader maps the BLAS behind libblas.so.3 under its real path (Debian's
  // alternatives), which names the implementation.
  torch::matmul(torch::ones({2, 2}), torch::ones({2, 2}));
  std::ifstream maps("/proc/self/maps");
  BlasInfo info{"unknown", false};
  for (std::string line; std::getline(maps, line);) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = path.substr(path.rfind('/') + 1);
    if (file.find("blas") == std::string::npos && file.find("blis") == std::string::npos) continue;
    info.library = path;
    if (path.find("openblas") != std::string::npos || path.find("blis") != std::string::npos) {
      info.optimized = true;
      return info;
    }
  }
  return info;
}

void set_cpu_threads(int threads) {
  using SetThreads = void (*)(int);
  if (auto* openblas = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    openblas(threads);
    torch::set_num_threads(1);
  } else {
    torch::set_num_threads(threads);
  }
}

}  // namespace ttt
