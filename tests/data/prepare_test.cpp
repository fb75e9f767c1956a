// `ttt data prepare`'s library side: token files that decode back to the documents, splits fixed
// by names, empty documents skipped and counted, the same bytes whatever the thread count.
#include "data/prepare.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/token_file.h"
#include "test_files.h"
#include "text/byte_tokenizer.h"
#include "text/load_tokenizer.h"
#include "text/text_test_util.h"

namespace ttt::data {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Documents in a scratch directory: name -> text.
struct Corpus {
  test::ScratchDir dir;
  std::map<std::string, std::string> texts;
  void add(const std::string& name, const std::string& text) {
    std::ofstream(dir.path(name), std::ios::binary) << text;
    texts[name] = text;
  }
  std::vector<Document> documents() const { return list_documents({dir.path("")}); }
};

// The documents of a token file: split at bos, each decoded.
std::vector<std::string> decode_documents(const std::string& path, const text::Tokenizer& t) {
  const std::vector<int64_t> ids = io::read_token_file(path);
  EXPECT_EQ(ids.front(), int64_t(t.bos_id()));
  std::vector<std::string> docs;
  std::vector<text::TokenId> current;
  for (size_t i = 1; i <= ids.size(); ++i) {
    if (i == ids.size() || ids[i] == int64_t(t.bos_id())) {
      docs.push_back(t.decode(current));
      current.clear();
    } else {
      current.push_back(text::TokenId(ids[i]));
    }
  }
  return docs;
}

TEST(AssignSplits, FixedByNamesWithAtLeastOnePerAskedSplit) {
  std::vector<Document> docs;
  for (int i = 0; i < 200; ++i) docs.push_back({"doc" + std::to_string(i), "", 0});
  const std::vector<std::string> splits = assign_splits(docs, 0.05, 0.02);
  EXPECT_EQ(std::count(splits.begin(), splits.end(), "val"), 10);
  EXPECT_EQ(std::count(splits.begin(), splits.end(), "test"), 4);
  // Reversing the order changes nothing for any document.
  std::vector<Document> reversed(docs.rbegin(), docs.rend());
  const std::vector<std::string> again = assign_splits(reversed, 0.05, 0.02);
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(again[docs.size() - 1 - i], splits[i]);
  std::vector<Document> few(docs.begin(), docs.begin() + 3);
  const std::vector<std::string> small = assign_splits(few, 0.01, 0.01);
  EXPECT_EQ(std::count(small.begin(), small.end(), "train"), 1);
  test::expect_error([&] { assign_splits(docs, 0.6, 0.5); }, {"fractions"});
}

TEST(Prepare, TokenFilesDecodeBackToTheDocuments) {
  Corpus corpus;
  const std::vector<std::string> samples = test::sample_texts();
  for (size_t i = 0; i < samples.size(); ++i) corpus.add("doc" + std::to_string(i) + ".txt", samples[i]);
  corpus.add("invalid.txt", "caf\xC3 \xff bytes");
  corpus.add("empty.txt", "");
  corpus.add("blank.txt", " \n\t\n");
  for (const char* name : {"bytes", "cl100k_base"}) {
    const auto tokenizer = text::load_tokenizer(name);
    test::ScratchDir out;
    PrepareOptions options;
    options.out_dir = out.path("prepared");
    options.val_fraction = 0.1;
    options.test_fraction = 0.1;
    const PrepareSummary summary = prepare_documents(corpus.documents(), *tokenizer, options);
    EXPECT_EQ(summary.documents, int64_t(corpus.texts.size()));
    // " \n\t\n" is blank like the empty file; samples holds blank texts of its own too.
    int64_t blank = 0;
    for (const auto& [n, text] : corpus.texts) blank += text.find_first_not_of(" \t\n\r\f\v") == std::string::npos;
    EXPECT_EQ(summary.empty_documents, blank);
    EXPECT_EQ(summary.invalid_utf8_documents, 1);
    int64_t seen = 0;
    uint64_t tokens = 0;
    for (const SplitSummary& split : summary.splits) {
      if (split.documents == 0) continue;
      const std::vector<std::string> decoded = decode_documents(split.file, *tokenizer);
      ASSERT_EQ(decoded.size(), split.document_names.size());
      for (size_t k = 0; k < decoded.size(); ++k) EXPECT_EQ(decoded[k], corpus.texts.at(split.document_names[k]));
      EXPECT_EQ(uint64_t(test::file_size(split.file)), 4 * split.tokens);
      seen += split.documents;
      tokens += split.tokens;
    }
    EXPECT_EQ(seen + summary.empty_documents, summary.documents);
    EXPECT_EQ(tokens, summary.tokens);
    EXPECT_GT(summary.splits[1].documents, 0);  // val
    EXPECT_GT(summary.splits[2].documents, 0);  // test
    const nlohmann::json meta = nlohmann::json::parse(slurp(options.out_dir + "/prepare.json"));
    EXPECT_EQ(meta["tokenizer"], name);
    EXPECT_EQ(meta["vocab_size"], tokenizer->vocab_size());
    EXPECT_EQ(meta["empty_documents_skipped"], blank);
    EXPECT_EQ(meta["splits"][0]["document_names"].size(), summary.splits[0].document_names.size());
  }
}

TEST(Prepare, SameBytesWhateverTheThreadsAndRun) {
  Corpus corpus;
  const std::vector<std::string> texts = test::random_texts(60, 17);
  for (size_t i = 0; i < texts.size(); ++i) corpus.add(std::string("d").append(std::to_string(i)), texts[i]);
  const auto tokenizer = text::load_tokenizer("cl100k_base");
  std::vector<std::string> outputs;
  for (int threads : {1, 3, 1}) {
    test::ScratchDir out;
    PrepareOptions options;
    options.out_dir = out.path("p");
    options.threads = threads;
    prepare_documents(corpus.documents(), *tokenizer, options);
    std::string all;
    for (const char* f : {"/train.u32", "/val.u32", "/test.u32"}) all += slurp(options.out_dir + f) + "|";
    all += slurp(options.out_dir + "/prepare.json");  // no timings in it: reproducible too
    outputs.push_back(all);
  }
  EXPECT_TRUE(outputs[0] == outputs[1]);  // (not EXPECT_EQ: binary output)
  EXPECT_TRUE(outputs[0] == outputs[2]);
  EXPECT_GT(outputs[0].size(), 1000u);
}

TEST(Prepare, PerDocumentFiles) {
  Corpus corpus;
  ::mkdir(corpus.dir.path("books").c_str(), 0755);
  corpus.add("books/genesis.txt", "In the beginning");
  corpus.add("books/exodus.txt", "Now these are the names");
  corpus.add("books/empty.txt", "");
  const text::ByteTokenizer bytes;
  test::ScratchDir out;
  PrepareOptions options;
  options.out_dir = out.path("eval");
  options.per_document = true;
  const PrepareSummary summary = prepare_documents(corpus.documents(), bytes, options);
  EXPECT_EQ(summary.splits.size(), 2u);
  EXPECT_EQ(summary.empty_documents, 1);
  EXPECT_EQ(decode_documents(options.out_dir + "/books__genesis.u32", bytes),
            std::vector<std::string>{"In the beginning"});
  EXPECT_EQ(test::file_size(options.out_dir + "/books__exodus.u32"), int64_t(4 * (1 + 23)));
  EXPECT_EQ(test::file_size(options.out_dir + "/books__empty.u32"), -1);
  EXPECT_EQ(per_document_file_name("a/b/c.txt"), "a__b__c.u32");
  EXPECT_EQ(per_document_file_name("moby-dick"), "moby-dick.u32");
}

TEST(Prepare, ReportsProgressAndRejectsABadOutput) {
  Corpus corpus;
  corpus.add("a", "hello");
  const text::ByteTokenizer bytes;
  PrepareOptions options;
  test::ScratchDir out;
  // Missing parents are created (mkdir -p); a parent that is a file is an error.
  std::ofstream(out.path("file")) << "x";
  options.out_dir = out.path("file/out");
  test::expect_error([&] { prepare_documents(corpus.documents(), bytes, options); },
                     {"cannot create the directory", "file"});
  options.out_dir = out.path("new/parents/out");
  prepare_documents(corpus.documents(), bytes, options);
  EXPECT_EQ(test::file_size(out.path("new/parents/out/train.u32")), int64_t(4 * (1 + 5)));
  options.out_dir = out.path("o");
  int64_t last = -1;
  prepare_documents(corpus.documents(), bytes, options, [&](const PrepareProgress& p) {
    last = p.documents_done;
    EXPECT_EQ(p.documents_total, 1);
    EXPECT_EQ(p.bytes_total, 5u);
  });
  EXPECT_EQ(last, 1);
}

}  // namespace
}  // namespace ttt::data
