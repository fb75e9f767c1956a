#include "infer/session_file.h"

#include <charconv>

#include "common/error.h"
#include "io/safetensors_layout.h"

namespace ttt {
namespace {

// A whole non-negative decimal integer, nothing before or after it.
bool parse_count(std::string_view text, int64_t& value) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size() && value >= 0;
}

}  // namespace

SessionFileHeader parse_session_metadata(const std::map<std::string, std::string>& metadata, bool checksum_verified,
                                         const std::string& path) {
  const auto meta = [&](const std::string& key) {
    const auto it = metadata.find(key);
    require(it != metadata.end(), path + ": not a saved session (no \"" + key + "\" in its metadata)");
    return it->second;
  };
  const std::string format = meta("format");
  require(format == kSessionFormat || format == kSessionFormatWithoutChecksum,
          path + ": not a saved session (format " + format + ")");
  io::check_integrity(checksum_verified, path, format == kSessionFormat);

  SessionFileHeader header;
  header.config_json = meta("config");
  header.model_fingerprint = meta("model_fingerprint");
  const auto count = [&](const std::string& key) {
    int64_t value = 0;
    require(parse_count(meta(key), value),
            path + ": a damaged session file: \"" + key + "\" is not a non-negative integer");
    return value;
  };
  header.position = count("position");
  header.inner_steps = count("inner_steps");
  const std::string pending = meta("pending");
  for (size_t at = 0; at < pending.size();) {
    const size_t end = std::min(pending.find(' ', at), pending.size());
    int64_t id = 0;
    require(parse_count(std::string_view(pending).substr(at, end - at), id),
            path + ": a damaged session file: \"pending\" is not a list of token ids");
    header.pending.push_back(id);
    at = end + 1;
  }
  require(static_cast<int64_t>(header.pending.size()) <= header.position,
          path + ": a damaged session file: more pending tokens than tokens read");
  return header;
}

}  // namespace ttt
