// `ttt data train-tokenizer`: a SentencePiece BPE model trained on documents.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/documents.h"
#include "text/sentencepiece_tokenizer.h"

namespace ttt::data {

struct TrainTokenizerOptions {
  text::SentencePieceTrainOptions sentencepiece;
  // Train on at most about this many bytes of text: documents are sampled by stable_fraction(name),
  // so the sample is the same on every run. 0: all documents.
  uint64_t max_bytes = 32 << 20;
};

struct TrainTokenizerSummary {
  int64_t documents_used = 0;
  int64_t sentences = 0;
  int64_t invalid_utf8_sentences_skipped = 0;
  uint64_t bytes = 0;
};

// Training text of one document: its lines, grouped into pieces of at most `max_bytes` bytes that
// end at a newline where they can (newlines kept, so the vocabulary learns them). Lines that are
// not valid UTF-8 are skipped and counted.
void split_training_text(const std::string& text, size_t max_bytes, std::vector<std::string>& out,
                         int64_t& invalid_skipped);

// Returns the serialized model; `summary` says what it was trained on.
std::string train_tokenizer(const std::vector<Document>& documents, const TrainTokenizerOptions& options,
                            TrainTokenizerSummary& summary);

}  // namespace ttt::data
