// Zstandard decompression (libzstd) with the output's size bounded before it is produced: a
// corrupt or hostile stream can never make us allocate or write more than the caller allows.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ttt::io::orbax {

// libzstd's decompression context, freed with it.
struct ZstdContext;
struct ZstdContextDeleter {
  void operator()(ZstdContext* context) const;
};
using ZstdContextPtr = std::unique_ptr<ZstdContext, ZstdContextDeleter>;

// Decompresses a stream fed in pieces straight into a caller's buffer of exactly the size the
// stream must decompress to. Errors start with `prefix`.
class ZstdDecoder {
 public:
  ZstdDecoder(char* out, uint64_t size, std::string prefix);

  // Throws if the data is corrupt or would decompress to more than `size` bytes.
  void feed(std::string_view compressed);
  // Throws unless the stream ended with complete frames exactly filling the buffer.
  void finish() const;

 private:
  ZstdContextPtr context_;
  char* out_;
  uint64_t size_;
  uint64_t produced_ = 0;
  bool frame_open_ = false;
  std::string prefix_;
};

// A whole compressed buffer decompressed into a new string of at most `limit` bytes.
std::string zstd_decompress(std::string_view compressed, uint64_t limit, const std::string& prefix);

}  // namespace ttt::io::orbax
