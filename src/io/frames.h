// Length-prefixed messages over pipes: how `ttt serve` asks its `ttt-data tokenize --frames`
// coprocess to encode text (libtorch and the tokenizers never share a process, see
// apps/ttt/data_main.cpp). A frame is a little-endian uint32 byte count, then the bytes.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::io {

// Writes one frame; throws ttt::Error when the other end is gone.
void write_frame(int fd, std::string_view bytes);
// Reads one frame; nullopt at end of file before it; throws ttt::Error on a torn frame.
std::optional<std::string> read_frame(int fd);

// The encoder's answer: 'O' and the ids as little-endian uint32, or 'E' and a one-line error.
std::string encode_reply(const std::vector<uint32_t>& ids);
std::string encode_error_reply(const std::string& message);
// The ids of a reply; throws ttt::Error with the encoder's message for an error reply.
std::vector<int64_t> decode_reply(std::string_view reply);

}  // namespace ttt::io
