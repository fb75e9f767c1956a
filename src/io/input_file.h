// Opening an input file with the checks every reader needs, as one-line ttt::Errors.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace ttt::io {

struct InputFile {
  std::ifstream stream;  // open, positioned at the start
  uint64_t size = 0;     // bytes
};

// Opens `path` for binary reading; `prefix` starts every error message (it names the file).
// Errors: no such file, not a regular file, unreadable.
InputFile open_input_file(const std::string& path, const std::string& prefix);

// The whole file at `path`, opened as above; a short read is an error too.
std::string read_whole_file(const std::string& path, const std::string& prefix);

}  // namespace ttt::io
