#include "io/input_file.h"

#include <sys/stat.h>

#include <cerrno>

#include "common/error.h"

namespace ttt::io {

// POSIX stat rather than std::filesystem: see docs/ARCHITECTURE.md, "Portability notes".
InputFile open_input_file(const std::string& path, const std::string& prefix) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    require(errno != ENOENT && errno != ENOTDIR, prefix + "no such file");
  } else {
    require(S_ISREG(info.st_mode), prefix + "not a regular file");
  }
  InputFile file;
  file.stream.open(path, std::ios::binary);
  require(file.stream.is_open(), prefix + "cannot open the file for reading");
  file.stream.seekg(0, std::ios::end);
  file.size = static_cast<uint64_t>(file.stream.tellg());
  file.stream.seekg(0);
  require(file.stream.good(), prefix + "cannot read the file");
  return file;
}

std::string read_whole_file(const std::string& path, const std::string& prefix) {
  InputFile file = open_input_file(path, prefix);
  std::string bytes(file.size, '\0');
  file.stream.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  require(file.stream.good() || file.size == 0, prefix + "cannot read the file");
  return bytes;
}

}  // namespace ttt::io
