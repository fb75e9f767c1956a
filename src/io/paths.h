// Paths and directories by POSIX calls: code linked to libtorch must not use
// std::filesystem's directory operations (docs/ARCHITECTURE.md, portability notes).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ttt::io {

// Creates `path` and its missing parents, as `mkdir -p`; throws ttt::Error naming the path.
void make_directories(const std::string& path);

bool is_directory(const std::string& path);
// Whether anything (a file, a directory, ...) is at `path`.
bool exists(const std::string& path);
// The size of the regular file at `path`; 0 where there is none.
uint64_t file_size_or_zero(const std::string& path);
// Bytes this process may still write on the filesystem that holds `path` (its nearest existing
// parent where `path` does not exist yet); unset where the system cannot tell.
std::optional<uint64_t> free_disk_bytes(const std::string& path);

// The names of the regular files in `dir` that end in `suffix`, sorted; throws ttt::Error
// when `dir` cannot be read.
std::vector<std::string> list_files(const std::string& dir, const std::string& suffix);

// The names of the directories in `dir` (not "." or ".."), sorted; throws ttt::Error when
// `dir` cannot be read.
std::vector<std::string> list_directories(const std::string& dir);

// "a/b/c.u32" -> "c.u32"; "c.u32" -> "c.u32".
std::string file_name(const std::string& path);
// "a/b/c.u32" -> "a/b"; "c.u32" -> ".".
std::string parent_directory(const std::string& path);

}  // namespace ttt::io
