#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "io/paths.h"

namespace ttt::io {

AtomicFile::AtomicFile(const std::string& path, std::string prefix) : path_(path), prefix_(std::move(prefix)) {
  // pid and counter keep concurrent writers of the same path off each other's temporaries.
  static std::atomic<uint64_t> counter{0};
  temp_path_ = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create temporary file '" + temp_path_ + "'");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, uint64_t size) {
  const char* cursor = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd_, cursor, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail("cannot write temporary file '" + temp_path_ + "'");
    }
    cursor += written;
    size -= uint64_t(written);
    written_ += uint64_t(written);
  }
#ifdef __linux__
  // Start writing large files to disk as they grow, so that commit()'s fsync does not wait for
  // all of it at the end: a 12 GB conversion then overlaps its reading with the disk's writing.
  constexpr uint64_t kFlushEvery = 64ull << 20;
  if (written_ - flushed_ >= kFlushEvery) {
    ::sync_file_range(fd_, off64_t(flushed_), off64_t(written_ - flushed_), SYNC_FILE_RANGE_WRITE);
    flushed_ = written_;
  }
#endif
}

void AtomicFile::write_at(uint64_t offset, const void* data, uint64_t size) {
  require(offset + size <= written_, prefix_ + "internal: overwriting bytes not yet written");
  if (::pwrite(fd_, data, size, off_t(offset)) != ssize_t(size)) {
    fail("cannot write temporary file '" + temp_path_ + "'");
  }
}

void AtomicFile::commit() {
  // Sync before the rename, or a power loss could leave the new name on unwritten blocks.
  if (::fsync(fd_) != 0) fail("cannot sync temporary file '" + temp_path_ + "'");
  if (::close(std::exchange(fd_, -1)) != 0) fail("cannot close temporary file '" + temp_path_ + "'");
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail("cannot rename '" + temp_path_ + "' over it");
  committed_ = true;
}

void AtomicFile::fail(const std::string& what) const { throw Error(prefix_ + what + ": " + std::strerror(errno)); }

void remove_stale_temporaries(const std::string& path) {
  const std::string prefix = file_name(path) + ".tmp.";
  for (const std::string& name : list_files(parent_directory(path), "")) {
    if (name.rfind(prefix, 0) == 0) ::unlink((parent_directory(path) + "/" + name).c_str());
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile out(path, "'" + path + "': ");
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace ttt::io
