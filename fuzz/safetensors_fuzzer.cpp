// safetensors files (io/safetensors_layout.h): the header, the data buffer, the checksum; a
// file that reads must write back (SafetensorsWriter) to one that reads the same.
#include <map>
#include <vector>

#include "common/error.h"
#include "fuzz_input.h"
#include "io/safetensors_layout.h"

namespace {

struct Read {
  ttt::io::SafetensorsLayout layout;
  std::map<std::string, std::vector<char>> data;
};

Read read(const std::string& path) {
  const std::string prefix = ttt::io::safetensors_prefix(path);
  ttt::io::InputFile input = ttt::io::open_input_file(path, prefix);
  Read result{ttt::io::read_safetensors_layout(input, prefix), {}};
  ttt::io::read_safetensors_data(
      input, result.layout,
      [&](const ttt::io::SafetensorsEntry& entry) {
        std::vector<char>& bytes = result.data[entry.name];
        bytes.resize(entry.end - entry.begin);
        return static_cast<void*>(bytes.data());
      },
      prefix);
  return result;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  const fuzz::InputFile input(data, size);
  Read first;
  try {
    first = read(input.path);
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  std::vector<io::TensorLayout> layouts;
  for (const io::SafetensorsEntry& entry : first.layout.entries)
    layouts.push_back({entry.name, entry.dtype, entry.shape});
  const fuzz::ScratchFile copy("copy.safetensors");
  try {
    io::SafetensorsWriter out(copy.path, layouts, first.layout.metadata);
    for (const io::SafetensorsEntry& entry : first.layout.entries) {
      out.write(first.data[entry.name].data(), first.data[entry.name].size());
    }
    out.commit();
  } catch (const Error&) {
    return 0;  // names or metadata that are not valid UTF-8 cannot be written back
  }
  const Read second = read(copy.path);
  fuzz::check(second.layout.metadata == first.layout.metadata, "metadata survives a round trip");
  fuzz::check(second.data == first.data, "tensor bytes survive a round trip");
  fuzz::check(second.layout.checksum.has_value(), "written files carry a checksum");
  return 0;
}
