#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "common/error.h"
#include "io/input_file.h"

namespace ttt::io {
namespace {

// The dtypes of safetensors_dtype_size, as torch's types.
struct Dtype {
  const char* name;
  torch::ScalarType type;
};

const std::array<Dtype, 4> kDtypes = {{
    {"F32", torch::kFloat32},
    {"F64", torch::kFloat64},
    {"BF16", torch::kBFloat16},
    {"F16", torch::kFloat16},
}};

const Dtype* find_dtype(const std::string& name) {
  const auto it = std::find_if(kDtypes.begin(), kDtypes.end(), [&](const Dtype& d) { return name == d.name; });
  return it == kDtypes.end() ? nullptr : &*it;
}

const Dtype* find_dtype(torch::ScalarType type) {
  const auto it = std::find_if(kDtypes.begin(), kDtypes.end(), [&](const Dtype& d) { return type == d.type; });
  return it == kDtypes.end() ? nullptr : &*it;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  const std::string prefix = safetensors_prefix(path);
  InputFile input = open_input_file(path, prefix);
  // The header is validated in full before any tensor memory is allocated, and tensor bytes are
  // then read straight into their tensors: no second copy of a large checkpoint in memory.
  const SafetensorsLayout layout = read_safetensors_layout(input, prefix);
  SafetensorsFile file;
  file.metadata = layout.metadata;
  file.checksum_verified = layout.checksum.has_value();
  read_safetensors_data(
      input, layout,
      [&](const SafetensorsEntry& entry) {
        torch::Tensor tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(find_dtype(entry.dtype)->type));
        void* data = tensor.data_ptr();
        file.tensors.emplace(entry.name, std::move(tensor));
        return data;
      },
      prefix);
  return file;
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string prefix = safetensors_prefix(path);
  // std::map already sorts the tensors by name, the order they are laid out in.
  std::vector<TensorLayout> layouts;
  std::vector<torch::Tensor> data;
  for (const auto& [name, tensor] : tensors) {
    const std::string where = safetensors_tensor_prefix(prefix, name);
    require(tensor.defined(), where + "tensor is undefined");
    const Dtype* dtype = find_dtype(tensor.scalar_type());
    require(dtype != nullptr, where + "dtype " + c10::toString(tensor.scalar_type()) + " cannot be stored (" +
                                  kSafetensorsSupported + ")");
    torch::Tensor contiguous = tensor.detach().to(torch::kCPU).contiguous();
    layouts.push_back({name, dtype->name, contiguous.sizes().vec()});
    data.push_back(std::move(contiguous));
  }
  SafetensorsWriter out(path, layouts, metadata);
  for (const torch::Tensor& tensor : data) {
    if (tensor.numel() > 0) out.write(tensor.data_ptr(), tensor.nbytes());
  }
  out.commit();
}

}  // namespace ttt::io
