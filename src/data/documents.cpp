#include "data/documents.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "io/input_file.h"

namespace ttt::data {
namespace {

void walk(const std::string& dir, const std::string& relative, std::vector<Document>& out) {
  DIR* handle = ::opendir(dir.c_str());
  require(handle != nullptr, "cannot read directory '" + dir + "': " + std::strerror(errno));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    if (name.empty() || name[0] == '.') continue;  // ".", "..", hidden files
    names.push_back(name);
  }
  ::closedir(handle);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    const std::string rel = relative.empty() ? name : relative + "/" + name;
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0) continue;  // a dangling link
    if (S_ISDIR(info.st_mode)) {
      walk(path, rel, out);
    } else if (S_ISREG(info.st_mode) && !(relative.empty() && name == "manifest.json")) {
      out.push_back({rel, path, uint64_t(info.st_size)});
    }
  }
}

}  // namespace

std::vector<Document> list_documents(const std::vector<std::string>& inputs) {
  require(!inputs.empty(), "no input documents given");
  std::vector<Document> documents;
  for (std::string input : inputs) {
    while (input.size() > 1 && input.back() == '/') input.pop_back();
    struct stat info {};
    require(::stat(input.c_str(), &info) == 0, "input '" + input + "': no such file or directory");
    if (S_ISDIR(info.st_mode)) {
      const size_t before = documents.size();
      walk(input, "", documents);
      require(documents.size() > before, "input '" + input + "': no documents in the directory");
    } else {
      require(S_ISREG(info.st_mode), "input '" + input + "': not a regular file or a directory");
      const size_t slash = input.rfind('/');
      documents.push_back({slash == std::string::npos ? input : input.substr(slash + 1), input, uint64_t(info.st_size)});
    }
  }
  std::stable_sort(documents.begin(), documents.end(), [](const Document& a, const Document& b) {
    return a.name != b.name ? a.name < b.name : a.path < b.path;
  });
  return documents;
}

std::string read_document(const Document& document) {
  const std::string prefix = "document '" + document.path + "': ";
  io::InputFile file = io::open_input_file(document.path, prefix);
  std::string bytes(file.size, '\0');
  if (file.size > 0) {
    file.stream.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    require(file.stream.good(), prefix + "cannot read the file");
  }
  return bytes;
}

double stable_fraction(const std::string& name) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : name) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  // Mix the bits (splitmix64's finaliser) so that similar names spread over [0, 1).
  hash ^= hash >> 30;
  hash *= 0xbf58476d1ce4e5b9ull;
  hash ^= hash >> 27;
  hash *= 0x94d049bb133111ebull;
  hash ^= hash >> 31;
  return double(hash >> 11) / double(uint64_t(1) << 53);
}

}  // namespace ttt::data
