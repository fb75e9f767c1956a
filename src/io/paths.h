// Paths and directories by POSIX calls: code linked to libtorch must not use
// std::filesystem's directory operations (docs/ARCHITECTURE.md, portability notes).
#pragma once
#include <string>
#include <vector>

namespace ttt::io {

// Creates `path` and its missing parents, as `mkdir -p`; throws ttt::Error naming the path.
void make_directories(const std::string& path);

bool is_directory(const std::string& path);
// Whether anything (a file, a directory, ...) is at `path`.
bool exists(const std::string& path);

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
