#include "common/device_allocator.h"

#include <cstdlib>

namespace ttt {

bool prefer_expandable_device_segments() {
  if (std::getenv("PYTORCH_CUDA_ALLOC_CONF") != nullptr || std::getenv("PYTORCH_ALLOC_CONF") != nullptr) return false;
  return setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", /*overwrite=*/0) == 0;
}

}  // namespace ttt
