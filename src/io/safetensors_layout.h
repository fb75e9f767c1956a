// The torch-free layer of safetensors files (https://github.com/huggingface/safetensors): an
// 8-byte little-endian header length, a JSON header, then the raw tensor bytes. Here the header
// is validated and the bytes are moved; io/safetensors.h makes torch tensors of them.
//
// Integrity: files we write carry in __metadata__[kChecksumKey] the XXH3-64 of the header
// (canonical JSON without that key) followed by the whole data buffer. Readers verify it when
// present and hide the key from the metadata they return; other tools see one more string.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/input_file.h"

namespace ttt::io {

inline constexpr const char* kChecksumKey = "checksum_xxh3_64";
// As the reference library: a larger header is refused before it is read.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One tensor's header entry, validated against the data buffer's size.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "F64", "BF16" or "F16"
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets in the data buffer
  uint64_t end = 0;
};

struct SafetensorsLayout {
  std::vector<SafetensorsEntry> entries;        // in the order of their bytes in the file
  std::map<std::string, std::string> metadata;  // "__metadata__" without the checksum
  std::optional<uint64_t> checksum;             // as stored, verified by read_safetensors_data
  std::string canonical_header;                 // the header as the checksum covers it
  uint64_t data_start = 0;                      // file offset of the data buffer
  uint64_t data_size = 0;                       // bytes of it (to the end of the file)
};

// "safetensors '<path>': ", which starts every error about the file.
std::string safetensors_prefix(const std::string& path);
// prefix + "tensor <name as JSON>: ", which starts every error about one tensor.
std::string safetensors_tensor_prefix(const std::string& prefix, const std::string& name);
// The dtypes, for error messages.
inline constexpr const char* kSafetensorsSupported = "supported: F32, F64, BF16, F16";

// Reads and validates the header of `input` (positioned at the start). Any malformed input is
// a ttt::Error starting with `prefix` and naming the tensor at fault; every size and offset is
// checked against the file's size before anything is allocated. Only F32, F64, BF16 and F16.
SafetensorsLayout read_safetensors_layout(InputFile& input, const std::string& prefix);

// Reads the data buffer: each tensor's end - begin bytes into destination(entry), in file
// order, and, where the file has a checksum, verifies it (a mismatch is a ttt::Error saying
// the file is corrupted).
void read_safetensors_data(InputFile& input, const SafetensorsLayout& layout,
                           const std::function<void*(const SafetensorsEntry&)>& destination, const std::string& prefix);

// For our own formats (sessions, training checkpoints): a file of a version written with
// checksums must have had one (a missing one is corruption, a ttt::Error naming `path`);
// older files without one load, with a warning on stderr that they cannot be verified.
void check_integrity(bool checksum_verified, const std::string& path, bool written_with_checksum);

// Bytes per element of a supported dtype name; 0 for any other.
uint64_t safetensors_dtype_size(const std::string& dtype);

// One tensor of a file written by SafetensorsWriter: its header entry, known before its bytes.
struct TensorLayout {
  std::string name;
  std::string dtype;  // "F32", "F64", "BF16" or "F16"
  std::vector<int64_t> shape;
};

// Writes a safetensors file whose tensors are known before their data, so that large files
// stream through memory: the header first, then the bytes of each tensor in `layouts` order, in
// pieces of any size. Atomic (a temporary file renamed over `path`, so a crash never leaves a
// torn file); commit() checks that every byte arrived and fills in the checksum.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<TensorLayout>& layouts,
                    const std::map<std::string, std::string>& metadata = {});

  void write(const void* data, uint64_t size);
  void commit();

 private:
  std::string prefix_;
  AtomicFile file_;
  Checksum checksum_;
  uint64_t checksum_offset_ = 0;  // where the checksum's placeholder digits are in the file
  uint64_t data_bytes_ = 0;
  uint64_t written_ = 0;
};

}  // namespace ttt::io
