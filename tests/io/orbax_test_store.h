// Writing small orbax checkpoints for tests: an uncompressed OCDBT store (manifest and one
// leaf node, as tensorstore/kvstore/ocdbt/index.rst lays them out) holding zarr v2 arrays,
// and the _METADATA that lists them. Lets tests build what the fixtures do not have
// (known values, edge chunks, other dtypes, broken metadata, missing chunks).
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/orbax/ocdbt.h"
#include "io/paths.h"

namespace ttt::test {

class OrbaxTestStore {
 public:
  // An array's .zarray (edit `metadata` before add_array to break it) and its chunks by key
  // suffix ("0.1"); chunk bytes are stored as given.
  struct Array {
    nlohmann::json metadata;
    std::map<std::string, std::string> chunks;
  };

  // A row-major float32 array cut into chunks of `chunk_shape` (edge chunks padded with 0).
  static Array float_array(const std::vector<int64_t>& shape, const std::vector<int64_t>& chunk_shape,
                           const std::vector<float>& values) {
    Array array;
    array.metadata = {{"zarr_format", 2},   {"shape", shape},        {"chunks", chunk_shape},
                      {"dtype", "<f4"},     {"compressor", nullptr}, {"fill_value", nullptr},
                      {"filters", nullptr}, {"order", "C"},          {"dimension_separator", "."}};
    const size_t rank = shape.size();
    std::vector<int64_t> grid(rank), index(rank, 0);
    for (size_t d = 0; d < rank; ++d) grid[d] = (shape[d] + chunk_shape[d] - 1) / chunk_shape[d];
    int64_t chunk_elements = 1;
    for (const int64_t c : chunk_shape) chunk_elements *= c;
    for (bool more = true; more;) {
      std::vector<float> chunk(chunk_elements, 0.0f);
      for (int64_t e = 0; e < chunk_elements; ++e) {
        // Element e of the chunk, as coordinates in the array.
        int64_t rest = e, flat = 0;
        bool inside = true;
        std::vector<int64_t> at(rank);
        for (size_t d = rank; d-- > 0;) {
          at[d] = index[d] * chunk_shape[d] + rest % chunk_shape[d];
          rest /= chunk_shape[d];
          inside &= at[d] < shape[d];
        }
        for (size_t d = 0; d < rank; ++d) flat = flat * shape[d] + at[d];
        if (inside) chunk[e] = values[flat];
      }
      std::string key;
      for (size_t d = 0; d < rank; ++d) {
        if (d > 0) key += '.';
        key += std::to_string(index[d]);
      }
      array.chunks[key] = std::string(reinterpret_cast<const char*>(chunk.data()), chunk.size() * 4);
      more = false;
      for (size_t d = rank; d-- > 0;) {
        if (++index[d] < grid[d]) {
          more = true;
          break;
        }
        index[d] = 0;
      }
    }
    return array;
  }

  void add_array(const std::string& leaf, const Array& array) {
    leaves_.push_back(leaf);
    values_[leaf + "/.zarray"] = array.metadata.dump();
    for (const auto& [suffix, bytes] : array.chunks) values_[leaf + "/" + suffix] = bytes;
  }
  // A raw key-value pair, for stores that break the rules.
  void put(const std::string& key, const std::string& value) { values_[key] = value; }
  void remove(const std::string& key) { values_.erase(key); }

  // Writes `dir`/_METADATA, manifest.ocdbt and d/ (chunks go to a data file, .zarray
  // documents inline in the leaf node, as orbax stores large chunks and metadata).
  void write(const std::string& dir) const {
    io::make_directories(dir + "/d");
    nlohmann::json tree = nlohmann::json::object();
    for (const std::string& leaf : leaves_) {
      nlohmann::json keys = nlohmann::json::array();
      for (size_t start = 0, dot; start <= leaf.size(); start = dot + 1) {
        dot = std::min(leaf.find('.', start), leaf.size());
        keys.push_back({{"key", leaf.substr(start, dot - start)}, {"key_type", 2}});
      }
      tree["('" + leaf + "',)"] = {{"key_metadata", keys},
                                   {"value_metadata", {{"value_type", "jax.Array"}, {"skip_deserialize", false}}}};
    }
    nlohmann::json metadata = {{"tree_metadata", tree}, {"use_ocdbt", true}, {"use_zarr3", false}};
    std::ofstream(dir + "/_METADATA") << metadata.dump();

    std::string data, keys, lengths, kinds, ids, offsets, inline_values;
    for (const auto& [key, value] : values_) {
      keys += key;
      varint(lengths, value.size());
      const bool indirect = key.size() < 7 || key.compare(key.size() - 7, 7, ".zarray") != 0;
      kinds.push_back(char(indirect));
      if (indirect) {
        varint(ids, 0);
        varint(offsets, data.size());
        data += value;
      } else {
        inline_values += value;
      }
    }
    std::string node;
    node.push_back(0);  // height
    table(node, "d/values");
    varint(node, values_.size());
    for (size_t i = 1; i < values_.size(); ++i) varint(node, 0);  // keys share no prefix
    for (const auto& entry : values_) varint(node, entry.first.size());
    node += keys + lengths + kinds + ids + offsets + inline_values;
    const std::string encoded_node = envelope(0x0cdb20de, node);
    std::ofstream(dir + "/d/values", std::ios::binary) << data;
    std::ofstream(dir + "/d/node", std::ios::binary) << encoded_node;

    std::string manifest(16, '\0');  // uuid
    manifest.push_back(0);           // single-file manifest
    varint(manifest, 64);            // max inline value bytes
    varint(manifest, 1 << 20);       // max decoded node bytes
    manifest.push_back(4);           // version tree arity log2
    varint(manifest, 0);             // no compression
    table(manifest, "d/node");
    varint(manifest, 1);    // one version:
    varint(manifest, 1);    // generation
    manifest.push_back(0);  // root height
    varint(manifest, 0);    // file id
    varint(manifest, 0);    // offset
    varint(manifest, encoded_node.size());
    varint(manifest, values_.size());
    varint(manifest, encoded_node.size());
    varint(manifest, data.size());
    manifest += std::string(8, '\0');  // commit time
    varint(manifest, 0);               // no version tree nodes
    std::ofstream(dir + "/manifest.ocdbt", std::ios::binary) << envelope(0x0cdb3a2a, manifest);
  }

 private:
  static void varint(std::string& out, uint64_t value) {
    do {
      out.push_back(char((value & 0x7f) | (value >= 0x80 ? 0x80 : 0)));
      value >>= 7;
    } while (value);
  }
  // A data file table of one file with no base path.
  static void table(std::string& out, const std::string& path) {
    varint(out, 1);
    varint(out, path.size());
    varint(out, 0);
    out += path;
  }
  static std::string envelope(uint32_t magic, const std::string& body) {
    std::string out;
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(char(magic >> shift));
    const uint64_t length = 12 + 2 + body.size() + 4;
    for (int i = 0; i < 8; ++i) out.push_back(char(length >> (8 * i)));
    out += std::string("\0\0", 2) + body;  // version 0, uncompressed
    const uint32_t crc = io::orbax::crc32c(out);
    for (int i = 0; i < 4; ++i) out.push_back(char(crc >> (8 * i)));
    return out;
  }

  std::vector<std::string> leaves_;
  std::map<std::string, std::string> values_;
};

}  // namespace ttt::test
