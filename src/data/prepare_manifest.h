// Reading the prepare.json that `ttt data prepare` writes beside its token files: which
// tokenizer made them (its vocabulary size and bos id) and which file holds which split or
// document. The programs with libtorch read it; ttt_data writes it (data/prepare.h).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ttt {

struct PrepareManifest {
  struct Entry {
    std::string name;  // the split ("train", ...) or, with --per-document, the document
    std::string path;  // the token file, as the directory given plus its file name
  };
  std::string tokenizer;
  int64_t vocab_size = 0;
  int64_t bos_id = 0;
  std::vector<Entry> entries;

  // The manifest in `dir`; std::nullopt when there is none. Throws ttt::Error when it is
  // not a valid manifest.
  static std::optional<PrepareManifest> read(const std::string& dir);

  // Throws ttt::Error, naming `what` (a token file), unless the tokenizer fits a model with
  // this vocabulary size and bos id: a larger vocabulary could emit ids the model cannot
  // embed, even where this file happens not to; another bos id would mean documents are
  // not separated as the model expects.
  void check_fits_model(const std::string& what, int64_t model_vocab_size, int64_t model_bos_id) const;
};

}  // namespace ttt
