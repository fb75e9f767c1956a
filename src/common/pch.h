// Precompiled header shared by every target: the parts of libtorch the engine uses (tensors,
// autograd, CUDA queries, guards) and the standard library. Not <torch/torch.h>: its nn, optim
// and data headers, which nothing here uses, more than double each file's compile time.
#pragma once
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR: an #if on it must never read an undefined 0

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>
