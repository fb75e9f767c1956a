// zarr v2 arrays inside an OCDBT store, as orbax writes them: `<path>/.zarray` (JSON metadata)
// and one value per chunk, `<path>/<i>.<j>...`. Only what orbax checkpoints use is read; any
// other feature (compressor, filter, Fortran order, dtype) is an error naming it. No libtorch.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "io/orbax/ocdbt.h"

namespace ttt::io::orbax {

enum class StoredDtype { kFloat32, kBFloat16, kFloat16 };

// "float32", "bfloat16", "float16".
const char* dtype_name(StoredDtype dtype);
uint64_t dtype_size(StoredDtype dtype);

struct ZarrMetadata {
  std::vector<int64_t> shape;
  std::vector<int64_t> chunks;  // the shape of every chunk (edge chunks are padded to it)
  StoredDtype dtype = StoredDtype::kFloat32;
  bool zstd = false;  // chunks compressed with zstd, else stored raw

  uint64_t elements() const;
  uint64_t bytes() const { return elements() * dtype_size(dtype); }
  uint64_t chunk_bytes() const;
};

// Parses and checks a .zarray document; errors start with `prefix`.
ZarrMetadata parse_zarray(std::string_view text, const std::string& prefix);

class ZarrArray {
 public:
  // Reads and checks `path`/.zarray; every chunk's key must be in the store.
  ZarrArray(const OcdbtStore& store, std::string path);

  const std::string& path() const { return path_; }
  const ZarrMetadata& metadata() const { return metadata_; }
  // Bytes of all chunks as stored (compressed): what reading the array reads.
  uint64_t stored_bytes() const { return stored_bytes_; }

  // Every chunk assembled into `out` (metadata().bytes() bytes): row-major, the stored dtype.
  // `on_read(n)` is called as each piece of n stored bytes has been read.
  void read_into(char* out, const std::function<void(uint64_t)>& on_read = {}) const;

 private:
  std::string chunk_key(const std::vector<int64_t>& index) const;

  const OcdbtStore* store_;
  std::string path_;
  ZarrMetadata metadata_;
  std::vector<int64_t> grid_;  // chunks along each dimension
  uint64_t stored_bytes_ = 0;
};

}  // namespace ttt::io::orbax
