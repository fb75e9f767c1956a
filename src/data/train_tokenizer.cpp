#include "data/train_tokenizer.h"

#include "common/error.h"

namespace ttt::data {

void split_training_text(const std::string& text, size_t max_bytes, std::vector<std::string>& out,
                         int64_t& invalid_skipped) {
  std::string current;
  const auto flush = [&] {
    if (!current.empty()) out.push_back(std::move(current));
    current.clear();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    std::string_view line(text.data() + pos, end - pos);
    pos = end;
    if (!text::is_valid_utf8(line)) {
      ++invalid_skipped;
      continue;
    }
    while (line.size() > max_bytes) {  // a very long line: cut at character boundaries
      flush();
      size_t cut = max_bytes;
      while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
      out.emplace_back(line.substr(0, cut));
      line.remove_prefix(cut);
    }
    if (current.size() + line.size() > max_bytes) flush();
    current += line;
  }
  flush();
}

std::string train_tokenizer(const std::vector<Document>& documents, const TrainTokenizerOptions& options,
                            TrainTokenizerSummary& summary) {
  uint64_t total = 0;
  for (const Document& d : documents) total += d.size;
  const double keep = options.max_bytes == 0 || total <= options.max_bytes ? 1.0 : double(options.max_bytes) / double(total);
  std::vector<size_t> chosen;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (stable_fraction("tokenizer:" + documents[i].name) < keep) chosen.push_back(i);
  }
  require(!chosen.empty(), "no documents to train the tokenizer on");
  summary = {};
  size_t next_document = 0;
  std::vector<std::string> pending;
  size_t next_pending = 0;
  const size_t max_sentence = size_t(options.sentencepiece.max_sentence_bytes);
  const auto next = [&](std::string& sentence) {
    while (next_pending == pending.size()) {
      if (next_document == chosen.size()) return false;
      pending.clear();
      next_pending = 0;
      const std::string text = read_document(documents[chosen[next_document++]]);
      ++summary.documents_used;
      split_training_text(text, max_sentence, pending, summary.invalid_utf8_sentences_skipped);
    }
    sentence = std::move(pending[next_pending++]);
    ++summary.sentences;
    summary.bytes += sentence.size();
    return true;
  };
  return text::train_sentencepiece(next, options.sentencepiece);
}

}  // namespace ttt::data
