#include "io/orbax/zarr.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"
#include "io/orbax/zstd_decoder.h"

namespace ttt::io::orbax {
namespace {

// Chunks are little-endian ("<f4") and copied as they are.
static_assert(std::endian::native == std::endian::little, "zarr reading assumes a little-endian host");

using nlohmann::json;

std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  return text.size() > 64 ? text.substr(0, 61) + "..." : text;
}

std::vector<int64_t> dimensions(const json& doc, const char* key, int64_t smallest, const std::string& prefix) {
  const json& value = doc.contains(key) ? doc[key] : json();
  require(value.is_array(), prefix + "\"" + key + "\" must be an array of integers, got " + show(value));
  std::vector<int64_t> dims;
  for (const json& d : value) {
    const std::string what = prefix + "\"" + key + "\"[" + std::to_string(dims.size()) + "]";
    dims.push_back(json_integer(d, smallest, int64_t(1) << 48, what));
  }
  return dims;
}

uint64_t product(const std::vector<int64_t>& dims) {
  uint64_t n = 1;
  for (const int64_t d : dims) n *= uint64_t(d);  // dimensions are at most 2^48 and checked below
  return n;
}

// Steps `index` to the next one in row-major order below `limits`; false after the last.
bool next_index(std::vector<int64_t>& index, const std::vector<int64_t>& limits, size_t dims) {
  for (size_t d = dims; d-- > 0;) {
    if (++index[d] < limits[d]) return true;
    index[d] = 0;
  }
  return false;
}

}  // namespace

const char* dtype_name(StoredDtype dtype) {
  switch (dtype) {
    case StoredDtype::kFloat32:
      return "float32";
    case StoredDtype::kBFloat16:
      return "bfloat16";
    case StoredDtype::kFloat16:
      return "float16";
  }
  return "?";
}

uint64_t dtype_size(StoredDtype dtype) { return dtype == StoredDtype::kFloat32 ? 4 : 2; }

uint64_t ZarrMetadata::elements() const { return product(shape); }
uint64_t ZarrMetadata::chunk_bytes() const { return product(chunks) * dtype_size(dtype); }

ZarrMetadata parse_zarray(std::string_view text, const std::string& prefix) {
  const json doc = parse_json_input(text, prefix);
  require(doc.is_object(), prefix + "must be a JSON object, got " + show(doc));
  require(doc.value("zarr_format", json()) == json(2),
          prefix + "\"zarr_format\" must be 2, got " + show(doc.value("zarr_format", json())));

  ZarrMetadata meta;
  meta.shape = dimensions(doc, "shape", 0, prefix);
  meta.chunks = dimensions(doc, "chunks", 1, prefix);
  require(meta.chunks.size() == meta.shape.size() && !meta.shape.empty(),
          prefix + "\"chunks\" " + show(doc["chunks"]) + " does not fit \"shape\" " + show(doc["shape"]));
  for (size_t d = 0; d < meta.shape.size(); ++d) {
    // Larger chunks than the array are valid zarr but never written by orbax; refusing them
    // bounds the buffer a chunk needs by the array's own size.
    require(meta.chunks[d] <= std::max<int64_t>(meta.shape[d], 1),
            prefix + "\"chunks\" " + show(doc["chunks"]) + " exceed \"shape\" " + show(doc["shape"]));
  }
  uint64_t elements = 1;
  for (const int64_t d : meta.shape) {
    require(!__builtin_mul_overflow(elements, uint64_t(d), &elements) && elements <= (uint64_t(1) << 60),
            prefix + "shape " + show(doc["shape"]) + " is too large");
  }

  const json dtype = doc.value("dtype", json());
  if (dtype == "<f4") {
    meta.dtype = StoredDtype::kFloat32;
  } else if (dtype == "bfloat16") {
    meta.dtype = StoredDtype::kBFloat16;
  } else if (dtype == "<f2") {
    meta.dtype = StoredDtype::kFloat16;
  } else {
    throw Error(prefix + "dtype " + show(dtype) + " is not supported (\"<f4\", \"bfloat16\" or \"<f2\")");
  }

  const json compressor = doc.value("compressor", json());
  meta.zstd = !compressor.is_null();
  require(compressor.is_null() || (compressor.is_object() && compressor.value("id", json()) == "zstd"),
          prefix + "compressor " + show(compressor) + " is not supported (zstd or none)");
  const json order = doc.value("order", json("C"));
  require(order == "C", prefix + "order " + show(order) + " is not supported (only \"C\", row-major)");
  const json filters = doc.value("filters", json());
  require(filters.is_null() || (filters.is_array() && filters.empty()),
          prefix + "filters " + show(filters) + " are not supported");
  const json separator = doc.value("dimension_separator", json("."));
  require(separator == ".", prefix + "dimension_separator " + show(separator) + " is not supported (only \".\")");
  return meta;
}

