// Checkpoints in the safetensors format as torch tensors; the format itself (header
// validation, checksums, the streaming writer) is io/safetensors_layout.h.
#pragma once
#include <map>
#include <string>

#include <torch/types.h>

#include "io/safetensors_layout.h"

namespace ttt::io {

// A safetensors file: tensors on the CPU, contiguous, in the dtype stored in the file.
struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" object (string -> string), checksum left out
  bool checksum_verified = false;               // the file had a checksum (and it matched)
};

// Reads and validates the whole file; any malformed input, or contents that do not match the
// file's checksum, is a ttt::Error naming the path and, where one is at fault, the tensor.
// Only F32, F64, BF16 and F16 tensors are supported.
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors in their own dtype (F32, F64, BF16, F16 supported; anything else is a
// ttt::Error naming the tensor), with a checksum. Tensors are laid out in name order; any
// device or memory layout is accepted. Atomic: writes to a temporary file beside `path` and
// renames it, so a crash never leaves a torn file.
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ttt::io
