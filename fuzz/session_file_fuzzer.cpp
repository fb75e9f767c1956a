// Saved session files (infer/session_file.h): a safetensors file whose metadata says where the
// session stands. Everything of Session::restore but making tensors of the state, which the
// unit tests cover (every bit flip of a saved session is refused).
#include "common/error.h"
#include "fuzz_input.h"
#include "infer/session_file.h"
#include "io/safetensors_layout.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size, "session.safetensors");
  try {
    const std::string prefix = io::safetensors_prefix(input.path);
    io::InputFile file = io::open_input_file(input.path, prefix);
    const io::SafetensorsLayout layout = io::read_safetensors_layout(file, prefix);
    std::vector<char> scratch;
    io::read_safetensors_data(
        file, layout,
        [&](const io::SafetensorsEntry& entry) {
          scratch.resize(entry.end - entry.begin);
          return static_cast<void*>(scratch.data());
        },
        prefix);
    const SessionFileHeader header = parse_session_metadata(layout.metadata, layout.checksum.has_value(), input.path);
    fuzz::check(header.position >= static_cast<int64_t>(header.pending.size()), "pending tokens were read");
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  return 0;
}
