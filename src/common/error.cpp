#include "common/error.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#include "common/device_allocator.h"

namespace ttt {

std::string describe(const std::exception& e) {
  // libtorch's own switch for C++ backtraces: whoever sets it wants the whole story.
  if (const char* traces = std::getenv("TORCH_SHOW_CPP_STACKTRACES"); traces && std::strcmp(traces, "1") == 0) {
    return e.what();
  }
  std::string text;
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) {
    text = torch_error->what_without_backtrace();
  } else {
    text = e.what();
  }
  // Keep the first line only: libtorch appends context and traces on later lines.
  if (const auto newline = text.find('\n'); newline != std::string::npos) text.resize(newline);
  // PyTorch's out-of-memory text ends by advising expandable segments, which `ttt` already asks
  // for (common/device_allocator.h): the advice goes where they are on.
  if (const auto advice = text.find(" If reserved but unallocated memory is large try setting");
      advice != std::string::npos && expandable_device_segments_asked()) {
    text.resize(advice);
  }
  return text;
}

}  // namespace ttt
