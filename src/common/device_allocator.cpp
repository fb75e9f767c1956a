#include "common/device_allocator.h"

#include <cstdlib>
#include <cstring>

namespace ttt {
namespace {

constexpr const char* kSetting = "PYTORCH_CUDA_ALLOC_CONF";
constexpr const char* kExpandable = "expandable_segments:True";

}  // namespace

bool prefer_expandable_device_segments() {
  if (std::getenv(kSetting) != nullptr || std::getenv("PYTORCH_ALLOC_CONF") != nullptr) return false;
  return setenv(kSetting, kExpandable, /*overwrite=*/0) == 0;
}

bool expandable_device_segments_asked() {
  const char* setting = std::getenv(kSetting);
  return setting != nullptr && std::strstr(setting, kExpandable) != nullptr;
}

}  // namespace ttt
