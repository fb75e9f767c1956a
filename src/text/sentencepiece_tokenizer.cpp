#include "text/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <charconv>
#include <unordered_map>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/input_file.h"

namespace sentencepiece::logging {
void SetMinLogLevel(int level);  // in libsentencepiece, not in its public headers
}

namespace ttt::text {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

enum Kind : char { kOrdinary = 0, kByte = 1, kSpecial = 2, kUnused = 3 };

class IteratorAdapter : public sentencepiece::SentenceIterator {
 public:
  explicit IteratorAdapter(const std::function<bool(std::string&)>& next) : next_(next) { Next(); }
  bool done() const override { return done_; }
  void Next() override { done_ = !next_(value_); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::function<bool(std::string&)>& next_;
  std::string value_;
  bool done_ = false;
};

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer() : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::load(const std::string& path) {
  const std::string prefix = "SentencePiece model '" + path + "': ";
  io::InputFile file = io::open_input_file(path, prefix);
  std::string bytes(file.size, '\0');
  file.stream.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  require(file.stream.good() && !bytes.empty(), prefix + "cannot read the file");
  return from_serialized(bytes, path);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_serialized(const std::string& model,
                                                                                const std::string& source) {
  const std::string prefix = "SentencePiece model '" + source + "': ";
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  sentencepiece::util::Status status;
  try {
    status = t->processor_->LoadFromSerializedProto(model);
  } catch (const std::exception& e) {
    // The library throws for some malformed models (its trie builder on an empty piece).
    throw Error(prefix + "not a SentencePiece model (" + e.what() + ")");
  }
  require(status.ok(), prefix + "not a SentencePiece model (" + status.ToString() + ")");
  t->serialized_ = model;
  const sentencepiece::SentencePieceProcessor& sp = *t->processor_;
  t->vocab_size_ = sp.GetPieceSize();
  t->pieces_.resize(t->vocab_size_);
  t->kind_.assign(t->vocab_size_, kUnused);
  bool have_byte[256] = {};
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    const std::string& piece = sp.IdToPiece(id);
    if (sp.IsByte(id)) {
      // "<0xAB>"
      int byte = -1;
      const bool hex = piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>' &&
                       std::from_chars(piece.data() + 3, piece.data() + 5, byte, 16).ptr == piece.data() + 5;
      require(hex && byte >= 0, prefix + "bad byte piece '" + piece + "'");
      t->byte_ids_[byte] = TokenId(id);
      have_byte[byte] = true;
      t->pieces_[id] = std::string(1, static_cast<char>(byte));
      t->kind_[id] = kByte;
    } else if (sp.IsControl(id) || sp.IsUnknown(id)) {
      t->specials_.push_back({piece, TokenId(id)});
      t->kind_[id] = kSpecial;
    } else if (!sp.IsUnused(id)) {
      std::string text;
      for (size_t pos = 0; pos < piece.size();) {
        if (piece.compare(pos, kSpaceMark.size(), kSpaceMark) == 0) {
          text += ' ';
          pos += kSpaceMark.size();
        } else {
          text += piece[pos++];
        }
      }
      t->pieces_[id] = text;
      t->kind_[id] = kOrdinary;
    }
  }
  for (int b = 0; b < 256; ++b) {
    require(have_byte[b], prefix + "the model has no byte fallback (train it with byte_fallback, as `ttt data "
                                   "train-tokenizer` does), so it cannot encode every text");
  }
  require(sp.bos_id() >= 0 && sp.eos_id() >= 0, prefix + "the model has no bos or eos piece");
  t->bos_id_ = TokenId(sp.bos_id());
  t->eos_id_ = TokenId(sp.eos_id());
  // The tables above assume a model that changes no text (no normalisation, no spaces added or
  // removed), as `ttt data train-tokenizer` trains it: one that does would not give every text
  // back. Spaces in every position, tabs, newlines and characters that NFKC would change.
  const std::string probe = "  Two  spaces,\ttab\nnew line \xef\xac\x81 \xef\xbc\xa1 \xe2\x91\xa0 caf\xc3\xa9 ";
  require(t->decode(t->encode(probe)) == probe,
          prefix + "the model normalises text (its normalizer_spec), so it would not give every text back");
  return t;
}

std::string SentencePieceTokenizer::name() const { return "sentencepiece-bpe-" + std::to_string(vocab_size_); }

std::vector<TokenId> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<TokenId> ids;
  std::vector<int> part;
  size_t segment_start = 0;
  const auto flush = [&](size_t end) {
    if (end > segment_start) {
      const auto status = processor_->Encode(text.substr(segment_start, end - segment_start), &part);
      require(status.ok(), "SentencePiece: cannot encode: " + status.ToString());
      ids.insert(ids.end(), part.begin(), part.end());
    }
  };
  for (size_t pos = 0; pos < text.size();) {
    const int length = utf8_sequence_length(text, pos);
    const bool raw = length == 0 || text.compare(pos, kSpaceMark.size(), kSpaceMark) == 0;
    if (!raw) {
      pos += length;
      continue;
    }
    // Invalid UTF-8 (one byte) or U+2581 (three bytes): byte pieces.
    flush(pos);
    const size_t n = length == 0 ? 1 : kSpaceMark.size();
    for (size_t i = 0; i < n; ++i) ids.push_back(byte_ids_[static_cast<unsigned char>(text[pos + i])]);
    pos += n;
    segment_start = pos;
  }
  flush(text.size());
  return ids;
}

bool SentencePieceTokenizer::token_bytes(TokenId id, std::string& out) const {
  if (id >= kind_.size() || (kind_[id] != kOrdinary && kind_[id] != kByte)) return false;
  out = pieces_[id];
  return true;
}

void SentencePieceTokenizer::save(const std::string& path) const { io::write_text_file(path, serialized_); }

std::string train_sentencepiece(const std::function<bool(std::string&)>& next, const SentencePieceTrainOptions& options) {
  require(options.vocab_size >= 300, "SentencePiece vocabulary size " + std::to_string(options.vocab_size) +
                                         " is too small (at least 300: 256 byte pieces, 3 specials and some merges)");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", std::to_string(options.character_coverage)},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", std::to_string(options.max_sentence_bytes)},
      {"num_threads", std::to_string(std::max(options.threads, 1))},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"model_prefix", ""},
  };
  sentencepiece::logging::SetMinLogLevel(1);
  IteratorAdapter sentences(next);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &model);
  require(status.ok(), "SentencePiece training failed: " + status.ToString());
  return model;
}

}  // namespace ttt::text
