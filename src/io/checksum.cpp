#include "io/checksum.h"

#include <cstdio>

// Header-only use: no library to link, and the GPU machine builds with the header alone
// (scripts/pack_deps.sh copies it into .deps/include).
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace ttt::io {

struct Checksum::State {
  XXH3_state_t xxh3;
};

Checksum::Checksum() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->xxh3); }

Checksum::~Checksum() = default;

void Checksum::update(const void* data, uint64_t size) { XXH3_64bits_update(&state_->xxh3, data, size); }

uint64_t Checksum::digest() const { return XXH3_64bits_digest(&state_->xxh3); }

std::string checksum_text(uint64_t checksum) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(checksum));
  return text;
}

std::optional<uint64_t> parse_checksum_text(const std::string& text) {
  if (text.size() != 16) return std::nullopt;
  uint64_t value = 0;
  for (const char c : text) {
    const bool digit = c >= '0' && c <= '9', letter = c >= 'a' && c <= 'f';
    if (!digit && !letter) return std::nullopt;
    value = value << 4 | static_cast<uint64_t>(digit ? c - '0' : c - 'a' + 10);
  }
  return value;
}

}  // namespace ttt::io
