// Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length, a JSON header, then the raw tensor bytes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "io/atomic_file.h"

namespace ttt::io {

// A safetensors file: tensors on the CPU, contiguous, in the dtype stored in the file.
struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" object (string -> string)
};

// Reads and validates the whole file; any malformed input is a ttt::Error naming the path
// and, where one is at fault, the tensor. Only F32, F64, BF16 and F16 tensors are supported.
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors in their own dtype (F32, F64, BF16, F16 supported; anything else is a
// ttt::Error naming the tensor). Tensors are laid out in name order; any device or memory
// layout is accepted. Atomic: writes to a temporary file beside `path` and renames it, so a
// crash never leaves a torn file.
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// One tensor of a file written by SafetensorsWriter: its header entry, known before its bytes.
struct TensorLayout {
  std::string name;
  std::string dtype;  // "F32", "F64", "BF16" or "F16"
  std::vector<int64_t> shape;
};

// Writes a safetensors file whose tensors are known before their data, so that large files
// stream through memory: the header first, then the bytes of each tensor in `layouts` order, in
// pieces of any size. Atomic as write_safetensors; commit() checks that every byte arrived.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<TensorLayout>& layouts,
                    const std::map<std::string, std::string>& metadata = {});

  void write(const void* data, uint64_t size);
  void commit();

 private:
  std::string prefix_;
  AtomicFile file_;
  uint64_t data_bytes_ = 0;
  uint64_t written_ = 0;
};

}  // namespace ttt::io
