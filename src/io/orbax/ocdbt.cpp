#include "io/orbax/ocdbt.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <limits>
#include <map>

#include "common/error.h"
#include "io/input_file.h"
#include "io/orbax/zstd_decoder.h"

namespace ttt::io::orbax {
namespace {

// tensorstore/kvstore/ocdbt/format: magic numbers and the limits its reader enforces.
constexpr uint32_t kManifestMagic = 0x0cdb3a2a;
constexpr uint32_t kBtreeNodeMagic = 0x0cdb20de;
constexpr uint64_t kMaxManifestBytes = 64ull << 20;  // ours: a manifest is a few hundred bytes
constexpr uint64_t kMaxNodeArity = 1024 * 1024;
constexpr uint64_t kMaxPathLength = 65535;
constexpr uint64_t kMaxKeyLength = 65535;
constexpr uint64_t kMissing = std::numeric_limits<uint64_t>::max();  // offset and length of an absent root
constexpr uint64_t kStreamPiece = 8ull << 20;

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// Fields read one after another from a decoded buffer; running past its end is an error
// naming what was being read.
class Fields {
 public:
  Fields(std::string_view data, std::string prefix) : data_(data), prefix_(std::move(prefix)) {}

  uint64_t remaining() const { return data_.size() - pos_; }
  const std::string& prefix() const { return prefix_; }

  std::string_view bytes(uint64_t n, const char* what) {
    require(n <= remaining(), prefix_ + "ends early (reading " + what + ")");
    const std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  uint8_t byte(const char* what) { return uint8_t(bytes(1, what)[0]); }
  uint64_t little_endian(int size, const char* what) {
    const std::string_view b = bytes(size, what);
    uint64_t value = 0;
    for (int i = size - 1; i >= 0; --i) value = (value << 8) | uint8_t(b[i]);
    return value;
  }
  // Unsigned LEB128, at most 64 bits.
  uint64_t varint(const char* what) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = byte(what);
      require(shift < 63 || b <= 1, prefix_ + "malformed varint (reading " + what + ")");
      value |= uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return value;
    }
    throw Error(prefix_ + "malformed varint (reading " + what + ")");
  }
  // A count of items that each take at least one more byte: bounded by what is left.
  uint64_t count(const char* what, uint64_t limit) {
    const uint64_t n = varint(what);
    require(n <= limit && n <= remaining(), prefix_ + "implausible " + what + " " + std::to_string(n));
    return n;
  }

