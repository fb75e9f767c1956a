#include "io/frames.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace ttt::io {
namespace {

void write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t wrote = ::write(fd, data, size);
    if (wrote < 0 && errno == EINTR) continue;
    require(wrote > 0, std::string("cannot write to the encoder: ") + std::strerror(errno));
    data += wrote;
    size -= static_cast<size_t>(wrote);
  }
}

// Bytes read before end of file (fewer than `size` only there).
size_t read_all(int fd, char* data, size_t size) {
  size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, data + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    require(n >= 0, std::string("cannot read from the encoder: ") + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return got;
}

}  // namespace

void write_frame(int fd, std::string_view bytes) {
  require(bytes.size() <= UINT32_MAX, "a frame of more than 4 GiB");
  unsigned char header[4];
  for (int i = 0; i < 4; ++i) header[i] = static_cast<unsigned char>(bytes.size() >> (8 * i));
  write_all(fd, reinterpret_cast<const char*>(header), sizeof header);
  write_all(fd, bytes.data(), bytes.size());
}

std::optional<std::string> read_frame(int fd) {
  unsigned char header[4];
  const size_t got = read_all(fd, reinterpret_cast<char*>(header), sizeof header);
  if (got == 0) return std::nullopt;
  require(got == sizeof header, "a torn frame from the encoder");
  uint32_t size = 0;
  for (int i = 0; i < 4; ++i) size |= static_cast<uint32_t>(header[i]) << (8 * i);
  std::string bytes(size, '\0');
  require(read_all(fd, bytes.data(), size) == size, "a torn frame from the encoder");
  return bytes;
}

std::string encode_reply(const std::vector<uint32_t>& ids) {
  std::string reply(1 + 4 * ids.size(), 'O');
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int b = 0; b < 4; ++b) reply[1 + 4 * i + b] = static_cast<char>(ids[i] >> (8 * b));
  }
  return reply;
}

std::string encode_error_reply(const std::string& message) { return "E" + message; }

std::vector<int64_t> decode_reply(std::string_view reply) {
  require(!reply.empty(), "an empty reply from the encoder");
  if (reply[0] == 'E') throw Error(std::string(reply.substr(1)));
  require(reply[0] == 'O' && reply.size() % 4 == 1, "a malformed reply from the encoder");
  std::vector<int64_t> ids((reply.size() - 1) / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint32_t id = 0;
    for (int b = 0; b < 4; ++b)
      id |= static_cast<uint32_t>(static_cast<unsigned char>(reply[1 + 4 * i + b])) << (8 * b);
    ids[i] = id;
  }
  return ids;
}

}  // namespace ttt::io
