#include "io/safetensors_layout.h"

#include <algorithm>
#include <array>
#include <bit>
#include <iostream>
#include <limits>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"

namespace ttt::io {
namespace {

// The format is little-endian and tensor bytes are copied as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using nlohmann::json;
constexpr const char* kMetadataKey = "__metadata__";

struct Dtype {
  const char* name;
  uint64_t size;
};

constexpr std::array<Dtype, 4> kDtypes = {{{"F32", 4}, {"F64", 8}, {"BF16", 2}, {"F16", 2}}};

// JSON-quotes a name so that control characters or stray bytes cannot break a one-line message.
std::string quote(const std::string& text) { return json(text).dump(-1, ' ', false, json::error_handler_t::replace); }

// A JSON value for an error message, cut short so that one bad value cannot flood it.
std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

// The header as the checksum covers it: keys sorted (nlohmann::json's order), no spaces, the
// checksum itself left out, and with it a metadata object that held nothing else.
std::string canonical_header(json header) {
  const auto metadata = header.find(kMetadataKey);
  if (metadata != header.end() && metadata->is_object()) {
    metadata->erase(kChecksumKey);
    if (metadata->empty()) header.erase(metadata);
  }
  return header.dump(-1, ' ', false, json::error_handler_t::replace);
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, uint64_t data_size,
                             const std::string& prefix) {
  const std::string where = safetensors_tensor_prefix(prefix, name);
  require(value.is_object(), where + "header entry must be an object, got " + show(value));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    require(value.contains(key), where + "header entry has no \"" + key + "\"");
  }

  const json& dtype_name = value["dtype"];
  require(dtype_name.is_string(), where + "dtype must be a string, got " + show(dtype_name));
  const uint64_t element_size = safetensors_dtype_size(dtype_name.get<std::string>());
  require(element_size != 0, where + "unsupported dtype " + show(dtype_name) + " (" + kSafetensorsSupported + ")");

  const json& shape = value["shape"];
  require(shape.is_array(), where + "shape must be an array of non-negative integers, got " + show(shape));
  SafetensorsEntry entry{name, dtype_name.get<std::string>(), {}, 0, 0};
  for (const json& dim : shape) {  // torch sizes are int64
    const std::string what = where + "shape[" + std::to_string(entry.shape.size()) + "]";
    entry.shape.push_back(json_integer(dim, 0, std::numeric_limits<int64_t>::max(), what));
  }

  // Offsets are uint64 (the data buffer's size bounds them below): parsed non-negative integers
  // are exactly the JSON unsigned numbers.
  const json& offsets = value["data_offsets"];
  require(
      offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned(),
      where + "data_offsets must be two non-negative integers, got " + show(offsets));
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  require(entry.begin <= entry.end, where + "data_offsets " + show(offsets) + " end before they begin");
  require(entry.end <= data_size, where + "data_offsets " + show(offsets) + " run past the end of the " +
                                      std::to_string(data_size) + "-byte data buffer: the file is truncated");

