// Checksums of what we persist (XXH3-64, from xxHash): fast enough to cover every byte of a
// checkpoint, and strong enough that no bit flip or torn write goes unnoticed.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace ttt::io {

// XXH3-64 over bytes fed in any number of pieces.
class Checksum {
 public:
  Checksum();
  ~Checksum();
  Checksum(const Checksum&) = delete;
  Checksum& operator=(const Checksum&) = delete;

  void update(const void* data, uint64_t size);
  uint64_t digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// 16 lowercase hex digits, and back (nothing for anything else).
std::string checksum_text(uint64_t checksum);
std::optional<uint64_t> parse_checksum_text(const std::string& text);

}  // namespace ttt::io
