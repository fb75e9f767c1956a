// `ttt tokenize`, `ttt detokenize` and `ttt data ...` driven as a user would.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/token_file.h"
#include "test_files.h"
#include "text/load_tokenizer.h"

namespace ttt {
namespace {

using test::temp_path;

struct CliRun {
  int exit_code;
  std::string output;
};

CliRun run_ttt(const std::string& args) {
  const std::string log = temp_path("out.txt");
  const int status = std::system((std::string(TTT_BINARY) + " " + args + " >" + log + " 2>&1").c_str());
  std::ifstream in(log, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return {WEXITSTATUS(status), text.str()};
}

void expect_clean_failure(const CliRun& run, const std::string& fragment) {
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output.rfind("ttt: error: ", 0), 0u) << run.output;
  EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
  EXPECT_NE(run.output.find(fragment), std::string::npos) << run.output;
}

std::string write_file(const std::string& name, const std::string& bytes) {
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(DataCli, HelpDescribesTheCommands) {
  for (const char* command : {"tokenize", "detokenize", "data", "data prepare", "data fetch", "data train-tokenizer",
                              "data tokenizer-info", "data niah-prompts", "eval niah"}) {
    const CliRun run = run_ttt(std::string(command) + " --help");
    EXPECT_EQ(run.exit_code, 0) << command << run.output;
    EXPECT_NE(run.output.find("--"), std::string::npos) << run.output;
  }
}

TEST(DataCli, TokenizeMatchesTheLibraryAndDetokenizeInvertsIt) {
  const std::string text = "Hello  world! 12345 h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xff<|endoftext|>\n";
  const std::string input = write_file("in.txt", text);
  const auto cl100k = text::load_tokenizer("cl100k_base");
  for (const bool special : {false, true}) {
    const std::string out = temp_path("ids.u32");
    const CliRun run =
        run_ttt("tokenize --tokenizer cl100k_base --input " + input + " --out " + out + (special ? " --special" : ""));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const std::vector<text::TokenId> want = special ? cl100k->encode_with_special(text) : cl100k->encode(text);
    EXPECT_EQ(io::read_token_file(out), std::vector<int64_t>(want.begin(), want.end()));
    const std::string back = temp_path("back.txt");
    const CliRun detok = run_ttt("detokenize --tokenizer cl100k_base --tokens " + out + " --out " + back);
    ASSERT_EQ(detok.exit_code, 0) << detok.output;
    std::ifstream in(back, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    EXPECT_EQ(s.str(), text);
  }
  // Printed ids, and --ids back to text on standard output.
  const CliRun printed = run_ttt("tokenize --tokenizer cl100k_base --text 'Hello world'");
  ASSERT_EQ(printed.exit_code, 0);
  const std::vector<text::TokenId> ids = cl100k->encode("Hello world");
  EXPECT_EQ(printed.output, std::to_string(ids[0]) + " " + std::to_string(ids[1]) + "\n");
  const CliRun words = run_ttt("detokenize --tokenizer cl100k_base --ids '" + std::to_string(ids[0]) + " " +
                               std::to_string(ids[1]) + " 100257' --skip-special");
  EXPECT_EQ(words.output, "Hello world");
}

TEST(DataCli, PrepareWritesSplitsAndASummary) {
  test::ScratchDir corpus;
  for (int i = 0; i < 20; ++i) std::ofstream(corpus.path("doc" + std::to_string(i) + ".txt")) << "document " << i << "\n";
  std::ofstream(corpus.path("empty.txt")) << "";
  const std::string out = temp_path("prepared");
  const CliRun run = run_ttt("data prepare --input " + corpus.path("") + " --tokenizer bytes --out " + out +
                             " --val 0.1 --test 0.1 --jobs 2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("21 documents (1 empty, skipped"), std::string::npos) << run.output;
  std::ifstream meta_in(out + "/prepare.json");
  const nlohmann::json meta = nlohmann::json::parse(meta_in);
  EXPECT_EQ(meta["splits"][0]["documents"], 16);
  EXPECT_EQ(meta["splits"][1]["documents"], 2);
  EXPECT_EQ(meta["splits"][2]["documents"], 2);
  EXPECT_GT(test::file_size(out + "/train.u32"), 0);
}

TEST(DataCli, TrainTokenizerThenUseIt) {
  test::ScratchDir corpus;
  std::ifstream gpl("/usr/share/common-licenses/GPL-3");
  std::string text((std::istreambuf_iterator<char>(gpl)), std::istreambuf_iterator<char>());
  std::ofstream(corpus.path("gpl.txt")) << text;
  const std::string model = temp_path("tok.model");
  const CliRun train = run_ttt("data train-tokenizer --input " + corpus.path("") + " --vocab-size 500 --out " + model);
  ASSERT_EQ(train.exit_code, 0) << train.output;
  const CliRun info = run_ttt("data tokenizer-info --tokenizer " + model);
  ASSERT_EQ(info.exit_code, 0) << info.output;
  const nlohmann::json j = nlohmann::json::parse(info.output);
  EXPECT_EQ(j["vocab_size"], 500);
  EXPECT_EQ(j["bos_id"], 1);
  const std::string input = write_file("x.txt", "Everyone is permitted to copy \xff\n");
  const std::string ids = temp_path("x.u32");
  ASSERT_EQ(run_ttt("tokenize --tokenizer " + model + " --input " + input + " --out " + ids).exit_code, 0);
  EXPECT_EQ(run_ttt("detokenize --tokenizer " + model + " --tokens " + ids).output, "Everyone is permitted to copy \xff\n");
}

// A tiny untrained ttt-e2e model over the bytes tokenizer's ids (256 bytes, bos, eos).
std::string byte_model() {
  const std::string config = write_file("config.json", R"({"variant": "ttt-e2e", "vocab_size": 258, "d_model": 16,
    "n_layers": 2, "n_heads": 2, "d_ff": 32, "rms_eps": 1e-6, "rope_theta": 10000, "window": 16, "mini_batch": 8,
    "suffix_len": 1, "inner_lr": 1.0, "inner_clip": 1.0, "tie_embeddings": true, "qk_norm": true,
    "bos_id": 256, "eos_id": 257})");
  const std::string model = temp_path("model.safetensors");
  EXPECT_EQ(run_ttt("init --config " + config + " --out " + model).exit_code, 0);
  return model;
}

// `ttt generate` with a real tokenizer: the prompt is encoded and the output decoded by
// ttt-data's tokenizer (here raw bytes: every generated token is one byte of text).
TEST(DataCli, GenerateEncodesThePromptAndStreamsText) {
  const std::string model = byte_model();
  const std::string args = "generate --model " + model + " --tokenizer bytes --prompt 'Call me Ishmael.' --seed 5";
  const CliRun run = run_ttt(args + " --max-tokens 20");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // Up to 20 bytes of text and a newline (fewer where eos or a special token was drawn).
  EXPECT_LE(run.output.size(), 21u) << run.output;
  EXPECT_EQ(run_ttt(args + " --max-tokens 20").output, run.output);  // the seed fixes the text
  const CliRun stats = run_ttt(args + " --max-tokens 10 --stats");
  // bos + 16 bytes; the stats line starts a line of its own after the text.
  EXPECT_NE(stats.output.find("\nprompt 17 tokens"), std::string::npos) << stats.output;
  // A tokenizer larger than the model's vocabulary is refused.
  const CliRun too_big = run_ttt("generate --model " + model + " --tokenizer cl100k_base --prompt hi");
  EXPECT_NE(too_big.exit_code, 0);
  EXPECT_NE(too_big.output.find("more than the model's vocab_size 258"), std::string::npos) << too_big.output;
  const CliRun empty = run_ttt("generate --model " + model + " --tokenizer bytes --prompt-file " +
                               write_file("empty.txt", ""));
  EXPECT_NE(empty.exit_code, 0);
  EXPECT_NE(empty.output.find("the prompt is empty"), std::string::npos) << empty.output;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// `ttt eval niah` end to end on a tiny untrained model: JSON whose numbers agree with each
// other and with the scoring rules, the same results for the same seed, a plot.
TEST(DataCli, EvalNiahGeneratesAndScoresPerContextAndDepth) {
  const std::string model = byte_model();
  const std::string json = temp_path("niah.json"), png = temp_path("niah.png");
  const std::string args =
      "eval niah --model " + model +
      " --tokenizer bytes --task passkey --contexts 400,512 --depths 0,50,100 --samples 3 --seed 4";
  const CliRun run = run_ttt(args + " --json " + json + " --plot " + png);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("| all |"), std::string::npos) << run.output;
  const nlohmann::json j = read_json(json);
  EXPECT_EQ(j.at("format"), "ttt-niah/1");
  EXPECT_EQ(j.at("ruler_task"), "niah_single_1");
  EXPECT_EQ(j.at("mode"), "generate");
  ASSERT_EQ(j.at("contexts").size(), 2u);
  for (const nlohmann::json& context : j.at("contexts")) {
    ASSERT_EQ(context.at("results").size(), 3u);
    ASSERT_EQ(context.at("depths").size(), 3u);
    int correct = 0;
    for (size_t i = 0; i < 3; ++i) {
      const nlohmann::json& r = context.at("results")[i];
      const std::string expected = r.at("expected"), got = r.at("got");
      EXPECT_EQ(expected.size(), 7u);
      // " 1234567" and the margin, one byte a token; bytes that are not UTF-8 become U+FFFD (3 bytes).
      EXPECT_LE(got.size(), 3 * (8u + 8u));
      EXPECT_EQ(r.at("correct").get<bool>(), got.find(expected) != std::string::npos);
      EXPECT_EQ(r.at("depth").get<double>(), std::vector<double>({0, 50, 100})[i]);
      EXPECT_EQ(context.at("depths")[i].at("accuracy").get<double>(), r.at("correct").get<bool>() ? 1.0 : 0.0);
      correct += r.at("correct").get<bool>();
    }
    EXPECT_DOUBLE_EQ(context.at("accuracy").get<double>(), correct / 3.0);
  }
  EXPECT_EQ(j.at("contexts")[1].at("context"), 512);
  const std::string again = temp_path("again.json");
  ASSERT_EQ(run_ttt(args + " --json " + again).exit_code, 0);
  EXPECT_EQ(read_json(again).at("contexts"), j.at("contexts"));  // greedy and seeded: the same answers
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    std::ifstream image(png, std::ios::binary);
    char magic[4] = {};
    image.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  }
}

TEST(DataCli, EvalNiahScoresByLikelihoodInATextHaystack) {
  const std::string model = byte_model();
  std::string text;
  for (int i = 0; i < 50; ++i) text += "Call me Ishmael, said sentence " + std::to_string(i) + ". ";
  const std::string json = temp_path("niah.json");
  const CliRun run = run_ttt("eval niah --model " + model + " --tokenizer bytes --task uuid --haystack " +
                             write_file("essay.txt", text) + " --contexts 600 --depths 2 --samples 4 " +
                             "--mode likelihood --distractors 3 --json " + json);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json j = read_json(json);
  EXPECT_EQ(j.at("ruler_task"), "niah_single_3");
  const nlohmann::json& results = j.at("contexts")[0].at("results");
  ASSERT_EQ(results.size(), 4u);
  for (const nlohmann::json& r : results) {
    const std::vector<double> ll = r.at("log_likelihoods");
    const std::vector<std::string> candidates = r.at("candidates");
    ASSERT_EQ(ll.size(), 4u);
    EXPECT_EQ(candidates[0], r.at("expected"));
    const size_t best = std::max_element(ll.begin(), ll.end()) - ll.begin();
    EXPECT_EQ(r.at("got"), candidates[best]);
    EXPECT_EQ(r.at("correct").get<bool>(), ll[0] > std::max({ll[1], ll[2], ll[3]}));
    for (double value : ll) EXPECT_LT(value, 0);
  }
  EXPECT_EQ(j.at("contexts")[0].at("depths").size(), 2u);  // 0% and 100%
}

TEST(DataCli, EvalNiahInputErrors) {
  const std::string model = byte_model();
  const std::string json = temp_path("never.json");
  const std::string args = "eval niah --model " + model + " --json " + json + " --samples 1 ";
  expect_clean_failure(run_ttt(args + "--tokenizer bytes --contexts 100"), "context 100 tokens");
  expect_clean_failure(run_ttt(args + "--tokenizer bytes --contexts 8Q"), "'8Q'");
  expect_clean_failure(run_ttt(args + "--tokenizer bytes --contexts 1K --depths 0,150"), "--depths");
  expect_clean_failure(run_ttt(args + "--tokenizer cl100k_base --contexts 1K"), "more than the model's vocab_size 258");
  expect_clean_failure(run_ttt(args + "--tokenizer bytes --contexts 1K --task number --haystack /nonexistent.txt"),
                       "no such file");
  expect_clean_failure(run_ttt(args + "--tokenizer bytes --contexts 1K --mode likelihood --distractors 0"),
                       "--distractors");
  EXPECT_LT(test::file_size(json), 0);  // nothing written by a failed run
  expect_clean_failure(run_ttt("eval --tokens x.u32"), "--model is required");
}

TEST(DataCli, BadInputsFailWithOneLine) {
  expect_clean_failure(run_ttt("tokenize --tokenizer nonsense --text hi"), "unknown tokenizer 'nonsense'");
  expect_clean_failure(run_ttt("tokenize --input /nonexistent.txt"), "no such file");
  expect_clean_failure(run_ttt("detokenize --tokenizer bytes --ids '1 999'"), "token 999");
  expect_clean_failure(run_ttt("detokenize --tokenizer bytes --ids 'x'"), "not a token id");
  expect_clean_failure(run_ttt("detokenize --tokenizer bytes"), "exactly one of --tokens and --ids");
  expect_clean_failure(run_ttt("data prepare --input /nonexistent --out " + temp_path("o")), "no such file");
  expect_clean_failure(run_ttt("data train-tokenizer --input /tmp --vocab-size 10 --out x"), "--vocab-size");
  for (const char* args : {"data nosuch", "data nosuch --help"}) {
    expect_clean_failure(run_ttt(args), "ttt: error: unknown command 'data nosuch' (see ttt data --help)");
  }
}

}  // namespace
}  // namespace ttt