  // A zero dimension makes the size 0 whatever the others are; otherwise overflow is sticky.
  const bool empty = std::find(entry.shape.begin(), entry.shape.end(), 0) != entry.shape.end();
  uint64_t bytes = empty ? 0 : element_size;
  bool overflow = false;
  for (const int64_t dim : entry.shape) overflow |= __builtin_mul_overflow(bytes, uint64_t(dim), &bytes);
  require(!overflow && bytes == entry.end - entry.begin,
          where + "shape " + show(shape) + " of dtype " + entry.dtype + " needs " +
              (overflow ? std::string("more than 2^64") : std::to_string(bytes)) + " bytes but data_offsets " +
              show(offsets) + " hold " + std::to_string(entry.end - entry.begin));
  return entry;
}

void parse_metadata(const json& value, SafetensorsLayout& layout, const std::string& prefix) {
  require(value.is_object(), prefix + std::string(kMetadataKey) + " must be an object, got " + show(value));
  for (const auto& [key, item] : value.items()) {
    require(item.is_string(),
            prefix + kMetadataKey + " value for " + quote(key) + " must be a string, got " + show(item));
    if (key == kChecksumKey) {
      layout.checksum = parse_checksum_text(item.get<std::string>());
      require(layout.checksum.has_value(), prefix + kMetadataKey + " value for " + quote(key) +
                                               " must be 16 lowercase hex digits, got " + show(item));
    } else {
      layout.metadata[key] = item.get<std::string>();
    }
  }
}

// Reads `size` bytes of the data buffer into `destination` (or, where null, through a scratch
// buffer), adding them to `checksum` where there is one.
void read_span(InputFile& input, void* destination, uint64_t size, Checksum* checksum, const std::string& what) {
  std::vector<char> scratch;
  if (destination == nullptr) scratch.resize(std::min<uint64_t>(size, 1 << 20));
  char* cursor = static_cast<char*>(destination);
  while (size > 0) {
    const uint64_t piece = destination != nullptr ? size : std::min<uint64_t>(size, scratch.size());
    char* into = destination != nullptr ? cursor : scratch.data();
    input.stream.read(into, std::streamsize(piece));
    require(input.stream.good(), what);
    if (checksum != nullptr) checksum->update(into, piece);
    if (destination != nullptr) cursor += piece;
    size -= piece;
  }
}

}  // namespace

std::string safetensors_prefix(const std::string& path) { return "safetensors '" + path + "': "; }

std::string safetensors_tensor_prefix(const std::string& prefix, const std::string& name) {
  return prefix + "tensor " + quote(name) + ": ";
}

void check_integrity(bool checksum_verified, const std::string& path, bool written_with_checksum) {
  if (checksum_verified) return;
  require(!written_with_checksum, path + ": the file is corrupted: its checksum (\"" + std::string(kChecksumKey) +
                                      "\" in its metadata) is missing");
  std::cerr << "ttt: warning: " << path << " was saved without a checksum (by an older version): its contents "
            << "cannot be verified\n";
}

uint64_t safetensors_dtype_size(const std::string& dtype) {
  const auto it = std::find_if(kDtypes.begin(), kDtypes.end(), [&](const Dtype& d) { return dtype == d.name; });
  return it == kDtypes.end() ? 0 : it->size;
}

