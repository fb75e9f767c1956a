// The HTTP API of `ttt serve` as data: request bodies parsed and checked into typed requests
// or OpenAI-shaped errors, and the JSON of responses. Pure functions (no sockets, no
// libtorch): unit-tested and fuzzed on their own.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ttt::serve {

// An error as OpenAI's API reports it: HTTP status and {"error": {"message", "type", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string code;   // machine-readable; "" becomes null
  std::string param;  // the request field at fault; "" becomes null
};
std::string error_body(const ApiError& error);
ApiError bad_request(const std::string& message, const std::string& param = "");
ApiError server_stopping();  // 503

template <typename T>
using Parsed = std::variant<T, ApiError>;

// What the model accepts: ids in [0, vocab_size), at most max_tokens generated per request.
struct Limits {
  int64_t vocab_size = 0;
  int64_t max_tokens = 0;
};

// A prompt: text (tokenized by the server) or token ids (checked against the vocabulary).
struct Prompt {
  std::optional<std::string> text;
  std::vector<int64_t> ids;  // when there is no text
};

// POST /v1/completions. Defaults are OpenAI's; top_k, repetition_penalty, session and commit
// are ours.
struct CompletionRequest {
  std::string model;
  Prompt prompt;
  int64_t max_tokens = 16;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  double repetition_penalty = 1.0;
  std::optional<uint64_t> seed;  // none: the server draws one
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage: a last chunk with the usage
  std::optional<int64_t> logprobs;  // how many alternatives per token (0-5), with the chosen one's
  std::optional<std::string> session;
  bool commit = false;  // append the exchange to the session
};

// POST /v1/sessions and /v1/sessions/{id}/append.
struct SessionRequest {
  Prompt prompt;
};

// Any body: malformed JSON (invalid UTF-8 included), known fields of the wrong type, values out
// of range and token ids outside the vocabulary are 400s; unknown fields are ignored.
Parsed<CompletionRequest> parse_completion_request(std::string_view body, const Limits& limits);
Parsed<SessionRequest> parse_session_request(std::string_view body, const Limits& limits);

// A session id as the server makes them ("sess-" and hex); anything else in a path is a 404
// without touching the disk.
bool valid_session_id(std::string_view id);

// Bytes as JSON text: invalid UTF-8 (a token may end inside a character) becomes U+FFFD.
std::string json_text(const nlohmann::json& value);

// Per generated token, when logprobs were asked for.
struct TokenLogprob {
  std::string text;
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;  // alternatives, most likely first
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// One choice of a completion (whole, or a streamed chunk of it: finish_reason "" is null).
struct Choice {
  std::string text;
  std::string finish_reason;
  std::optional<std::vector<TokenLogprob>> logprobs;
};

// {"id", "object": "text_completion", "created", "model", "choices": [...], "usage"}; a streamed
// chunk has no usage unless given.
nlohmann::json completion_json(const std::string& id, int64_t created, const std::string& model, const Choice& choice,
                               const std::optional<Usage>& usage);

}  // namespace ttt::serve