 private:
  std::string_view data_;
  uint64_t pos_ = 0;
  std::string prefix_;
};

// A data file: its path relative to the store's root, and the base that children reached
// through it resolve their own paths against (tensorstore's "transitive path").
struct DataFile {
  std::string path;
  std::string base;
};

// The data file table of a manifest or node: prefix-compressed paths, each split into a base
// path and a relative path, all under `transitive`.
std::vector<DataFile> read_data_file_table(Fields& in, const std::string& transitive) {
  const uint64_t n = in.count("data file count", kMaxNodeArity);
  std::vector<uint64_t> prefix(n, 0), suffix(n), base(n);
  for (uint64_t i = 1; i < n; ++i) prefix[i] = in.varint("data file path prefix length");
  for (uint64_t i = 0; i < n; ++i) suffix[i] = in.varint("data file path suffix length");
  for (uint64_t i = 0; i < n; ++i) base[i] = in.varint("data file base path length");
  std::vector<DataFile> files(n);
  std::string previous;
  for (uint64_t i = 0; i < n; ++i) {
    require(prefix[i] <= previous.size() && suffix[i] <= kMaxPathLength && prefix[i] + suffix[i] <= kMaxPathLength &&
                base[i] <= prefix[i] + suffix[i],
            in.prefix() + "data file " + std::to_string(i) + " has inconsistent path lengths");
    std::string path = previous.substr(0, prefix[i]);
    path += in.bytes(suffix[i], "data file path");
    // Paths stay inside the store: no absolute paths, no way up.
    require(path.rfind('/', 0) != 0 && path.find("..") == std::string::npos,
            in.prefix() + "data file path '" + path + "' leaves the store");
    files[i] = {transitive + path, transitive + path.substr(0, base[i])};
    previous = std::move(path);
  }
  return files;
}

const DataFile& data_file(Fields& in, const std::vector<DataFile>& table) {
  const uint64_t id = in.varint("data file id");
  require(id < table.size(), in.prefix() + "data file id " + std::to_string(id) + " is outside the table of " +
                                 std::to_string(table.size()));
  return table[id];
}

void check_range(const OcdbtStore& store, const std::string& file, uint64_t file_size, uint64_t offset, uint64_t length,
                 const std::string& what) {
  require(offset <= file_size && length <= file_size - offset,
          store.prefix(file) + what + " at bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
              ") runs past the end of the " + std::to_string(file_size) + "-byte file: the file is truncated");
}

// `root`/`file` opened at `offset`, once [offset, offset + length) is known to lie inside it.
InputFile open_range(const OcdbtStore& store, const std::string& file, uint64_t offset, uint64_t length,
                     const std::string& what) {
  InputFile input = open_input_file(store.root() + "/" + file, store.prefix(file));
  check_range(store, file, input.size, offset, length, what);
  input.stream.seekg(std::streamoff(offset));
  return input;
}

std::string read_range(const OcdbtStore& store, const std::string& file, uint64_t offset, uint64_t length,
                       const std::string& what) {
  InputFile input = open_range(store, file, offset, length, what);
  std::string bytes(length, '\0');
  input.stream.read(bytes.data(), std::streamsize(length));
  require(input.stream.good() || length == 0, store.prefix(file) + "cannot read " + what);
  return bytes;
}

// The common envelope of manifests and nodes: magic, length, version, compression, body,
// CRC-32C of everything before it. Returns the decompressed body.
std::string open_envelope(const std::string& encoded, uint32_t magic, uint64_t max_body, const std::string& prefix) {
  require(encoded.size() >= 16, prefix + "is " + std::to_string(encoded.size()) + " bytes, too short to be valid");
  Fields header(encoded, prefix);
  const std::string_view magic_bytes = header.bytes(4, "magic");
  const uint32_t found = (uint32_t(uint8_t(magic_bytes[0])) << 24) | (uint32_t(uint8_t(magic_bytes[1])) << 16) |
                         (uint32_t(uint8_t(magic_bytes[2])) << 8) | uint8_t(magic_bytes[3]);
  char expected[16];
  std::snprintf(expected, sizeof expected, "0x%08x", magic);
  require(found == magic, prefix + "does not start with the magic number " + expected);
  const uint64_t length = header.little_endian(8, "length");
  require(length == encoded.size(),
          prefix + "says it is " + std::to_string(length) + " bytes long but is " + std::to_string(encoded.size()));
  const uint64_t stored_crc =
      Fields(std::string_view(encoded).substr(encoded.size() - 4), prefix).little_endian(4, "checksum");
  require(crc32c(std::string_view(encoded).substr(0, encoded.size() - 4)) == stored_crc,
          prefix + "CRC-32C checksum mismatch: the data is corrupt");
  Fields rest(std::string_view(encoded).substr(0, encoded.size() - 4), prefix);
  rest.bytes(12, "header");
  const uint64_t version = rest.varint("format version");
  require(version == 0, prefix + "has format version " + std::to_string(version) + " (only 0 is supported)");
  const uint64_t compression = rest.varint("compression format");
  const std::string_view body = rest.bytes(rest.remaining(), "body");
  if (compression == 0) return std::string(body);
  require(compression == 1, prefix + "has unknown compression format " + std::to_string(compression));
  return zstd_decompress(body, max_body, prefix);
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  uint32_t crc = 0xffffffffu;
  for (const char c : bytes) crc = kCrc32cTable[(crc ^ uint8_t(c)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

// A reference to an encoded B+tree node: where it is and the height it must have.
struct OcdbtStore::NodeRef {
  DataFile file;
  uint64_t offset;
  uint64_t length;
  int height;
};

OcdbtStore::OcdbtStore(const std::string& root) : root_(root) {
  const std::string manifest_name = "manifest.ocdbt";
  const std::string prefix = this->prefix(manifest_name);
  const InputFile manifest_file = open_input_file(root_ + "/" + manifest_name, prefix);
  require(manifest_file.size <= kMaxManifestBytes,
          prefix + "is " + std::to_string(manifest_file.size) + " bytes, too large for a manifest");
  const std::string body = open_envelope(read_range(*this, manifest_name, 0, manifest_file.size, "the manifest"),
                                         kManifestMagic, kMaxManifestBytes, prefix);
  Fields in(body, prefix);

  // Config: uuid, manifest kind, limits, version tree arity, compression of new nodes.
  in.bytes(16, "uuid");
  const uint8_t manifest_kind = in.byte("manifest kind");
  require(manifest_kind == 0, prefix + "has manifest kind " + std::to_string(manifest_kind) +
                                  " (numbered manifests are not supported, only single-file ones)");
  in.varint("max inline value bytes");
  max_node_bytes_ = in.varint("max decoded node bytes");
  const uint8_t arity_log2 = in.byte("version tree arity");
  require(arity_log2 >= 1 && arity_log2 <= 16, prefix + "has an invalid version tree arity");
  const uint64_t compression = in.varint("compression method");
  require(compression <= 1, prefix + "has unknown compression method " + std::to_string(compression));
  if (compression == 1) in.bytes(4, "zstd level");

  // The versions stored inline, oldest first; the last is the latest, all that is read here.
  const std::vector<DataFile> files = read_data_file_table(in, "");
  const uint64_t n = in.count("version count", uint64_t(1) << arity_log2);
  require(n >= 1, prefix + "holds no version");
  std::vector<uint64_t> heights(n), offsets(n), lengths(n);
  std::vector<const DataFile*> roots(n);
  for (uint64_t i = 0; i < n; ++i) in.varint("generation number");
  for (uint64_t i = 0; i < n; ++i) heights[i] = in.byte("root height");
  for (uint64_t i = 0; i < n; ++i) roots[i] = &data_file(in, files);
  for (uint64_t i = 0; i < n; ++i) offsets[i] = in.varint("root offset");
  for (uint64_t i = 0; i < n; ++i) lengths[i] = in.varint("root length");
  if (offsets[n - 1] == kMissing && lengths[n - 1] == kMissing) return;  // an empty store
  read_node({*roots[n - 1], offsets[n - 1], lengths[n - 1], int(heights[n - 1])}, "", 0);

  // Every value's range lies inside its data file: a truncated or missing file is found now,
  // before anything is converted, not after gigabytes.
  std::map<std::string, uint64_t> file_sizes;
  for (const auto& [key, value] : values_) {
    if (value.is_inline) continue;
    auto size = file_sizes.find(value.file);
    if (size == file_sizes.end()) {
      size = file_sizes.emplace(value.file, open_input_file(root_ + "/" + value.file, this->prefix(value.file)).size)
                 .first;
    }
    check_range(*this, value.file, size->second, value.offset, value.length, "key '" + key + "'");
  }
}

void OcdbtStore::read_node(const NodeRef& ref, const std::string& key_prefix, int depth) {
  const std::string prefix = this->prefix(ref.file.path) + "B+tree node at byte " + std::to_string(ref.offset) + ": ";
  require(depth <= 255, prefix + "the tree is deeper than any valid one");
  const std::string body = open_envelope(read_range(*this, ref.file.path, ref.offset, ref.length, "a B+tree node"),
                                         kBtreeNodeMagic, std::max<uint64_t>(max_node_bytes_, 1 << 20), prefix);
  Fields in(body, prefix);
  const int height = in.byte("height");
  require(height == ref.height,
          prefix + "has height " + std::to_string(height) + " where its parent says " + std::to_string(ref.height));
  const std::vector<DataFile> files = read_data_file_table(in, ref.file.base);
  const uint64_t n = in.count("entry count", kMaxNodeArity);
  require(n >= 1, prefix + "is empty");

  // Keys: prefix-compressed against the previous key; interior entries also say how much of
  // their key every key below them shares.
  std::vector<uint64_t> shared(n, 0), suffix(n), subtree_prefix(n, 0);
  for (uint64_t i = 1; i < n; ++i) shared[i] = in.varint("key prefix length");
  for (uint64_t i = 0; i < n; ++i) suffix[i] = in.varint("key suffix length");
  if (height > 0) {
    for (uint64_t i = 0; i < n; ++i) subtree_prefix[i] = in.varint("subtree common prefix length");
  }
  std::vector<std::string> keys(n);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t previous = i == 0 ? 0 : keys[i - 1].size();
    require(shared[i] <= previous && suffix[i] <= kMaxKeyLength && shared[i] + suffix[i] <= kMaxKeyLength &&
                subtree_prefix[i] <= shared[i] + suffix[i],
            prefix + "entry " + std::to_string(i) + " has inconsistent key lengths");
    keys[i] = (i == 0 ? std::string() : keys[i - 1].substr(0, shared[i])) + std::string(in.bytes(suffix[i], "key"));
    require(i == 0 || keys[i - 1] < keys[i], prefix + "keys are out of order at entry " + std::to_string(i));
  }

  if (height > 0) {
    std::vector<const DataFile*> children(n);
    std::vector<uint64_t> offsets(n), lengths(n);
    for (uint64_t i = 0; i < n; ++i) children[i] = &data_file(in, files);
    for (uint64_t i = 0; i < n; ++i) offsets[i] = in.varint("child offset");
    for (uint64_t i = 0; i < n; ++i) lengths[i] = in.varint("child length");
    for (uint64_t i = 0; i < n; ++i) {
      read_node({*children[i], offsets[i], lengths[i], height - 1}, key_prefix + keys[i].substr(0, subtree_prefix[i]),
                depth + 1);
    }
    return;
  }

  std::vector<uint64_t> lengths(n);
  std::vector<uint8_t> kinds(n);
  for (uint64_t i = 0; i < n; ++i) lengths[i] = in.varint("value length");
  for (uint64_t i = 0; i < n; ++i) {
    kinds[i] = in.byte("value kind");
    require(kinds[i] <= 1,
            prefix + "entry " + std::to_string(i) + " has unknown value kind " + std::to_string(kinds[i]));
  }
  std::vector<OcdbtValue> values(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (kinds[i] == 1) values[i] = {false, "", data_file(in, files).path, 0, lengths[i]};
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (kinds[i] != 1) continue;
    values[i].offset = in.varint("value offset");
    require(values[i].offset <= kMissing - lengths[i], prefix + "entry " + std::to_string(i) + " has an invalid range");
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (kinds[i] == 0) values[i].bytes = std::string(in.bytes(lengths[i], "inline value"));
  }
  for (uint64_t i = 0; i < n; ++i) values_[key_prefix + keys[i]] = std::move(values[i]);
}

std::vector<std::string> OcdbtStore::keys() const {
  std::vector<std::string> keys;
  for (const auto& entry : values_) keys.push_back(entry.first);
  return keys;
}

const OcdbtValue& OcdbtStore::at(const std::string& key) const {
  const auto it = values_.find(key);
  require(it != values_.end(), prefix() + "key '" + key + "' is not in the store");
  return it->second;
}

std::string OcdbtStore::read(const std::string& key) const {
  const OcdbtValue& value = at(key);
  return value.is_inline ? value.bytes : read_range(*this, value.file, value.offset, value.length, "key '" + key + "'");
}

void OcdbtStore::stream(const std::string& key, const std::function<void(std::string_view)>& sink) const {
  const OcdbtValue& value = at(key);
  if (value.is_inline) {
    sink(value.bytes);
    return;
  }
  const std::string what = "key '" + key + "'";
  InputFile input = open_range(*this, value.file, value.offset, value.length, what);
  std::string piece(std::min(value.length, kStreamPiece), '\0');
  for (uint64_t left = value.length; left > 0;) {
    const uint64_t n = std::min(left, kStreamPiece);
    input.stream.read(piece.data(), std::streamsize(n));
    require(input.stream.good(), prefix(value.file) + "cannot read " + what);
    sink(std::string_view(piece.data(), n));
    left -= n;
  }
}

std::string OcdbtStore::prefix(const std::string& file) const {
  return "orbax checkpoint '" + root_ + (file.empty() ? "'" : "/" + file + "'") + ": ";
}

}  // namespace ttt::io::orbax