ZarrArray::ZarrArray(const OcdbtStore& store, std::string path) : store_(&store), path_(std::move(path)) {
  const std::string key = path_ + "/.zarray";
  require(store.contains(key), store.prefix() + "array '" + path_ + "' has no metadata (no key '" + key + "')");
  metadata_ = parse_zarray(store.read(key), store.prefix() + "key '" + key + "': ");
  for (size_t d = 0; d < metadata_.shape.size(); ++d) {
    grid_.push_back((metadata_.shape[d] + metadata_.chunks[d] - 1) / metadata_.chunks[d]);
  }
  if (metadata_.elements() == 0) return;
  // Every chunk must be stored (orbax writes chunks equal to the fill value too): a missing
  // one is an error now, before any data is read.
  std::vector<int64_t> index(grid_.size(), 0);
  do {
    const std::string chunk = chunk_key(index);
    require(store.contains(chunk), store.prefix() + "array '" + path_ + "': chunk '" + chunk + "' is missing");
    stored_bytes_ += store.at(chunk).size();
  } while (next_index(index, grid_, grid_.size()));
}

std::string ZarrArray::chunk_key(const std::vector<int64_t>& index) const {
  std::string key = path_ + "/";
  for (size_t d = 0; d < index.size(); ++d) {
    if (d > 0) key += '.';
    key += std::to_string(index[d]);
  }
  return key;
}

void ZarrArray::read_into(char* out, const std::function<void(uint64_t)>& on_read) const {
  const ZarrMetadata& m = metadata_;
  if (m.elements() == 0) return;
  const size_t rank = m.shape.size();
  const uint64_t esize = dtype_size(m.dtype);
  // Bytes of one step along each dimension, in the array and in a chunk.
  std::vector<uint64_t> array_stride(rank), chunk_stride(rank);
  for (size_t d = rank; d-- > 0;) {
    array_stride[d] = d + 1 == rank ? esize : array_stride[d + 1] * uint64_t(m.shape[d + 1]);
    chunk_stride[d] = d + 1 == rank ? esize : chunk_stride[d + 1] * uint64_t(m.chunks[d + 1]);
  }
  // A chunk lands contiguously in `out` when it spans every dimension but the first.
  bool spans_rows = true;
  for (size_t d = 1; d < rank; ++d) spans_rows &= m.chunks[d] == m.shape[d];
  std::unique_ptr<char[]> scratch;

  std::vector<int64_t> index(rank, 0);
  do {
    const std::string key = chunk_key(index);
    const std::string prefix = store_->prefix(store_->at(key).file) + "key '" + key + "': ";
    uint64_t origin = 0;
    for (size_t d = 0; d < rank; ++d) origin += uint64_t(index[d] * m.chunks[d]) * array_stride[d];
    const bool direct = spans_rows && (index[0] + 1) * m.chunks[0] <= m.shape[0];
    if (!direct && !scratch) scratch.reset(new char[m.chunk_bytes()]);
    char* target = direct ? out + origin : scratch.get();

    // Decode the chunk, compressed or raw, checking it fills exactly one chunk.
    const uint64_t chunk_bytes = m.chunk_bytes();
    const uint64_t stored = store_->at(key).size();
    if (m.zstd) {
      ZstdDecoder decoder(target, chunk_bytes, prefix);
      store_->stream(key, [&](std::string_view piece) {
        decoder.feed(piece);
        if (on_read) on_read(piece.size());
      });
      decoder.finish();
    } else {
      require(stored == chunk_bytes, prefix + "holds " + std::to_string(stored) + " bytes where a raw chunk has " +
                                         std::to_string(chunk_bytes));
      uint64_t written = 0;
      store_->stream(key, [&](std::string_view piece) {
        std::memcpy(target + written, piece.data(), piece.size());
        written += piece.size();
        if (on_read) on_read(piece.size());
      });
    }

    if (!direct) {
      // Copy the part inside the array, one innermost row at a time (edge chunks are padded).
      std::vector<int64_t> extent(rank);
      for (size_t d = 0; d < rank; ++d) extent[d] = std::min(m.chunks[d], m.shape[d] - index[d] * m.chunks[d]);
      const uint64_t row_bytes = uint64_t(extent[rank - 1]) * esize;
      std::vector<int64_t> row(rank, 0);
      do {
        uint64_t from = 0, to = origin;
        for (size_t d = 0; d + 1 < rank; ++d) {
          from += uint64_t(row[d]) * chunk_stride[d];
          to += uint64_t(row[d]) * array_stride[d];
        }
        std::memcpy(out + to, scratch.get() + from, row_bytes);
      } while (next_index(row, extent, rank - 1));
    }
  } while (next_index(index, grid_, rank));
}

}  // namespace ttt::io::orbax
