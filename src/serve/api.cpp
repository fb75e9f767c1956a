#include "serve/api.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/json_input.h"

namespace ttt::serve {
namespace {

using nlohmann::json;

std::string type_name(const json& value) {
  if (value.is_number_integer()) return "an integer";
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_boolean()) return "a boolean";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "null";
}

// io::json_integer, whose error is a 400 naming the field `param`.
int64_t request_integer(const json& value, int64_t min, int64_t max, const std::string& what, const char* param) {
  try {
    return io::json_integer(value, min, max, what);
  } catch (const Error& e) {
    throw bad_request(e.what(), param);
  }
}

// Fields are read through these: a wrong type or range is an ApiError naming the field.
struct Fields {
  const json& body;

  // The field, or null when absent or null (both mean "the default").
  const json* find(const char* name) const {
    const auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  }

  std::optional<int64_t> integer(const char* name, int64_t min, int64_t max) const {
    const json* value = find(name);
    if (!value) return std::nullopt;
    return request_integer(*value, min, max, name, name);
  }

  std::optional<double> number(const char* name, double min, double max, bool min_open = false) const {
    const json* value = find(name);
    if (!value) return std::nullopt;
    const std::string range =
        std::string(min_open ? " above " : " from ") + json(min).dump() + " to " + json(max).dump();
    if (!value->is_number()) throw bad_request(std::string(name) + " must be a number" + range, name);
    const double v = value->get<double>();
    if (!std::isfinite(v) || v < min || (min_open && v == min) || v > max) {
      throw bad_request(std::string(name) + " must be" + range + ", not " + value->dump(), name);
    }
    return v;
  }

  std::optional<bool> boolean(const char* name) const {
    const json* value = find(name);
    if (!value) return std::nullopt;
    if (!value->is_boolean()) throw bad_request(std::string(name) + " must be true or false", name);
    return value->get<bool>();
  }

  std::optional<std::string> string(const char* name) const {
    const json* value = find(name);
    if (!value) return std::nullopt;
    if (!value->is_string()) throw bad_request(std::string(name) + " must be a string", name);
    return value->get<std::string>();
  }

  Prompt prompt(const Limits& limits) const {
    const json* value = find("prompt");
    if (!value) throw bad_request("prompt is required: text or an array of token ids", "prompt");
    // OpenAI's batch of one, ["text"] or [[ids]], is that prompt.
    if (value->is_array() && value->size() == 1 && ((*value)[0].is_string() || (*value)[0].is_array())) {
      value = &(*value)[0];
    }
    Prompt prompt;
    if (value->is_string()) {
      prompt.text = value->get<std::string>();
      if (prompt.text->empty()) throw bad_request("prompt is empty", "prompt");
      return prompt;
    }
    if (!value->is_array() || value->empty()) {
      throw bad_request("prompt must be text or a non-empty array of token ids, not " + type_name(*value), "prompt");
    }
    for (const json& id : *value) {
      if (id.is_string() || id.is_array()) {
        throw bad_request("one prompt per request: give text or one array of token ids", "prompt");
      }
      const std::string what =
          "prompt[" + std::to_string(prompt.ids.size()) + "] (a token id of the model's vocabulary)";
      prompt.ids.push_back(request_integer(id, 0, limits.vocab_size - 1, what, "prompt"));
    }
    return prompt;
  }
};

// The body as a JSON object, or the 400 that says why not.
json parse_object(std::string_view body) {
  json parsed;
  try {
    parsed = io::parse_json_input(body, "the body: ");  // bounded nesting, no NUL, numbers in range
  } catch (const Error& e) {
    throw bad_request(e.what());
  }
  if (!parsed.is_object()) throw bad_request("the body must be a JSON object, not " + type_name(parsed));
  return parsed;
}

template <typename T, typename Parse>
Parsed<T> parsed_or_error(Parse parse) {
  try {
    return parse();
  } catch (const ApiError& error) {
    return error;
  }
}

}  // namespace

std::string error_body(const ApiError& error) {
  const auto null_if_empty = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return json_text({{"error",
                     {{"message", error.message},
                      {"type", error.type},
                      {"param", null_if_empty(error.param)},
                      {"code", null_if_empty(error.code)}}}});
}

ApiError bad_request(const std::string& message, const std::string& param) {
  return {400, message, "invalid_request_error", "invalid_value", param};
}

ApiError server_stopping() { return {503, "the server is stopping", "server_error", "server_stopping", ""}; }

