#include "io/json_input.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/input_file.h"

namespace ttt::io {
namespace {

// The parser's message quotes the bytes it stopped at, which need not be UTF-8 or printable:
// those become \xHH, so that the one-line error is text wherever it goes (a terminal, JSON).
std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      constexpr char kHex[] = "0123456789ABCDEF";
      out += {'\\', 'x', kHex[byte >> 4], kHex[byte & 15]};
    }
  }
  return out;
}

template <typename Json>
Json parse_bounded(std::string_view text, const std::string& prefix) {
  // The callback sees every object and array as it opens, before anything is built below it.
  const typename Json::parser_callback_t bound_depth = [&](int depth, typename Json::parse_event_t event, Json&) {
    const bool opens = event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start;
    require(!opens || depth < kMaxJsonDepth,
            prefix + "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  // nlohmann's parser takes a NUL byte for the end of the text and ignores what follows it.
  const size_t nul = text.find('\0');
  require(nul == std::string_view::npos, prefix + "not valid JSON (a NUL byte at byte " + std::to_string(nul) + ")");
  try {
    return Json::parse(text, bound_depth);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e999
    throw Error(prefix + "not valid JSON (" + printable(e.what()) + ")");
  }
}

// "an integer from lo to hi", leaving out a bound that is no bound.
std::string integer_range(int64_t lo, int64_t hi) {
  constexpr int64_t kLowest = std::numeric_limits<int64_t>::min(), kHighest = std::numeric_limits<int64_t>::max();
  if (lo == kLowest && hi == kHighest) return "an integer";
  if (hi == kHighest) return "an integer >= " + std::to_string(lo);
  if (lo == kLowest) return "an integer <= " + std::to_string(hi);
  return "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
}

// A JSON value for an error message, cut short so that one bad value cannot flood it.
std::string excerpt(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

}  // namespace

nlohmann::json parse_json_input(std::string_view text, const std::string& prefix) {
  return parse_bounded<nlohmann::json>(text, prefix);
}

nlohmann::json read_json_file(const std::string& path, const std::string& prefix) {
  return parse_json_input(read_whole_file(path, prefix), prefix);
}

nlohmann::ordered_json parse_ordered_json_input(std::string_view text, const std::string& prefix) {
  return parse_bounded<nlohmann::ordered_json>(text, prefix);
}

int64_t json_integer(const nlohmann::json& value, int64_t lo, int64_t hi, const std::string& what) {
  const bool fits_int64 =
      value.is_number_integer() &&
      !(value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()));
  if (fits_int64) {
    const int64_t integer = value.get<int64_t>();
    if (integer >= lo && integer <= hi) return integer;
  }
  throw Error(what + " must be " + integer_range(lo, hi) + ", got " + excerpt(value));
}

}  // namespace ttt::io
