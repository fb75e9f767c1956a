// JSON read from files (configs, file headers, tokenizer files): they come from users and
// the network, so nesting is bounded before any recursive code walks or prints the value.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace ttt::io {

// Deeper than any file of ours or of the tools we read (tokenizer.json nests 6 levels).
inline constexpr int kMaxJsonDepth = 64;

// nlohmann::json::parse(text), whose every failure (malformed JSON, a NUL byte anywhere, a
// number out of range, nesting deeper than kMaxJsonDepth) is a one-line ttt::Error starting with `prefix` (which
// names the file) followed by "not valid JSON (...)" or "JSON nested deeper than ...".
nlohmann::json parse_json_input(std::string_view text, const std::string& prefix);
// The JSON file at `path`, read whole and parsed as above; every error (no such file, unreadable,
// not valid JSON) is a one-line ttt::Error starting with `prefix`.
nlohmann::json read_json_file(const std::string& path, const std::string& prefix);
// parse_json_input, keeping the order of object keys.
nlohmann::ordered_json parse_ordered_json_input(std::string_view text, const std::string& prefix);

// `value` as an integer from lo to hi, the way every reader takes integers out of JSON: nlohmann's
// get<int64_t>() of a float out of range is undefined behaviour, and of an unsigned above INT64_MAX
// wraps. Anything else (2.5, 1e300, "3", true, null, an integer out of range) is a one-line
// ttt::Error "<what> must be an integer from <lo> to <hi>, got <value>" (a bound that is the
// int64 limit goes unsaid), so `what` names the file and key.
int64_t json_integer(const nlohmann::json& value, int64_t lo, int64_t hi, const std::string& what);

}  // namespace ttt::io
