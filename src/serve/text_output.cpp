#include "serve/text_output.h"

#include <algorithm>

namespace ttt::serve {
namespace {

// The bytes a UTF-8 character that starts with `lead` takes (1 for bytes that start none).
size_t utf8_length(unsigned char lead) {
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  if (lead >= 0xE0) return lead <= 0xEF ? 3 : 1;
  if (lead >= 0xC2) return 2;
  return 1;
}

// Where `text[0, end)` may be cut without splitting a character that is still being completed.
size_t character_boundary(const std::string& text, size_t end) {
  for (size_t back = 1; back <= std::min<size_t>(3, end); ++back) {
    const auto c = static_cast<unsigned char>(text[end - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    return utf8_length(c) > back ? end - back : end;
  }
  return end;
}

}  // namespace

TextOutput::TextOutput(std::vector<std::string> stop) : stop_(std::move(stop)) {}

std::string TextOutput::add(std::string_view bytes) {
  if (stopped_) return "";
  held_.append(bytes);
  // Text already sent holds no stop's beginning (it was held back), so any stop lies in held_.
  size_t first = std::string::npos;
  for (const std::string& s : stop_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail that a stop sequence begins with.
  size_t keep = 0;
  for (const std::string& s : stop_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  const size_t cut = character_boundary(held_, held_.size() - keep);
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string TextOutput::finish() {
  std::string out = stopped_ ? "" : held_;
  held_.clear();
  return out;
}

}  // namespace ttt::serve
