// Reading an OCDBT key-value store (tensorstore's "optionally-cooperative distributed B+tree",
// the storage of orbax checkpoints): the manifest, its latest version's B+tree, and values
// stored inline in the tree's leaves or as byte ranges of data files. Format:
// tensorstore/kvstore/ocdbt/index.rst; docs/ARCHITECTURE.md, "Reading orbax checkpoints".
// No libtorch here.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::io::orbax {

// CRC-32C (Castagnoli), the checksum that ends every manifest and tree node.
uint32_t crc32c(std::string_view bytes);

// Where one value lives: inline bytes copied out of its leaf node, or a byte range of a data
// file (a path relative to the store's root).
struct OcdbtValue {
  bool is_inline = true;
  std::string bytes;  // inline values only
  std::string file;
  uint64_t offset = 0;
  uint64_t length = 0;

  uint64_t size() const { return is_inline ? bytes.size() : length; }
};

// An OCDBT store opened read-only at the latest version: every key and where its value is.
// Every manifest and node is checked (magic, length, CRC-32C, bounds against the file it is in)
// as it is read; errors are ttt::Errors naming the file and, where one is at fault, the key.
class OcdbtStore {
 public:
  // Reads `root`/manifest.ocdbt and walks the whole B+tree (only keys and references are kept
  // in memory, never indirect values).
  explicit OcdbtStore(const std::string& root);

  const std::string& root() const { return root_; }
  std::vector<std::string> keys() const;
  bool contains(const std::string& key) const { return values_.count(key) > 0; }
  // The value's location; a key that is not stored is an error naming it.
  const OcdbtValue& at(const std::string& key) const;

  // The whole value in memory (meant for small values such as metadata).
  std::string read(const std::string& key) const;
  // Hands the value to `sink` in pieces of at most a few MiB, read sequentially from its data
  // file; the range is checked against the file's size first.
  void stream(const std::string& key, const std::function<void(std::string_view)>& sink) const;

  // "<root>/<file>: " or "<root>: ", the start of every error message about that file.
  std::string prefix(const std::string& file = "") const;

 private:
  struct NodeRef;
  void read_node(const NodeRef& ref, const std::string& key_prefix, int depth);

  std::string root_;
  uint64_t max_node_bytes_ = 0;
  std::map<std::string, OcdbtValue> values_;
};

}  // namespace ttt::io::orbax
