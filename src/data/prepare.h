// `ttt data prepare`: text documents to token files.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/documents.h"
#include "text/tokenizer.h"

namespace ttt::data {

struct PrepareOptions {
  std::string out_dir;         // created if missing (its parent must exist)
  double val_fraction = 0.01;  // of the documents
  double test_fraction = 0.01;
  bool per_document = false;   // one token file per document instead of splits
  int threads = 1;             // documents are encoded in parallel
};

struct SplitSummary {
  std::string name;  // train, val, test; or the document's name in per-document mode
  std::string file;  // the token file written (none if the split has no documents)
  int64_t documents = 0;
  uint64_t bytes = 0;   // of text
  uint64_t tokens = 0;  // bos separators included
  std::vector<std::string> document_names;
};

struct PrepareSummary {
  std::string tokenizer;
  int64_t vocab_size = 0;
  text::TokenId bos_id = 0;
  std::vector<SplitSummary> splits;
  int64_t documents = 0;         // read, empty ones included
  int64_t empty_documents = 0;   // nothing but whitespace: skipped
  int64_t invalid_utf8_documents = 0;  // encoded all the same (byte fallback)
  uint64_t bytes = 0, tokens = 0;
  double seconds = 0;
  std::string to_json() const;
};

struct PrepareProgress {
  int64_t documents_done = 0, documents_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;
  double seconds = 0;
};
using PrepareProgressFn = std::function<void(const PrepareProgress&)>;

// The split of each document ("train", "val" or "test"): the round(fraction * n) documents with
// the smallest stable_fraction(name) go to val, the next ones to test (at least one each for a
// fraction > 0 when there are 3 documents or more), the rest to train. It depends on the names
// alone, never on the order or the machine.
std::vector<std::string> assign_splits(const std::vector<Document>& documents, double val_fraction,
                                       double test_fraction);

// Tokenizes the documents and writes, in options.out_dir, train.u32 / val.u32 / test.u32 (or one
// NAME.u32 per document) and prepare.json (the summary). Every document is written as bos_id
// followed by its tokens; documents with nothing but whitespace are skipped and counted.
PrepareSummary prepare_documents(const std::vector<Document>& documents, const text::Tokenizer& tokenizer,
                                 const PrepareOptions& options, const PrepareProgressFn& progress = {});

// The token-file name of a document in per-document mode: its name with '/' as "__" and a
// trailing ".txt" dropped, plus ".u32".
std::string per_document_file_name(const std::string& document_name);

}  // namespace ttt::data
