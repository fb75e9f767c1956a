// scripts/main_job.sh --quick end to end: fetch, tokenizer, three trainings, evaluation.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "test_files.h"

namespace ttt {
namespace {

TEST(MainJob, QuickRunTrainsThreeEqualModelsThatBeatTheUnigramBaseline) {
  test::ScratchDir dir;
  const std::string out = dir.path("results");
  const std::string log = dir.path("log.txt");
  const std::string command = "cd " + std::string(TTT_SOURCE_DIR) + " && TTT_BINARY=" + TTT_BINARY +
                              " bash scripts/main_job.sh --quick --no-build --out " + out + " >" + log + " 2>&1";
  const int status = std::system(command.c_str());
  std::stringstream output;
  output << std::ifstream(log).rdbuf();
  ASSERT_EQ(WEXITSTATUS(status), 0) << output.str();
  EXPECT_NE(output.str().find("results in " + out), std::string::npos) << output.str();

  const nlohmann::json report = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  const double unigram = report.at("unigram_nll").get<double>();
  EXPECT_GT(unigram, 1.0);
  EXPECT_GE(report.at("documents").size(), 1u);
  const auto& models = report.at("models");
  ASSERT_EQ(models.size(), 3u);
  std::set<std::string> variants;
  for (const auto& model : models) {
    variants.insert(model.at("variant").get<std::string>());
    const double loss = model.at("overall").at("mean").get<double>();
    EXPECT_LT(loss, unigram) << model.at("variant") << " does not beat the unigram baseline";
    // Equal parameter counts: ttt-e2e's narrower MLPs pay for its prime MLP (prime norms aside).
    EXPECT_NEAR(model.at("params").get<double>(), models[0].at("params").get<double>(),
                0.001 * models[0].at("params").get<double>());
    EXPECT_EQ(model.at("buckets").size(), report.at("bucket_edges").size() - 1);
  }
  EXPECT_EQ(variants, (std::set<std::string>{"fa", "swa", "ttt-e2e"}));
  for (const char* file : {"table.md", "loss_by_position.png", "tokenizer.model", "runs/ttt-e2e/metrics.jsonl"}) {
    EXPECT_TRUE(std::ifstream(out + "/" + file).good()) << file;
  }
}

}  // namespace
}  // namespace ttt
