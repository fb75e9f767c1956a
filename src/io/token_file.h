// Token files: raw little-endian uint32 token ids, no header.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt::io {

// Errors (ttt::Error naming the path): missing or unreadable file, empty file, size not a
// multiple of 4 bytes.
std::vector<int64_t> read_token_file(const std::string& path);

// Error if a token is outside [0, 2^32); nothing is written then.
void write_token_file(const std::string& path, const std::vector<int64_t>& tokens);

}  // namespace ttt::io
