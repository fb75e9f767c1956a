#include "text/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <limits>
#include <queue>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/input_file.h"
#include "io/json_input.h"

namespace ttt::text {
namespace {

// tiktoken's regexes (tiktoken_ext/openai_public.py), in PCRE2 syntax.
const char* const kR50kPattern =
    R"('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)";
const char* const kCl100kPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
const char* const kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct TiktokenEncoding {
  const char* name;
  const char* pattern;
  std::vector<SpecialToken> specials;
};

const std::vector<TiktokenEncoding>& tiktoken_encodings() {
  static const std::vector<TiktokenEncoding> encodings = {
      {"r50k_base", kR50kPattern, {{"<|endoftext|>", 50256}}},
      {"p50k_base", kR50kPattern, {{"<|endoftext|>", 50256}}},
      {"cl100k_base",
       kCl100kPattern,
       {{"<|endoftext|>", 100257},
        {"<|fim_prefix|>", 100258},
        {"<|fim_middle|>", 100259},
        {"<|fim_suffix|>", 100260},
        {"<|im_start|>", 100264},
        {"<|im_end|>", 100265},
        {"<|im_sep|>", 100266},
        {"<|endofprompt|>", 100276}}},
      {"o200k_base", kO200kPattern, {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}}},
  };
  return encodings;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t buffer = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    const char c = in[i];
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else return false;
    buffer = (buffer << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  for (; i < in.size(); ++i) {
    if (in[i] != '=') return false;
  }
  return true;
}

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for U+0100 on.
// Returns, for each code point below 0x200, the byte it stands for (-1 if none).
std::vector<int> byte_level_decoder() {
  std::vector<int> decoder(0x200, -1);
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    decoder[printable ? b : 256 + next++] = b;
  }
  return decoder;
}

// Decodes one vocabulary string of a byte-level tokenizer.json to the bytes it stands for.
bool byte_level_bytes(const std::string& text, const std::vector<int>& decoder, std::string& out) {
  out.clear();
  for (size_t pos = 0; pos < text.size();) {
    const int length = utf8_sequence_length(text, pos);
    if (length == 0) return false;
    uint32_t code = static_cast<unsigned char>(text[pos]);
    if (length > 1) {
      code &= (0xFF >> (length + 1));
      for (int i = 1; i < length; ++i) code = (code << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
    }
    if (code >= decoder.size() || decoder[code] < 0) return false;
    out.push_back(static_cast<char>(decoder[code]));
    pos += length;
  }
  return true;
}

}  // namespace

// A compiled PCRE2 pattern (UTF, Unicode properties for \s and friends, `$` only at the end,
// invalid UTF-8 never matched), JIT-compiled where PCRE2 supports it.
class BpeTokenizer::Regex {
 public:
  Regex(const std::string& pattern, const std::string& prefix) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_MATCH_INVALID_UTF, &error, &offset,
                          nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw Error(prefix + "bad pre-tokenisation regex at offset " + std::to_string(offset) + ": " +
                  reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls fn(begin, end) for each match and for each stretch between matches, in order,
  // covering the whole text.
  template <typename Fn>
  void cover(std::string_view text, Fn&& fn) const {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_, nullptr);
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
    struct Free {
      pcre2_match_data* m;
      pcre2_match_context* c;
      pcre2_jit_stack* s;
      ~Free() {
        pcre2_match_data_free(m);
        pcre2_match_context_free(c);
        pcre2_jit_stack_free(s);
      }
    } free_all{match, context, stack};
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), pos, 0, match, context);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw Error(std::string("pre-tokenisation regex failed: ") + reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      size_t begin = ovector[0], end = ovector[1];
      if (begin > pos) fn(pos, begin);
      if (end == begin) {  // an empty match: step over one character (or byte)
        const int length = utf8_sequence_length(text, begin);
        end = begin + std::max(length, 1);
      }
      fn(begin, end);
      pos = end;
    }
    if (pos < text.size()) fn(pos, text.size());
  }

 private:
  pcre2_code* code_ = nullptr;
};

BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tiktoken(const std::string& path, const std::string& encoding) {
  const std::string prefix = "tiktoken file '" + path + "': ";
  const TiktokenEncoding* spec = nullptr;
  for (const TiktokenEncoding& e : tiktoken_encodings()) {
    if (encoding == e.name) spec = &e;
  }
  if (!spec) {
    std::string known;
    for (const TiktokenEncoding& e : tiktoken_encodings()) known += std::string(known.empty() ? "" : ", ") + e.name;
    throw Error(prefix + "unknown encoding '" + encoding + "' (its regex and special tokens are not known; known: " +
                known + ")");
  }
  const std::string bytes = io::read_whole_file(path, prefix);
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->name_ = encoding;
  t->whole_piece_first_ = true;
  std::string token;
  size_t line_start = 0;
  int64_t line_number = 0;
  // Ranks number the file's lines (p50k_base skips one): a rank far beyond the line count is
  // damage, and would size the tables before anything else is read (a 30-byte file asking
  // for gigabytes).
  const uint64_t lines = static_cast<uint64_t>(std::count(bytes.begin(), bytes.end(), '\n')) + 1;
  const uint64_t max_rank = 2 * lines + 256;
  while (line_start < bytes.size()) {
    size_t line_end = bytes.find('\n', line_start);
    if (line_end == std::string::npos) line_end = bytes.size();
    std::string_view line(bytes.data() + line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    const std::string where = prefix + "line " + std::to_string(line_number) + ": ";
    require(space != std::string_view::npos, where + "expected '<base64 token> <rank>'");
    require(base64_decode(line.substr(0, space), token) && !token.empty(), where + "bad base64 token");
    uint64_t rank = 0;
    const std::string_view digits = line.substr(space + 1);
    require(!digits.empty() && digits.size() <= 9, where + "bad rank");
    for (char c : digits) {
      require(c >= '0' && c <= '9', where + "bad rank");
      rank = rank * 10 + uint64_t(c - '0');
    }
    require(rank <= max_rank,
            where + "rank " + std::to_string(rank) + " is far beyond the file's " + std::to_string(lines) + " lines");
    if (t->tokens_.size() <= rank) {
      t->tokens_.resize(rank + 1);
      t->is_token_.resize(rank + 1, 0);
    }
    require(!t->is_token_[rank], where + "rank " + std::to_string(rank) + " appears twice");
    require(t->ids_.emplace(token, TokenId(rank)).second, where + "token appears twice");
    t->tokens_[rank] = token;
    t->is_token_[rank] = 1;
  }
  require(!t->tokens_.empty(), prefix + "no tokens");
  // tiktoken merges the adjacent pair whose concatenation has the lowest rank: the same as
  // merge rules (left, right) ranked by the merged token, for every split of every token.
  for (size_t id = 0; id < t->tokens_.size(); ++id) {
    if (!t->is_token_[id]) continue;
    const std::string_view whole = t->tokens_[id];
    for (size_t k = 1; k < whole.size(); ++k) {
      const auto left = t->ids_.find(whole.substr(0, k));
      if (left == t->ids_.end()) continue;
      const auto right = t->ids_.find(whole.substr(k));
      if (right == t->ids_.end()) continue;
      t->add_merge(left->second, right->second, uint32_t(id), TokenId(id));
    }
  }
  const std::string eos = spec->specials.front().text;  // <|endoftext|> separates documents
  t->finish(spec->pattern, spec->specials, eos, eos, prefix);
  return t;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tokenizer_json(const std::string& path, const std::string& name) {
  const std::string prefix = "tokenizer file '" + path + "': ";
  const nlohmann::json json = io::read_json_file(path, prefix);
  try {
    const nlohmann::json& model = json.at("model");
    require(model.value("type", "") == "BPE", prefix + "model.type is not \"BPE\"");
    require(json.value("normalizer", nlohmann::json()).is_null(), prefix + "normalizers are not supported");
    // The pre-tokenizer: a Split on a regex followed by ByteLevel without its own regex (Llama 3),
    // or a ByteLevel with GPT-2's regex.
    std::string pattern;
    bool byte_level = false;
    const nlohmann::json& pre = json.at("pre_tokenizer");
    std::vector<nlohmann::json> steps;
    if (pre.value("type", "") == "Sequence") {
      for (const auto& step : pre.at("pretokenizers")) steps.push_back(step);
    } else {
      steps.push_back(pre);
    }
    for (const auto& step : steps) {
      const std::string type = step.value("type", "");
      if (type == "Split") {
        require(pattern.empty() && step.at("pattern").contains("Regex") && step.value("behavior", "") == "Isolated" &&
                    !step.value("invert", false),
                prefix + "only one Split pre-tokenizer on a Regex, Isolated, is supported");
        pattern = step.at("pattern").at("Regex").get<std::string>();
      } else if (type == "ByteLevel") {
        require(!step.value("add_prefix_space", false), prefix + "ByteLevel add_prefix_space is not supported");
        if (step.value("use_regex", true)) {
          require(pattern.empty(), prefix + "two pre-tokenisation regexes");
          pattern = kR50kPattern;
        }
        byte_level = true;
      } else {
        throw Error(prefix + "pre-tokenizer '" + type + "' is not supported (byte-level BPE only)");
      }
    }
    require(byte_level && !pattern.empty(), prefix + "not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer)");

    std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
    t->name_ = name;
    t->whole_piece_first_ = model.value("ignore_merges", false);
    const std::vector<int> decoder = byte_level_decoder();
    // Ids are dense: ordinary tokens below the vocabulary's size, added tokens below the total.
    // Bounding them before anything is sized by them keeps a small file from asking for gigabytes.
    const nlohmann::json& vocab = model.at("vocab");
    const nlohmann::json added_tokens = json.value("added_tokens", nlohmann::json::array());
    const auto id_below = [&](const nlohmann::json& value, size_t limit, const std::string& what) {
      return io::json_integer(value, 0, static_cast<int64_t>(limit) - 1, prefix + what);
    };
    std::string bytes;
    for (const auto& [text, id_json] : vocab.items()) {
      const int64_t id = id_below(id_json, vocab.size(), "the id of vocabulary entry '" + text + "'");
      require(byte_level_bytes(text, decoder, bytes), prefix + "vocabulary entry '" + text + "' is not byte-level");
      if (t->tokens_.size() <= size_t(id)) {
        t->tokens_.resize(id + 1);
        t->is_token_.resize(id + 1, 0);
      }
      require(!t->is_token_[id], prefix + "id " + std::to_string(id) + " appears twice");
      require(t->ids_.emplace(bytes, TokenId(id)).second, prefix + "vocabulary entry '" + text + "' appears twice");
      t->tokens_[id] = bytes;
      t->is_token_[id] = 1;
    }
    uint32_t rank = 0;
    std::string left_bytes, right_bytes;
    for (const auto& merge : model.at("merges")) {
      std::string left, right;
      if (merge.is_string()) {
        const std::string m = merge.get<std::string>();
        const size_t space = m.find(' ');
        require(space != std::string::npos && m.find(' ', space + 1) == std::string::npos,
                prefix + "bad merge '" + m + "'");
        left = m.substr(0, space), right = m.substr(space + 1);
      } else {
        left = merge.at(0).get<std::string>(), right = merge.at(1).get<std::string>();
      }
      require(byte_level_bytes(left, decoder, left_bytes) && byte_level_bytes(right, decoder, right_bytes),
              prefix + "merge '" + left + " " + right + "' is not byte-level");
      const auto l = t->ids_.find(left_bytes), r = t->ids_.find(right_bytes),
                 m = t->ids_.find(left_bytes + right_bytes);
      require(l != t->ids_.end() && r != t->ids_.end() && m != t->ids_.end(),
              prefix + "merge '" + left + " " + right + "' uses a token not in the vocabulary");
      if (!t->find_merge(l->second, r->second)) t->add_merge(l->second, r->second, rank, m->second);
      ++rank;
    }
    std::vector<SpecialToken> specials;
    for (const auto& added : added_tokens) {
      const int64_t id = id_below(added.at("id"), vocab.size() + added_tokens.size(), "an added token's id");
      specials.push_back({added.at("content").get<std::string>(), static_cast<TokenId>(id)});
    }
    std::string bos, eos;
    for (const char* candidate : {"<|begin_of_text|>", "<s>", "<|endoftext|>"}) {
      for (const SpecialToken& s : specials) {
        if (bos.empty() && s.text == candidate) bos = candidate;
      }
    }
    for (const char* candidate : {"<|end_of_text|>", "</s>", "<|endoftext|>"}) {
      for (const SpecialToken& s : specials) {
        if (eos.empty() && s.text == candidate) eos = candidate;
      }
    }
    t->finish(pattern, std::move(specials), bos, eos, prefix);
    return t;
  } catch (const nlohmann::json::exception& e) {
    throw Error(prefix + "unexpected structure: " + e.what());
  }
}

void BpeTokenizer::finish(const std::string& pattern, std::vector<SpecialToken> specials, const std::string& bos,
                          const std::string& eos, const std::string& prefix) {
  pattern_ = pattern;
  regex_ = std::make_unique<Regex>(pattern, prefix);
  for (int b = 0; b < 256; ++b) {
    const auto it = ids_.find(std::string(1, static_cast<char>(b)));
    require(it != ids_.end(), prefix + "byte " + std::to_string(b) + " has no token (not a byte-level vocabulary)");
    byte_ids_[b] = it->second;
  }
  vocab_size_ = int64_t(tokens_.size());
  for (const SpecialToken& s : specials) {
    require(s.id >= tokens_.size() || !is_token_[s.id],
            prefix + "special token '" + s.text + "' has the id of an ordinary token");
    vocab_size_ = std::max(vocab_size_, int64_t(s.id) + 1);
  }
  specials_ = std::move(specials);
  bool have_bos = false, have_eos = false;
  for (const SpecialToken& s : specials_) {
    if (s.text == bos) bos_id_ = s.id, have_bos = true;
    if (s.text == eos) eos_id_ = s.id, have_eos = true;
  }
  require(have_bos && have_eos, prefix + "no special token to use as bos/eos");
}

void BpeTokenizer::add_merge(TokenId left, TokenId right, uint32_t rank, TokenId merged) {
  merges_.emplace((uint64_t(left) << 32) | right, Merge{rank, merged});
}

const BpeTokenizer::Merge* BpeTokenizer::find_merge(TokenId left, TokenId right) const {
  const auto it = merges_.find((uint64_t(left) << 32) | right);
  return it == merges_.end() ? nullptr : &it->second;
}

template <typename Fn>
void BpeTokenizer::for_each_piece(std::string_view text, Fn&& fn) const {
  regex_->cover(text, [&](size_t begin, size_t end) { fn(text.substr(begin, end - begin)); });
}

std::vector<std::string> BpeTokenizer::split(std::string_view text) const {
  std::vector<std::string> pieces;
  for_each_piece(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

std::vector<TokenId> BpeTokenizer::encode(std::string_view text) const {
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + 1);
  for_each_piece(text, [&](std::string_view piece) { encode_piece(piece, ids); });
  return ids;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<TokenId>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (whole_piece_first_) {
    if (const auto it = ids_.find(piece); it != ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() > 64) {
    merge_long_piece(piece, out);
    return;
  }
  // Short pieces: a vector of parts and the rank of each adjacent pair, lowest rank merged
  // first, leftmost among equals (as tiktoken's _byte_pair_merge).
  constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  TokenId parts[64];
  uint32_t ranks[64];
  size_t n = piece.size();
  for (size_t i = 0; i < n; ++i) parts[i] = byte_ids_[static_cast<unsigned char>(piece[i])];
  const auto rank_at = [&](size_t i) {
    const Merge* m = find_merge(parts[i], parts[i + 1]);
    return m ? m->rank : kNone;
  };
  for (size_t i = 0; i + 1 < n; ++i) ranks[i] = rank_at(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNone) break;
    parts[best] = find_merge(parts[best], parts[best + 1])->merged;
    for (size_t i = best + 1; i + 1 < n; ++i) parts[i] = parts[i + 1];
    for (size_t i = best + 1; i + 2 < n; ++i) ranks[i] = ranks[i + 1];
    --n;
    if (best + 1 < n) ranks[best] = rank_at(best);
    if (best > 0) ranks[best - 1] = rank_at(best - 1);
  }
  out.insert(out.end(), parts, parts + n);
}

// Long pieces (runs of spaces, symbols or letters): a linked list of parts and a heap of
// candidate merges ordered by (rank, position), O(n log n), the same order as above.
void BpeTokenizer::merge_long_piece(std::string_view piece, std::vector<TokenId>& out) const {
  constexpr TokenId kDead = std::numeric_limits<TokenId>::max();
  struct Node {
    TokenId id;
    int64_t prev, next;
  };
  struct Candidate {
    uint32_t rank;
    int64_t left;
    TokenId left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const int64_t n = int64_t(piece.size());
  std::vector<Node> nodes(n);
  for (int64_t i = 0; i < n; ++i) nodes[i] = {byte_ids_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int64_t left) {
    if (left < 0 || nodes[left].next < 0) return;
    const Node& l = nodes[left];
    if (const Merge* m = find_merge(l.id, nodes[l.next].id)) heap.push({m->rank, left, l.id, nodes[l.next].id});
  };
  for (int64_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Node& left = nodes[c.left];
    if (left.id != c.left_id || left.next < 0 || nodes[left.next].id != c.right_id) continue;  // stale
    Node& right = nodes[left.next];
    left.id = find_merge(c.left_id, c.right_id)->merged;
    right.id = kDead;
    left.next = right.next;
    if (left.next >= 0) nodes[left.next].prev = c.left;
    push(left.prev);
    push(c.left);
  }
  for (int64_t i = 0; i >= 0; i = nodes[i].next) out.push_back(nodes[i].id);
}

bool BpeTokenizer::token_bytes(TokenId id, std::string& out) const {
  if (id >= tokens_.size() || !is_token_[id]) return false;
  out = tokens_[id];
  return true;
}

}  // namespace ttt::text
