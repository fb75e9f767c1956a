#include "io/paths.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace ttt::io {

void make_directories(const std::string& path) {
  require(!path.empty(), "no directory given");
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      throw Error(prefix + ": cannot create the directory: " + std::strerror(errno));
    }
    if (slash == std::string::npos) break;
  }
  require(is_directory(path), path + ": not a directory");
}

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

uint64_t file_size_or_zero(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) ? static_cast<uint64_t>(info.st_size) : 0;
}

std::optional<uint64_t> free_disk_bytes(const std::string& path) {
  std::string existing = path.empty() ? "." : path;
  while (!exists(existing) && existing != "." && existing != "/") existing = parent_directory(existing);
  struct statvfs info {};
  // Some network and FUSE filesystems report no blocks at all: they cannot tell.
  if (::statvfs(existing.c_str(), &info) != 0 || info.f_blocks == 0) return std::nullopt;
  // Root may also write the blocks kept back for it.
  return static_cast<uint64_t>(::geteuid() == 0 ? info.f_bfree : info.f_bavail) * info.f_frsize;
}

namespace {

// The sorted names of the entries in `dir` for which `keep(name, stat)` holds.
template <typename Keep>
std::vector<std::string> list_entries(const std::string& dir, Keep keep) {
  DIR* handle = ::opendir(dir.c_str());
  require(handle != nullptr, dir + ": cannot read the directory: " + std::strerror(errno));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    struct stat info {};
    if (name != "." && name != ".." && ::stat((dir + "/" + name).c_str(), &info) == 0 && keep(name, info)) {
      names.push_back(name);
    }
  }
  ::closedir(handle);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

std::vector<std::string> list_files(const std::string& dir, const std::string& suffix) {
  return list_entries(dir, [&](const std::string& name, const struct stat& info) {
    return S_ISREG(info.st_mode) && name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  });
}

std::vector<std::string> list_directories(const std::string& dir) {
  return list_entries(dir, [](const std::string&, const struct stat& info) { return S_ISDIR(info.st_mode); });
}

std::string file_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string parent_directory(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace ttt::io