Parsed<CompletionRequest> parse_completion_request(std::string_view body, const Limits& limits) {
  return parsed_or_error<CompletionRequest>([&] {
    const json parsed = parse_object(body);
    const Fields fields{parsed};
    CompletionRequest request;
    request.model = fields.string("model").value_or("");
    request.prompt = fields.prompt(limits);
    request.max_tokens = fields.integer("max_tokens", 1, limits.max_tokens).value_or(request.max_tokens);
    request.max_tokens = std::min(request.max_tokens, limits.max_tokens);
    request.temperature = fields.number("temperature", 0, 2).value_or(request.temperature);
    request.top_p = fields.number("top_p", 0, 1, /*min_open=*/true).value_or(request.top_p);
    request.top_k = fields.integer("top_k", 0, std::numeric_limits<int32_t>::max()).value_or(0);
    request.repetition_penalty = fields.number("repetition_penalty", 0, 100, true).value_or(1.0);
    if (const std::optional<int64_t> seed =
            fields.integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
      request.seed = static_cast<uint64_t>(*seed);
    }
    if (const json* stop = fields.find("stop")) {
      if (stop->is_string()) {
        request.stop.push_back(stop->get<std::string>());
      } else if (stop->is_array() && stop->size() <= 4) {
        for (const json& s : *stop) {
          if (!s.is_string()) throw bad_request("stop must be a string or an array of up to 4 strings", "stop");
          request.stop.push_back(s.get<std::string>());
        }
      } else {
        throw bad_request("stop must be a string or an array of up to 4 strings", "stop");
      }
      for (const std::string& s : request.stop) {
        if (s.empty()) throw bad_request("stop sequences must not be empty", "stop");
      }
    }
    request.stream = fields.boolean("stream").value_or(false);
    if (const json* options = fields.find("stream_options")) {
      if (!options->is_object()) throw bad_request("stream_options must be an object", "stream_options");
      request.include_usage = Fields{*options}.boolean("include_usage").value_or(false);
    }
    request.logprobs = fields.integer("logprobs", 0, 5);
    request.session = fields.string("session");
    request.commit = fields.boolean("commit").value_or(false);
    if (request.commit && !request.session) throw bad_request("commit needs a session", "commit");
    // OpenAI's fields that would change the answer and are not implemented: refused, not ignored.
    fields.integer("n", 1, 1);  // one choice per request
    fields.integer("best_of", 1, 1);
    if (fields.boolean("echo").value_or(false)) throw bad_request("echo is not supported", "echo");
    if (fields.string("suffix")) throw bad_request("suffix is not supported", "suffix");
    if (fields.number("presence_penalty", -2, 2).value_or(0) != 0 ||
        fields.number("frequency_penalty", -2, 2).value_or(0) != 0) {
      throw bad_request("presence_penalty and frequency_penalty are not supported: use repetition_penalty");
    }
    return request;
  });
}

Parsed<SessionRequest> parse_session_request(std::string_view body, const Limits& limits) {
  return parsed_or_error<SessionRequest>([&] {
    const json parsed = parse_object(body);
    return SessionRequest{Fields{parsed}.prompt(limits)};
  });
}

bool valid_session_id(std::string_view id) {
  if (id.size() != 21 || id.substr(0, 5) != "sess-") return false;
  for (const char c : id.substr(5)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string json_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

json completion_json(const std::string& id, int64_t created, const std::string& model, const Choice& choice,
                     const std::optional<Usage>& usage) {
  json out_choice = {{"text", choice.text},
                     {"index", 0},
                     {"logprobs", nullptr},
                     {"finish_reason", choice.finish_reason.empty() ? json(nullptr) : json(choice.finish_reason)}};
  if (choice.logprobs) {
    json tokens = json::array(), logprobs = json::array(), top = json::array();
    for (const TokenLogprob& t : *choice.logprobs) {
      tokens.push_back(t.text);
      logprobs.push_back(t.logprob);
      json alternatives = json::object();
      for (const auto& [text, logprob] : t.top) alternatives[text] = logprob;
      top.push_back(alternatives);
    }
    out_choice["logprobs"] = {{"tokens", tokens}, {"token_logprobs", logprobs}, {"top_logprobs", top}};
  }
  json out = {{"id", id},
              {"object", "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array({out_choice})}};
  if (usage) {
    out["usage"] = {{"prompt_tokens", usage->prompt_tokens},
                    {"completion_tokens", usage->completion_tokens},
                    {"total_tokens", usage->prompt_tokens + usage->completion_tokens}};
  }
  return out;
}

}  // namespace ttt::serve