SafetensorsLayout read_safetensors_layout(InputFile& input, const std::string& prefix) {
  std::istream& in = input.stream;
  const uint64_t file_size = input.size;
  require(file_size >= 8,
          prefix + "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), 8);
  require(header_size <= file_size - 8, prefix + "header length " + std::to_string(header_size) +
                                            " is larger than the rest of the " + std::to_string(file_size) +
                                            "-byte file");
  require(header_size <= kMaxSafetensorsHeaderBytes, prefix + "header length " + std::to_string(header_size) +
                                                         " is over the limit of " +
                                                         std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  std::string header_text(header_size, '\0');
  in.read(header_text.data(), std::streamsize(header_size));
  require(in.good(), prefix + "cannot read the header");

  SafetensorsLayout layout;
  layout.data_start = 8 + header_size;
  layout.data_size = file_size - layout.data_start;
  const json header = parse_json_input(header_text, prefix + "header is ");
  require(header.is_object(), prefix + "header must be a JSON object, got " + show(header));

  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      parse_metadata(value, layout, prefix);
    } else {
      layout.entries.push_back(parse_entry(name, value, layout.data_size, prefix));
    }
  }
  if (layout.checksum) layout.canonical_header = canonical_header(header);

  // In offset order each tensor must start at or after the furthest end seen so far.
  std::sort(layout.entries.begin(), layout.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  const SafetensorsEntry* furthest = nullptr;
  for (const SafetensorsEntry& entry : layout.entries) {
    if (furthest != nullptr && entry.begin < furthest->end) {
      throw Error(prefix + "tensors " + quote(furthest->name) + " and " + quote(entry.name) +
                  " overlap in the data buffer");
    }
    if (furthest == nullptr || entry.end > furthest->end) furthest = &entry;
  }
  return layout;
}

void read_safetensors_data(InputFile& input, const SafetensorsLayout& layout,
                           const std::function<void*(const SafetensorsEntry&)>& destination,
                           const std::string& prefix) {
  // With a checksum every byte of the data buffer is read, in order, gaps included; without
  // one only the tensors' bytes are.
  std::optional<Checksum> checksum;
  if (layout.checksum) checksum.emplace().update(layout.canonical_header.data(), layout.canonical_header.size());
  Checksum* sum = checksum ? &*checksum : nullptr;
  const std::string unreadable = prefix + "cannot read the data buffer";
  uint64_t at = 0;  // offset in the data buffer
  for (const SafetensorsEntry& entry : layout.entries) {
    const uint64_t start = std::max(entry.begin, at);  // zero-byte tensors may sit inside others
    if (sum != nullptr && start > at) {
      input.stream.seekg(std::streamoff(layout.data_start + at));
      read_span(input, nullptr, start - at, sum, unreadable);
    }
    void* into = destination(entry);
    if (entry.end > entry.begin) {
      input.stream.seekg(std::streamoff(layout.data_start + entry.begin));
      read_span(input, into, entry.end - entry.begin, sum,
                safetensors_tensor_prefix(prefix, entry.name) + "cannot read its data");
    }
    at = std::max(at, entry.end);
  }
  if (!checksum) return;
  input.stream.seekg(std::streamoff(layout.data_start + at));
  read_span(input, nullptr, layout.data_size - at, sum, unreadable);
  require(checksum->digest() == *layout.checksum,
          prefix + "the file is corrupted: its contents do not match the checksum in its metadata (stored " +
              checksum_text(*layout.checksum) + ", computed " + checksum_text(checksum->digest()) + ")");
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorLayout>& layouts,
                                     const std::map<std::string, std::string>& metadata)
    : prefix_(safetensors_prefix(path)), file_(path, prefix_) {
  require(!metadata.contains(kChecksumKey),
          prefix_ + kMetadataKey + " key \"" + kChecksumKey + "\" is reserved for the file's checksum");
  // ordered_json keeps the key order of the reference library: metadata first, then each
  // tensor as {dtype, shape, data_offsets}, laid out in the order given. The checksum starts
  // as a placeholder that commit() overwrites.
  const std::string placeholder = checksum_text(0);
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header[kMetadataKey] = metadata;
  header[kMetadataKey][kChecksumKey] = placeholder;
  for (const TensorLayout& layout : layouts) {
    const std::string where = safetensors_tensor_prefix(prefix_, layout.name);
    require(layout.name != kMetadataKey, where + "the name is reserved for metadata");
    require(!header.contains(layout.name), where + "the name is given twice");
    const uint64_t element_size = safetensors_dtype_size(layout.dtype);
    require(element_size != 0, where + "dtype " + layout.dtype + " cannot be stored (" + kSafetensorsSupported + ")");
    uint64_t bytes = element_size;
    for (const int64_t dim : layout.shape) bytes *= uint64_t(dim);
    header[layout.name] = {
        {"dtype", layout.dtype}, {"shape", layout.shape}, {"data_offsets", {data_bytes_, data_bytes_ + bytes}}};
    data_bytes_ += bytes;
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::type_error&) {
    throw Error(prefix_ + "tensor names and metadata must be valid UTF-8");
  }
  // The checksum covers the header as a reader parses it back: the same value, as it holds only
  // strings and integers (json sorts the keys as parsing would); no need to parse our own text.
  const std::string canonical = canonical_header(json(header));
  checksum_.update(canonical.data(), canonical.size());
  const std::string placeholder_entry = std::string("\"") + kChecksumKey + "\":\"" + placeholder + "\"";
  checksum_offset_ = 8 + header_text.find(placeholder_entry) + placeholder_entry.size() - 1 - placeholder.size();
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
  checksum_.update(data, size);
  written_ += size;
}

void SafetensorsWriter::commit() {
  require(written_ == data_bytes_, prefix_ + std::to_string(written_) +
                                       " bytes of data written where the header says " + std::to_string(data_bytes_));
  const std::string digits = checksum_text(checksum_.digest());
  file_.write_at(checksum_offset_, digits.data(), digits.size());
  file_.commit();
}

}  // namespace ttt::io
