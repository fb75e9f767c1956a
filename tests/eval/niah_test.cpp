// RULER's NIAH prompts and scoring, apart from any model: exact prompt lengths with real
// tokenizers, the needle at the asked depth, RULER's template text, determinism, scoring.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include <nlohmann/json.hpp>

#include "eval/niah.h"
#include "test_files.h"
#include "text/load_tokenizer.h"

namespace ttt::niah {
namespace {

using test::expect_error;

// A text haystack of numbered sentences of different lengths.
std::string essay() {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "Sentence " + std::to_string(i) + (i % 3 ? " is short." : " goes on a little longer than the others do.");
    text += i % 7 == 6 ? "\n\n" : "  ";
  }
  return text;
}

struct Built {
  std::unique_ptr<text::Tokenizer> tokenizer;
  std::vector<Sample> samples;
};

Built build(const std::string& tokenizer_name, Spec spec) {
  Built built{text::load_tokenizer(tokenizer_name), {}};
  const text::Tokenizer& tokenizer = *built.tokenizer;
  const Encode encode = [&tokenizer](std::string_view text) {
    const std::vector<text::TokenId> ids = tokenizer.encode(text);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  built.samples = make_samples(spec, encode, tokenizer.bos_id(), essay());
  return built;
}

std::string decode(const text::Tokenizer& tokenizer, const std::vector<int64_t>& ids) {
  const std::vector<text::TokenId> tokens(ids.begin(), ids.end());
  return tokenizer.decode(tokens, /*skip_special=*/true);
}

Spec spec_of(Task task, std::vector<int64_t> contexts, std::vector<double> depths, int64_t samples) {
  Spec spec;
  spec.task = task;
  spec.contexts = std::move(contexts);
  spec.depths = std::move(depths);
  spec.samples = samples;
  spec.seed = 7;
  return spec;
}

// RULER's niah template with one needle and one question (constants.py, niah.py's
// singular forms), written out here by hand.
std::string ruler_before(const std::string& kind) {
  return "A special magic " + kind +
         " is hidden within the following text. Make sure to memorize it. I will quiz "
         "you about the " +
         kind + " afterwards.\n";
}
std::string ruler_question(const std::string& kind, const std::string& key) {
  return "\nWhat is the special magic " + kind + " for " + key + " mentioned in the provided text? The special magic " +
         kind + " for " + key + " mentioned in the provided text is";
}

TEST(Niah, PromptsHaveExactlyTheContextLengthInTokens) {
  for (const std::string tokenizer : {"bytes", "llama3"}) {
    for (Task task : {Task::kPasskey, Task::kNumber, Task::kUuid}) {
      const Built built = build(tokenizer, spec_of(task, {700, 1000, 2048, 4096}, {0, 33, 100}, 3));
      ASSERT_EQ(built.samples.size(), 12u);
      for (const Sample& s : built.samples) {
        EXPECT_EQ(static_cast<int64_t>(s.prompt.size()), s.context) << tokenizer << " " << task_name(task);
        EXPECT_EQ(s.prompt[0], built.tokenizer->bos_id());
        const std::string kind = task == Task::kUuid ? "uuid" : "number";
        const std::string text = decode(*built.tokenizer, s.prompt);
        EXPECT_EQ(text.rfind(ruler_before(kind), 0), 0u) << text.substr(0, 200);
        const std::string question = ruler_question(kind, s.key);
        ASSERT_GE(text.size(), question.size());
        EXPECT_EQ(text.substr(text.size() - question.size()), question);
        const std::string needle = "One of the special magic " + kind + "s for " + s.key + " is: " + s.values[0] + ".";
        EXPECT_NE(text.find(needle), std::string::npos) << tokenizer << " " << s.context << " " << s.depth;
        // The needle's tokens are where the sample says.
        const std::string from_needle =
            decode(*built.tokenizer, {s.prompt.begin() + s.needle_position, s.prompt.end()});
        EXPECT_NE(from_needle.find(needle), std::string::npos);
        EXPECT_LE(from_needle.find(needle), 1u);  // after its separator, if any
      }
    }
  }
}

// The needle lands at the asked fraction of the haystack, measured here in the decoded text
// (bytes: one token per byte), within one sentence.
TEST(Niah, NeedleLandsAtTheAskedDepth) {
  const std::vector<double> depths = {0, 10, 25, 50, 75, 90, 100};
  for (Task task : {Task::kPasskey, Task::kNumber}) {
    const Built built = build("bytes", spec_of(task, {3000, 8000}, depths, 7));
    for (const Sample& s : built.samples) {
      const std::string text = decode(*built.tokenizer, s.prompt);
      const size_t begin = ruler_before("number").size();
      const size_t end = text.size() - ruler_question("number", s.key).size();
      const size_t at = text.find("One of the special magic numbers");
      ASSERT_NE(at, std::string::npos);
      const size_t needle_length = text.find('.', at) + 1 - at;
      const double haystack = static_cast<double>(end - begin - needle_length);
      const double measured = 100.0 * static_cast<double>(at - begin) / haystack;
      // Within two of the longest sentences (bytes and separator): RULER counts depth in
      // sentences, and the haystack ends in a sentence cut short.
      const double sentence = task == Task::kPasskey ? 91 : 51;
      EXPECT_NEAR(measured, s.depth, 100.0 * 2 * sentence / haystack) << task_name(task) << " " << s.context;
      EXPECT_NEAR(s.needle_depth, measured, 100.0 * 2 / haystack);
      if (s.depth == 0) {
        EXPECT_EQ(at, begin);
      }
      // A sentence boundary: the needle follows a full stop and its separator (or opens the context).
      if (at > begin) {
        EXPECT_EQ(text.substr(at - 2, 2), task == Task::kPasskey ? ".\n" : ". ");
      }
    }
  }
}

TEST(Niah, HaystacksAreRulersSentences) {
  const Built noise = build("bytes", spec_of(Task::kPasskey, {1000}, {50}, 1));
  const std::string text = decode(*noise.tokenizer, noise.samples[0].prompt);
  const std::string line = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
  EXPECT_NE(text.find(ruler_before("number") + line + "\n" + line + "\n"), std::string::npos) << text;
  // Essays: whitespace runs become single spaces, the text from its start.
  const Built essay_built = build("bytes", spec_of(Task::kNumber, {1000}, {100}, 1));
  const std::string essay_text = decode(*essay_built.tokenizer, essay_built.samples[0].prompt);
  EXPECT_NE(essay_text.find(ruler_before("number") +
                            "Sentence 0 goes on a little longer than the others do. Sentence 1 is short."),
            std::string::npos)
      << essay_text;
  EXPECT_EQ(essay_text.find("\n\n"), std::string::npos);
}

TEST(Niah, KeysValuesAndDistractors) {
  Spec spec = spec_of(Task::kPasskey, {1000}, {50}, 20);
  spec.distractors = 5;
  for (Task task : {Task::kPasskey, Task::kUuid}) {
    spec.task = task;
    const Built built = build("bytes", spec);
    const std::regex value(task == Task::kUuid ? "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
                                               : "[1-9][0-9]{6}");
    for (const Sample& s : built.samples) {
      EXPECT_TRUE(std::regex_match(s.key, std::regex("[a-z]+-[a-z]+"))) << s.key;
      ASSERT_EQ(s.values.size(), 6u);
      ASSERT_EQ(s.value_tokens.size(), 6u);
      for (size_t v = 0; v < s.values.size(); ++v) {
        EXPECT_TRUE(std::regex_match(s.values[v], value)) << s.values[v];
        EXPECT_EQ(decode(*built.tokenizer, s.value_tokens[v]), " " + s.values[v]);
        for (size_t w = 0; w < v; ++w) EXPECT_NE(s.values[v], s.values[w]);
      }
    }
  }
}

TEST(Niah, TheSeedFixesEverySample) {
  const Spec spec = spec_of(Task::kNumber, {600, 900}, {0, 50, 100}, 4);
  const Built a = build("bytes", spec), b = build("bytes", spec);
  Spec other_seed = spec, more = spec;
  other_seed.seed = 8;
  more.contexts = {900};
  const Built c = build("bytes", other_seed), d = build("bytes", more);
  ASSERT_EQ(a.samples.size(), 8u);
  for (size_t i = 0; i < a.samples.size(); ++i) {
    EXPECT_EQ(a.samples[i].prompt, b.samples[i].prompt);
    EXPECT_EQ(a.samples[i].values, b.samples[i].values);
    EXPECT_NE(a.samples[i].values[0], c.samples[i].values[0]);
    EXPECT_EQ(a.samples[i].depth, spec.depths[i % 4 % 3]);
  }
  // A context's samples do not depend on the other contexts asked for.
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(d.samples[i].prompt, a.samples[4 + i].prompt);
}

TEST(Niah, SamplesRoundTripThroughFiles) {
  Spec spec = spec_of(Task::kUuid, {500, 800}, {0, 100}, 2);
  spec.distractors = 2;
  const Built built = build("bytes", spec);
  test::ScratchDir dir;
  write_samples(built.samples, dir.dir());
  const std::vector<Sample> read = read_samples(dir.dir());
  ASSERT_EQ(read.size(), built.samples.size());
  for (size_t i = 0; i < read.size(); ++i) {
    EXPECT_EQ(read[i].prompt, built.samples[i].prompt);
    EXPECT_EQ(read[i].value_tokens, built.samples[i].value_tokens);
    EXPECT_EQ(read[i].key, built.samples[i].key);
    EXPECT_EQ(read[i].needle_position, built.samples[i].needle_position);
  }
  const Spec back = Spec::from_json(spec.to_json(), "spec.json");
  EXPECT_EQ(back.contexts, spec.contexts);
  EXPECT_EQ(back.depths, spec.depths);
  EXPECT_EQ(back.distractors, 2);
  EXPECT_EQ(back.task, Task::kUuid);
}

TEST(Niah, DepthsAreRulersGrid) {
  const std::vector<double> forty = evenly_spaced_depths(40);
  ASSERT_EQ(forty.size(), 40u);
  EXPECT_EQ(forty.front(), 0);
  EXPECT_EQ(forty[1], 3);    // 100/39 = 2.56
  EXPECT_EQ(forty[20], 51);  // 2000/39 = 51.3
  EXPECT_EQ(forty.back(), 100);
  EXPECT_EQ(evenly_spaced_depths(5), (std::vector<double>{0, 25, 50, 75, 100}));
}

TEST(Niah, ExactMatchScoring) {
  EXPECT_TRUE(string_match("1234567", " 1234567."));
  EXPECT_TRUE(string_match("ab12-CD", "the value is AB12-cd"));
  EXPECT_FALSE(string_match("1234567", " 123456"));
  EXPECT_FALSE(string_match("1234567", ""));
}

// A fake scorer that remembers the prompt perfectly (a candidate's likelihood: whether it
// follows "is: " in the prompt) gets every sample right; one that ignores the prompt gets
// none (ties count as wrong).
TEST(Niah, LikelihoodScoringPicksTheMostLikelyValue) {
  EXPECT_TRUE(answer_most_likely({-1.0, -2.0, -3.0}));
  EXPECT_FALSE(answer_most_likely({-2.0, -1.0, -3.0}));
  EXPECT_FALSE(answer_most_likely({-1.0, -1.0}));

  Spec spec = spec_of(Task::kPasskey, {600, 1200}, {0, 50, 100}, 6);
  spec.distractors = 4;
  const Built built = build("bytes", spec);
  std::vector<Result> remembering, ignoring;
  for (const Sample& s : built.samples) {
    const std::string text = decode(*built.tokenizer, s.prompt);
    Result r, blind;
    for (const std::string& value : s.values) {
      r.log_likelihoods.push_back(text.find("is: " + value + ".") != std::string::npos ? -1.0 : -10.0);
      blind.log_likelihoods.push_back(-5.0);
    }
    r.correct = answer_most_likely(r.log_likelihoods);
    blind.correct = answer_most_likely(blind.log_likelihoods);
    remembering.push_back(r);
    ignoring.push_back(blind);
  }
  const Summary good = summarize(spec, built.samples, remembering), bad = summarize(spec, built.samples, ignoring);
  EXPECT_EQ(good.accuracy, (std::vector<double>{1.0, 1.0}));
  EXPECT_EQ(bad.accuracy, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(good.samples, (std::vector<int64_t>{6, 6}));
}

TEST(Niah, SummaryPerContextAndDepth) {
  const Spec spec = spec_of(Task::kPasskey, {600, 900}, {100, 0, 50}, 3);
  const Built built = build("bytes", spec);
  // Context 600: depths 100, 0, 50 -> right, wrong, right; context 900: all wrong.
  std::vector<Result> results(6);
  results[0].correct = true;
  results[2].correct = true;
  const Summary summary = summarize(spec, built.samples, results);
  EXPECT_EQ(summary.depths, (std::vector<double>{0, 50, 100}));
  EXPECT_DOUBLE_EQ(summary.accuracy[0], 2.0 / 3);
  EXPECT_DOUBLE_EQ(summary.accuracy[1], 0.0);
  EXPECT_EQ(summary.depth_accuracy[0], (std::vector<double>{0, 1, 1}));
  const RunInfo run{"m.safetensors", "ttt-e2e", "bytes", "generate", 1.0};
  const std::string table = report_table(spec, run, summary);
  EXPECT_NE(table.find("| all | **0.67** | **0.00** |"), std::string::npos) << table;
  EXPECT_NE(table.find("| 50% | 1.00 | 0.00 |"), std::string::npos) << table;
  // Depths nobody asked for at a context are gaps, not zeros.
  const Spec one = spec_of(Task::kPasskey, {600}, {0, 50, 100}, 1);
  const Summary sparse = summarize(one, {built.samples[1]}, {Result{}});
  EXPECT_TRUE(std::isnan(sparse.depth_accuracy[0][1]));
}

// samples.json comes from another process (ttt-data): damage is a one-line error naming it.
TEST(Niah, DamagedSamplesAreRefused) {
  const Built built = build("bytes", spec_of(Task::kPasskey, {600, 700}, {50}, 1));
  test::ScratchDir dir;
  write_samples(built.samples, dir.dir());
  const std::string path = dir.path("samples.json"), good = test::read_bytes(path);
  ASSERT_EQ(read_samples(dir.dir()).size(), 2u);
  const auto with_first_context = [&](const std::string& context) {
    std::string text = good;
    const size_t at = text.find("\"context\":") + 10;
    return text.replace(at, text.find(',', at) - at, context);
  };
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {good.substr(0, good.size() / 2), "not valid JSON"},
      {good.substr(0, 20) + std::string(1, '\0') + good.substr(21), "NUL byte"},
      {"{}", "not a list of samples"},
      {"[{}]", "'context' not found"},
      {with_first_context("1e300"), "a sample's context must be an integer, got 1e+300"},
      {with_first_context("-600"), "shorter than the samples"},
      {with_first_context("18446744073709551615"), "a sample's context must be an integer, got 18446744073709551615"},
      {with_first_context("500"), "longer than the samples"},
  };
  for (const auto& [text, fragment] : damaged) {
    test::write_bytes(path, text);
    expect_error([&] { read_samples(dir.dir()); }, {dir.dir(), fragment});
  }
}

// The seed is a uint64 in the spec file; other numbers are refused, naming it.
TEST(Niah, SpecKeepsEverySeed) {
  Spec spec = spec_of(Task::kPasskey, {600}, {50}, 1);
  for (const uint64_t seed : {uint64_t(0), uint64_t(1) << 63, ~uint64_t(0)}) {
    spec.seed = seed;
    EXPECT_EQ(Spec::from_json(spec.to_json(), "spec.json").seed, seed);
  }
  for (const std::string seed : {"-1", "2.5", "\"7\""}) {
    nlohmann::json j = nlohmann::json::parse(spec.to_json());
    j["seed"] = nlohmann::json::parse(seed);
    expect_error([&] { Spec::from_json(j.dump(), "spec.json"); },
                 {"spec.json: malformed NIAH spec: seed must be an integer >= 0, got " + seed});
  }
}

TEST(Niah, ClearErrors) {
  expect_error([] { build("bytes", spec_of(Task::kPasskey, {200}, {50}, 1)); }, {"context 200 tokens", "template"});
  expect_error([] { build("llama3", spec_of(Task::kUuid, {40}, {50}, 1)); }, {"context 40 tokens"});
  expect_error([] { parse_task("multikey"); }, {"multikey", "passkey, number or uuid"});
  expect_error([] { Spec::from_json("{\"task\": \"passkey\"}", "spec.json"); }, {"spec.json", "malformed NIAH spec"});
  expect_error([] { Spec::from_json("{\"task\": \"pass", "spec.json"); },
               {"spec.json", "malformed NIAH spec", "not valid JSON"});
  expect_error([] { Spec::from_json(std::string(100, '['), "spec.json"); }, {"spec.json", "nested deeper"});
  std::string unknown_task = spec_of(Task::kPasskey, {600}, {50}, 1).to_json();
  unknown_task.replace(unknown_task.find("passkey"), 7, "multikey");
  expect_error([&] { Spec::from_json(unknown_task, "spec.json"); }, {"spec.json", "multikey"});
  const auto tokenizer = text::load_tokenizer("bytes");
  const Encode encode = [&tokenizer](std::string_view text) {
    const std::vector<text::TokenId> ids = tokenizer->encode(text);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  Spec spec = spec_of(Task::kNumber, {1000}, {50}, 1);
  spec.haystack_path = "empty.txt";
  expect_error([&] { make_samples(spec, encode, 1, " \n\t "); }, {"empty.txt", "no words"});
}

}  // namespace
}  // namespace ttt::niah
