#include "io/token_file.h"

#include <bit>
#include <fstream>
#include <limits>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/input_file.h"

namespace ttt::io {
namespace {

// Token ids are stored little-endian and copied as they are.
static_assert(std::endian::native == std::endian::little, "token file I/O assumes a little-endian host");

std::string prefix_for(const std::string& path) { return "token file '" + path + "': "; }

}  // namespace

std::vector<int64_t> read_token_file(const std::string& path) {
  const std::string prefix = prefix_for(path);
  InputFile file = open_input_file(path, prefix);
  std::ifstream& in = file.stream;
  const uint64_t size = file.size;
  require(size > 0, prefix + "the file is empty");
  require(size % 4 == 0, prefix + "size " + std::to_string(size) +
                             " bytes is not a multiple of 4 (tokens are uint32)");

  std::vector<uint32_t> ids(size / 4);
  in.read(reinterpret_cast<char*>(ids.data()), std::streamsize(size));
  require(in.good(), prefix + "cannot read the file");
  return {ids.begin(), ids.end()};
}

void write_token_file(const std::string& path, const std::vector<int64_t>& tokens) {
  const std::string prefix = prefix_for(path);
  std::vector<uint32_t> ids(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    // Checked before the file is opened, so a bad token leaves nothing behind.
    if (tokens[i] < 0 || tokens[i] > int64_t(std::numeric_limits<uint32_t>::max())) {
      throw Error(prefix + "token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                  " is outside [0, 2^32)");
    }
    ids[i] = uint32_t(tokens[i]);
  }
  AtomicFile out(path, prefix);
  out.write(ids.data(), ids.size() * 4);
  out.commit();
}

}  // namespace ttt::io
