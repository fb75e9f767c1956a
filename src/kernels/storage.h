// How our kernels' launchers name the dtype of a tensor's storage (arithmetic is fp32).
#pragma once

namespace ttt::kernels {

enum class Storage { kFloat32, kBFloat16, kFloat16 };

}  // namespace ttt::kernels
