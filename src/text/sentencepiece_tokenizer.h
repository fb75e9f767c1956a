// SentencePiece BPE (Debian's libsentencepiece), trained by the project on its corpus.
// A model is one file (SentencePiece's serialized ModelProto, `.model`): save it next to the
// model that uses it, and load_tokenizer() reads it back.
//
// Models trained here (train_sentencepiece) normalise nothing, add no dummy prefix and fall back
// to byte pieces <0x00>..<0xFF> for characters outside their vocabulary, so every byte string
// round-trips: bytes that are not valid UTF-8 (and U+2581, SentencePiece's own space mark) are
// encoded as byte pieces directly.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "text/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ttt::text {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Errors (ttt::Error naming the file): unreadable, not a SentencePiece model, a model without
  // byte fallback (it could not encode every byte string).
  static std::unique_ptr<SentencePieceTokenizer> load(const std::string& path);
  static std::unique_ptr<SentencePieceTokenizer> from_serialized(const std::string& model, const std::string& source);
  ~SentencePieceTokenizer() override;

  std::string name() const override;
  int64_t vocab_size() const override { return vocab_size_; }
  TokenId bos_id() const override { return bos_id_; }
  TokenId eos_id() const override { return eos_id_; }
  const std::vector<SpecialToken>& special_tokens() const override { return specials_; }
  std::vector<TokenId> encode(std::string_view text) const override;
  bool token_bytes(TokenId id, std::string& out) const override;

  // The model file's bytes; save() writes them atomically.
  const std::string& serialized() const { return serialized_; }
  void save(const std::string& path) const;

 private:
  SentencePieceTokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::string serialized_;
  std::vector<std::string> pieces_;   // bytes of each ordinary piece ("▁" as a space)
  std::vector<char> kind_;            // 0 ordinary, 1 byte piece, 2 special, 3 unused
  TokenId byte_ids_[256] = {};
  std::vector<SpecialToken> specials_;
  TokenId bos_id_ = 0, eos_id_ = 0;
  int64_t vocab_size_ = 0;
};

struct SentencePieceTrainOptions {
  int vocab_size = 4096;
  int threads = 1;
  // Longer training sentences are cut (SentencePiece skips longer ones).
  int max_sentence_bytes = 8192;
  double character_coverage = 0.9995;
};

// Trains a SentencePiece BPE model on the sentences that `next` yields (it fills its argument
// and returns true, or returns false at the end). Deterministic: the same sentences give the
// same model bytes. Returns the serialized model.
std::string train_sentencepiece(const std::function<bool(std::string&)>& next, const SentencePieceTrainOptions& options);

}  // namespace ttt::text
