// `ttt serve`'s request bodies (serve/api.h), as they arrive from the network: every body is
// a request or an OpenAI-shaped error, never an exception, and an error's body is JSON.
#include <nlohmann/json.hpp>

#include <string_view>
#include <variant>

#include "fuzz_input.h"
#include "serve/api.h"

namespace {

template <typename Request>
void check_outcome(const ttt::serve::Parsed<Request>& outcome, const ttt::serve::Limits& limits) {
  if (const auto* error = std::get_if<ttt::serve::ApiError>(&outcome)) {
    ttt::fuzz::check(error->status >= 400 && error->status < 500, "a refused body is a client error");
    ttt::fuzz::check(nlohmann::json::accept(ttt::serve::error_body(*error)), "an error's body is JSON");
    return;
  }
  for (const int64_t id : std::get<Request>(outcome).prompt.ids) {
    ttt::fuzz::check(id >= 0 && id < limits.vocab_size, "accepted ids are in the vocabulary");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const ttt::serve::Limits limits{.vocab_size = 1000, .max_tokens = 256};
  check_outcome(ttt::serve::parse_completion_request(body, limits), limits);
  check_outcome(ttt::serve::parse_session_request(body, limits), limits);
  return 0;
}
