#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <fstream>
#include <limits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/input_file.h"

namespace ttt::io {
namespace {

// The format is little-endian and tensor bytes are copied as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using nlohmann::json;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSupported = "supported: F32, F64, BF16, F16";

struct Dtype {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};

const std::array<Dtype, 4> kDtypes = {{
    {"F32", torch::kFloat32, 4},
    {"F64", torch::kFloat64, 8},
    {"BF16", torch::kBFloat16, 2},
    {"F16", torch::kFloat16, 2},
}};

const Dtype* find_dtype(const std::string& name) {
  const auto it = std::find_if(kDtypes.begin(), kDtypes.end(), [&](const Dtype& d) { return name == d.name; });
  return it == kDtypes.end() ? nullptr : &*it;
}

const Dtype* find_dtype(torch::ScalarType type) {
  const auto it = std::find_if(kDtypes.begin(), kDtypes.end(), [&](const Dtype& d) { return type == d.type; });
  return it == kDtypes.end() ? nullptr : &*it;
}

// JSON-quotes a name so that control characters or stray bytes cannot break a one-line message.
std::string quote(const std::string& text) {
  return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A JSON value for an error message, cut short so that one bad value cannot flood it.
std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

std::string prefix_for(const std::string& path) { return "safetensors '" + path + "': "; }

// One header entry, validated against the size of the data buffer.
struct Entry {
  std::string name;
  const Dtype* dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

Entry parse_entry(const std::string& name, const json& value, uint64_t data_size, const std::string& prefix) {
  const std::string where = prefix + "tensor " + quote(name) + ": ";
  require(value.is_object(), where + "header entry must be an object, got " + show(value));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    require(value.contains(key), where + "header entry has no \"" + key + "\"");
  }

  const json& dtype_name = value["dtype"];
  require(dtype_name.is_string(), where + "dtype must be a string, got " + show(dtype_name));
  const Dtype* dtype = find_dtype(dtype_name.get<std::string>());
  require(dtype != nullptr, where + "unsupported dtype " + show(dtype_name) + " (" + kSupported + ")");

  // Parsed non-negative integers are exactly the JSON unsigned numbers; torch sizes are int64.
  const auto is_size = [](const json& v) { return v.is_number_unsigned(); };
  const json& shape = value["shape"];
  require(shape.is_array() && std::all_of(shape.begin(), shape.end(), [&](const json& dim) {
            return is_size(dim) && dim.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max());
          }),
          where + "shape must be an array of non-negative integers, got " + show(shape));
  Entry entry{name, dtype, shape.get<std::vector<int64_t>>(), 0, 0};

  const json& offsets = value["data_offsets"];
  require(offsets.is_array() && offsets.size() == 2 && is_size(offsets[0]) && is_size(offsets[1]),
          where + "data_offsets must be two non-negative integers, got " + show(offsets));
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  require(entry.begin <= entry.end, where + "data_offsets " + show(offsets) + " end before they begin");
  require(entry.end <= data_size, where + "data_offsets " + show(offsets) + " run past the end of the " +
                                      std::to_string(data_size) + "-byte data buffer: the file is truncated");

  // A zero dimension makes the size 0 whatever the others are; otherwise overflow is sticky.
  const bool empty = std::find(entry.shape.begin(), entry.shape.end(), 0) != entry.shape.end();
  uint64_t bytes = empty ? 0 : dtype->size;
  bool overflow = false;
  for (const int64_t dim : entry.shape) overflow |= __builtin_mul_overflow(bytes, uint64_t(dim), &bytes);
  require(!overflow && bytes == entry.end - entry.begin,
          where + "shape " + show(shape) + " of dtype " + dtype->name + " needs " +
              (overflow ? std::string("more than 2^64") : std::to_string(bytes)) + " bytes but data_offsets " +
              show(offsets) + " hold " + std::to_string(entry.end - entry.begin));
  return entry;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& prefix) {
  require(value.is_object(), prefix + std::string(kMetadataKey) + " must be an object, got " + show(value));
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    require(item.is_string(),
            prefix + kMetadataKey + " value for " + quote(key) + " must be a string, got " + show(item));
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  const std::string prefix = prefix_for(path);
  InputFile input = open_input_file(path, prefix);
  std::ifstream& in = input.stream;
  const uint64_t file_size = input.size;

  // The header is validated in full before any tensor memory is allocated, and tensor bytes are
  // then read straight into their tensors: no second copy of a large checkpoint in memory.
  require(file_size >= 8, prefix + "file is " + std::to_string(file_size) +
                              " bytes, shorter than the 8-byte header length");
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  require(header_size <= file_size - 8, prefix + "header length " + std::to_string(header_size) +
                                            " is larger than the rest of the " + std::to_string(file_size) +
                                            "-byte file");
  std::string header_text(header_size, '\0');
  in.read(header_text.data(), std::streamsize(header_size));
  require(in.good(), prefix + "cannot read the header");
  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = file_size - data_start;

  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::parse_error& e) {
    throw Error(prefix + "header is not valid JSON (" + e.what() + ")");
  }
  require(header.is_object(), prefix + "header must be a JSON object, got " + show(header));

  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      file.metadata = parse_metadata(value, prefix);
    } else {
      entries.push_back(parse_entry(name, value, data_size, prefix));
    }
  }

  // In offset order each tensor must start at or after the furthest end seen so far.
  std::vector<const Entry*> by_offset;
  for (const Entry& entry : entries) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  const Entry* furthest = nullptr;
  for (const Entry* entry : by_offset) {
    if (furthest != nullptr && entry->begin < furthest->end) {
      throw Error(prefix + "tensors " + quote(furthest->name) + " and " + quote(entry->name) +
                  " overlap in the data buffer");
    }
    if (furthest == nullptr || entry->end > furthest->end) furthest = entry;
  }

  for (const Entry& entry : entries) {
    torch::Tensor tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype->type));
    const uint64_t bytes = entry.end - entry.begin;
    if (bytes > 0) {
      in.seekg(std::streamoff(data_start + entry.begin));
      in.read(static_cast<char*>(tensor.data_ptr()), std::streamsize(bytes));
      require(in.good(), prefix + "tensor " + quote(entry.name) + ": cannot read its data");
    }
    file.tensors.emplace(entry.name, std::move(tensor));
  }
  return file;
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorLayout>& layouts,
                                     const std::map<std::string, std::string>& metadata)
    : prefix_(prefix_for(path)), file_(path, prefix_) {
  // ordered_json keeps the key order of the reference library: metadata first, then each
  // tensor as {dtype, shape, data_offsets}, laid out in the order given.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  for (const TensorLayout& layout : layouts) {
    const std::string where = prefix_ + "tensor " + quote(layout.name) + ": ";
    require(layout.name != kMetadataKey, where + "the name is reserved for metadata");
    require(!header.contains(layout.name), where + "the name is given twice");
    const Dtype* dtype = find_dtype(layout.dtype);
    require(dtype != nullptr, where + "dtype " + layout.dtype + " cannot be stored (" + kSupported + ")");
    uint64_t bytes = dtype->size;
    for (const int64_t dim : layout.shape) bytes *= uint64_t(dim);
    header[layout.name] = {
        {"dtype", dtype->name}, {"shape", layout.shape}, {"data_offsets", {data_bytes_, data_bytes_ + bytes}}};
    data_bytes_ += bytes;
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::type_error&) {
    throw Error(prefix_ + "tensor names and metadata must be valid UTF-8");
  }
  // Pad with spaces so that the data buffer starts 8-byte aligned, as the reference library does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();
  file_.write(&header_size, 8);
  file_.write(header_text.data(), header_size);
}

void SafetensorsWriter::write(const void* data, uint64_t size) {
  require(size <= data_bytes_ - written_,
          prefix_ + "more data than the header's " + std::to_string(data_bytes_) + " bytes");
  file_.write(data, size);
  written_ += size;
}

void SafetensorsWriter::commit() {
  require(written_ == data_bytes_, prefix_ + std::to_string(written_) +
                                       " bytes of data written where the header says " + std::to_string(data_bytes_));
  file_.commit();
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string prefix = prefix_for(path);
  // std::map already sorts the tensors by name, the order they are laid out in.
  std::vector<TensorLayout> layouts;
  std::vector<torch::Tensor> data;
  for (const auto& [name, tensor] : tensors) {
    const std::string where = prefix + "tensor " + quote(name) + ": ";
    require(tensor.defined(), where + "tensor is undefined");
    const Dtype* dtype = find_dtype(tensor.scalar_type());
    require(dtype != nullptr,
            where + "dtype " + c10::toString(tensor.scalar_type()) + " cannot be stored (" + kSupported + ")");
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
