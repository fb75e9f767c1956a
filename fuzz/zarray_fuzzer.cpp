// zarr v2 array metadata (.zarray, io/orbax/zarr.h), as orbax stores every array of a
// checkpoint. What parses must describe an array whose sizes do not overflow.
#include <string_view>

#include "common/error.h"
#include "fuzz_input.h"
#include "io/orbax/zarr.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  try {
    const io::orbax::ZarrMetadata metadata =
        io::orbax::parse_zarray(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/.zarray: ");
    fuzz::check(metadata.shape.size() == metadata.chunks.size(), "chunks have the array's rank");
    (void)metadata.elements();
    (void)metadata.chunk_bytes();
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  return 0;
}
