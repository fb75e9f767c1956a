#include "text/load_tokenizer.h"

#include <sys/stat.h>

#include <cstdlib>

#include "common/error.h"
#include "text/bpe_tokenizer.h"
#include "text/byte_tokenizer.h"
#include "text/sentencepiece_tokenizer.h"

#ifndef TTT_DEFAULT_VOCAB_DIR
#define TTT_DEFAULT_VOCAB_DIR "data/vocab"
#endif

namespace ttt::text {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string vocab_file(const std::string& name, const std::string& relative) {
  const std::string path = vocab_dir() + "/" + relative;
  require(is_file(path), "tokenizer '" + name + "': vocabulary file '" + path +
                             "' not found (run scripts/fetch_vocab.sh, or set TTT_VOCAB_DIR)");
  return path;
}

}  // namespace

std::string vocab_dir() {
  const char* dir = std::getenv("TTT_VOCAB_DIR");
  return dir && *dir ? dir : TTT_DEFAULT_VOCAB_DIR;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  require(!spec.empty(), "empty tokenizer name");
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  for (const char* encoding : {"r50k_base", "p50k_base", "cl100k_base", "o200k_base"}) {
    if (spec == encoding) return BpeTokenizer::from_tiktoken(vocab_file(spec, spec + ".tiktoken"), spec);
  }
  if (spec == "llama3") return BpeTokenizer::from_tokenizer_json(vocab_file(spec, "llama3/tokenizer.json"), "llama3");
  if (ends_with(spec, ".tiktoken")) {
    const std::string name = base_name(spec);
    return BpeTokenizer::from_tiktoken(spec, name.substr(0, name.size() - std::string(".tiktoken").size()));
  }
  if (ends_with(spec, ".json")) return BpeTokenizer::from_tokenizer_json(spec, base_name(spec));
  if (!is_file(spec)) {
    throw Error("unknown tokenizer '" + spec +
                "': not a file, nor one of bytes, r50k_base, p50k_base, cl100k_base, o200k_base, llama3");
  }
  return SentencePieceTokenizer::load(spec);
}

}  // namespace ttt::text
