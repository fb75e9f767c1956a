// Writing a file so that a crash or an error never leaves a torn one behind.
#pragma once
#include <cstdint>
#include <string>

namespace ttt::io {

// A temporary file beside the target that commit() renames over it. Until then the target is
// untouched, and if commit() is never reached (an error, an exception) the temporary is removed.
// Errors are ttt::Errors that start with `prefix` (which names the file).
class AtomicFile {
 public:
  AtomicFile(const std::string& path, std::string prefix);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  void write(const void* data, uint64_t size);
  // Overwrites bytes already written (a value known only at the end, such as a checksum).
  void write_at(uint64_t offset, const void* data, uint64_t size);
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::string prefix_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;  // bytes so far
  uint64_t flushed_ = 0;  // bytes whose writeback has been started
};

// Removes the temporaries of AtomicFiles of `path` that a killed process left behind (only
// where no other process may be writing `path`, e.g. a run directory being resumed).
void remove_stale_temporaries(const std::string& path);

// Writes `text` to `path` through an AtomicFile.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace ttt::io
