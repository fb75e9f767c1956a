// OCDBT stores (io/orbax/ocdbt.h), the storage of orbax checkpoints: the input is the store's
// manifest.ocdbt (its version tree and B+tree nodes inline or in files that are not there).
// Every key that opens must read.
#include <sys/stat.h>

#include "common/error.h"
#include "fuzz_input.h"
#include "io/orbax/ocdbt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ttt;
  static const fuzz::ScratchFile store_dir("ocdbt");  // a folder, empty again once the input goes
  ::mkdir(store_dir.path.c_str(), 0755);
  const fuzz::InputFile manifest(data, size, "ocdbt/manifest.ocdbt");
  try {
    const io::orbax::OcdbtStore store(store_dir.path);
    for (const std::string& key : store.keys()) {
      if (store.at(key).is_inline) fuzz::check(store.read(key).size() == store.at(key).size(), "inline values read");
    }
  } catch (const Error&) {
    return 0;  // refused with a one-line error: what malformed input must get
  }
  return 0;
}
