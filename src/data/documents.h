// Text documents on disk: one document per regular file.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt::data {

struct Document {
  std::string name;  // path relative to the input it was found under (the file name for a file input)
  std::string path;  // path to read
  uint64_t size = 0;
};

// The documents of `inputs`: each input is a file (one document) or a directory, searched
// recursively (POSIX opendir; hidden entries and manifest.json skipped). Sorted by name, then
// path, so every run sees the same order. Errors: an input that does not exist, a directory
// without documents.
std::vector<Document> list_documents(const std::vector<std::string>& inputs);

// The bytes of a document. Error naming the file if it cannot be read.
std::string read_document(const Document& document);

// A number in [0, 1) fixed by the name alone (FNV-1a): the same on every machine and run.
double stable_fraction(const std::string& name);

}  // namespace ttt::data
