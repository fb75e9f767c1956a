// Loss by position: bucket edges, the statistics over documents, paired differences, the
// unigram baseline, bos masking, and the files written.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "eval/position_report.h"
#include "test_util.h"

namespace ttt {
namespace {

using test::expect_error;

TEST(PositionReport, DefaultEdgesFollowMiniBatchWindowThenDoubling) {
  EXPECT_EQ(default_bucket_edges(64, 128, 2047), (std::vector<int64_t>{0, 64, 128, 256, 512, 1024, 2047}));
  EXPECT_EQ(default_bucket_edges(64, 64, 1000), (std::vector<int64_t>{0, 64, 128, 256, 512, 1000}));
  EXPECT_EQ(default_bucket_edges(0, 0, 10), (std::vector<int64_t>{0, 1, 2, 4, 8, 10}));
  EXPECT_EQ(default_bucket_edges(64, 256, 100), (std::vector<int64_t>{0, 64, 100}));
}

// Two models, three documents of different lengths; bos is 0 and the third document has
// a bos target, which carries no loss.
std::vector<EvaluatedDocument> sample_documents() {
  std::vector<EvaluatedDocument> docs(3);
  docs[0] = {"a", {0, 5, 6, 5, 7, 5}, {{1, 2, 3, 4, 5}, {1, 1, 1, 1, 1}}};
  docs[1] = {"b", {0, 6, 6, 6}, {{2, 2, 2}, {3, 3, 3}}};
  docs[2] = {"c", {0, 7, 0, 5, 5}, {{4, 100, 6, 8}, {2, 100, 2, 2}}};
  return docs;
}

std::vector<ReportModel> sample_models() {
  return {{"swa", "swa.safetensors", "swa", 10, 2, 0, 0.5}, {"ttt-e2e", "t.safetensors", "ttt-e2e", 10, 2, 2, 0.7}};
}

TEST(PositionReport, StatisticsOverDocuments) {
  const PositionReport r = make_position_report(sample_models(), sample_documents(), {0, 2, 5}, 0);
  ASSERT_EQ(r.buckets.size(), 2u);
  ASSERT_EQ(r.buckets[0].size(), 2u);
  // Model 0, bucket [0,2): documents a (1,2) b (2,2) c (4; the bos target is masked).
  const BucketStats& first = r.buckets[0][0];
  EXPECT_EQ(first.documents, 3);
  EXPECT_EQ(first.targets, 5);
  EXPECT_DOUBLE_EQ(first.mean, (1.5 + 2 + 4) / 3);
  const double sd = std::sqrt((std::pow(1.5 - 2.5, 2) + std::pow(2 - 2.5, 2) + std::pow(4 - 2.5, 2)) / 2);
  EXPECT_DOUBLE_EQ(first.std, sd);
  EXPECT_DOUBLE_EQ(first.sem, sd / std::sqrt(3.0));
  // Bucket [2,5): a (3,4,5) b (2) c (6,8).
  EXPECT_DOUBLE_EQ(r.buckets[0][1].mean, (4 + 2 + 7) / 3.0);
  EXPECT_EQ(r.buckets[0][1].targets, 6);
  // Per document over all positions: a 3, b 2, c 6.
  EXPECT_DOUBLE_EQ(r.overall[0].mean, (3 + 2 + 6) / 3.0);
  EXPECT_EQ(r.overall[0].targets, 11);
  EXPECT_TRUE(std::isnan(r.document_buckets[0][1][1]) == false);
  // Paired: model 1 minus model 0 in bucket [0,2): a 1-1.5, b 3-2, c 2-4.
  const BucketStats& diff = r.paired_vs_first[1][0];
  EXPECT_DOUBLE_EQ(diff.mean, (-0.5 + 1 - 2) / 3);
  EXPECT_EQ(diff.documents, 3);
  EXPECT_DOUBLE_EQ(r.paired_vs_first[0][0].mean, 0.0);
}

TEST(PositionReport, UnigramBaselineIsTheTargetsEntropy) {
  const PositionReport r = make_position_report(sample_models(), sample_documents(), {0, 5}, 0);
  // Targets without bos: 5 6 5 7 5 | 6 6 6 | 7 5 5 -> 5:5, 6:4, 7:2 of 11.
  double expected = 0;
  for (double count : {5.0, 4.0, 2.0}) expected -= count / 11 * std::log(count / 11);
  EXPECT_NEAR(r.unigram_nll, expected, 1e-12);
}

TEST(PositionReport, CurveAveragesEachPositionOverDocuments) {
  const PositionReport r = make_position_report(sample_models(), sample_documents(), {0, 5}, 0);
  ASSERT_EQ(r.curve_positions.size(), 5u);  // single positions below 8
  EXPECT_DOUBLE_EQ(r.curve_positions[0], 1.0);
  EXPECT_DOUBLE_EQ(r.curve[0][0], (1 + 2 + 4) / 3.0);
  EXPECT_DOUBLE_EQ(r.curve[0][1], (2 + 2) / 2.0);  // c's target 1 is bos
  EXPECT_DOUBLE_EQ(r.curve[0][4], 5.0);
}

TEST(PositionReport, BadInputIsAnError) {
  auto docs = sample_documents();
  docs[1].nll[1].pop_back();
  expect_error([&] { make_position_report(sample_models(), docs, {0, 5}, 0); }, {"b", "one NLL per target"});
  docs = sample_documents();
  docs[0].nll.pop_back();
  expect_error([&] { make_position_report(sample_models(), docs, {0, 5}, 0); }, {"a", "expected 2"});
  expect_error([&] { make_position_report(sample_models(), sample_documents(), {1, 5}, 0); }, {"start at 0"});
  expect_error([&] { make_position_report(sample_models(), {}, {0, 5}, 0); }, {"no documents"});
  docs = sample_documents();
  docs[2].nll[0][0] = std::nan("");
  expect_error([&] { make_position_report(sample_models(), docs, {0, 5}, 0); }, {"c", "non-finite"});
}

// Loss by context length T from hand-computable NLLs: document "flat" has NLL 2 at every
// target, "ramp" has NLL t at target t, "short" (4 tokens) is too short for T = 5 and 8, and
// "masked" has a bos target that carries no loss.
std::vector<EvaluatedDocument> context_documents() {
  std::vector<EvaluatedDocument> docs(4);
  docs[0] = {"flat", {0, 5, 5, 5, 5, 5, 5, 5, 5}, {{2, 2, 2, 2, 2, 2, 2, 2}}};
  docs[1] = {"ramp", {0, 6, 6, 6, 6, 6, 6, 6, 6}, {{0, 1, 2, 3, 4, 5, 6, 7}}};
  docs[2] = {"short", {0, 7, 7, 7}, {{9, 9, 9}}};
  docs[3] = {"masked", {0, 5, 0, 5, 5}, {{1, 50, 3, 5}}};
  return docs;
}

TEST(PositionReport, LossByContextLengthOverDocumentsLongEnough) {
  const std::vector<ReportModel> model = {{"ttt-e2e", "t.safetensors", "ttt-e2e", 10, 2, 2, 0.7}};
  const PositionReport r = make_position_report(model, context_documents(), {0, 8}, 0, {16, 5, 4, 9, 1024});
  EXPECT_EQ(r.contexts, (std::vector<int64_t>{4, 5, 9}));  // sorted; 9 tokens is the longest document
  EXPECT_EQ(r.contexts_left_out, (std::vector<int64_t>{16, 1024}));
  ASSERT_EQ(r.by_context.size(), 1u);
  ASSERT_EQ(r.by_context[0].size(), 3u);
  // T = 4 (targets 0..2): flat 2, ramp (0+1+2)/3 = 1, short 9, masked (1+3)/2 = 2 (target 1 is bos).
  const BucketStats& four = r.by_context[0][0];
  EXPECT_EQ(four.documents, 4);
  EXPECT_EQ(four.targets, 3 + 3 + 3 + 2);
  EXPECT_DOUBLE_EQ(four.mean, (2 + 1 + 9 + 2) / 4.0);
  const double sd = std::sqrt((std::pow(2 - 3.5, 2) * 2 + std::pow(1 - 3.5, 2) + std::pow(9 - 3.5, 2)) / 3);
  EXPECT_DOUBLE_EQ(four.std, sd);
  EXPECT_DOUBLE_EQ(four.sem, sd / 2);
  // T = 5 leaves "short" out: flat 2, ramp (0+1+2+3)/4 = 1.5, masked (1+3+5)/3 = 3.
  EXPECT_EQ(r.by_context[0][1].documents, 3);
  EXPECT_DOUBLE_EQ(r.by_context[0][1].mean, (2 + 1.5 + 3) / 3);
  // T = 9: flat 2 and ramp 3.5 only.
  EXPECT_EQ(r.by_context[0][2].documents, 2);
  EXPECT_DOUBLE_EQ(r.by_context[0][2].mean, 2.75);
  EXPECT_DOUBLE_EQ(r.by_context[0][2].sem, 0.75);  // sd of {2, 3.5} is 1.5 / sqrt(2); over sqrt(2)

  const std::string table = report_table(r);
  EXPECT_NE(table.find("Figures 1 and 9"), std::string::npos) << table;
  EXPECT_NE(table.find("Figure 6"), std::string::npos) << table;
  EXPECT_NE(table.find("| ttt-e2e | 3.500 +- "), std::string::npos) << table;
  EXPECT_NE(table.find("left out, longer than every document: 16, 1K."), std::string::npos) << table;
  expect_error([&] { make_position_report(model, context_documents(), {0, 8}, 0, {1}); }, {"at least 2 tokens"});
}

TEST(PositionReport, WritesEveryNumberAndAPlot) {
  const PositionReport r = make_position_report(sample_models(), sample_documents(), {0, 2, 5}, 0, {4, 6, 8192});
  test::ScratchDir dir;
  const std::string out = dir.path("report");
  const std::vector<std::string> pngs = write_position_report(r, out);
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  EXPECT_EQ(j.at("bucket_edges"), nlohmann::json({0, 2, 5}));
  EXPECT_DOUBLE_EQ(j.at("unigram_nll").get<double>(), r.unigram_nll);
  EXPECT_DOUBLE_EQ(j.at("models")[1].at("buckets")[1].at("mean").get<double>(), r.buckets[1][1].mean);
  EXPECT_EQ(j.at("models")[0].at("document_buckets").size(), 3u);
  EXPECT_EQ(j.at("documents")[2].at("targets"), 4);
  EXPECT_EQ(j.at("contexts"), nlohmann::json({4, 6}));
  EXPECT_EQ(j.at("contexts_left_out"), nlohmann::json({8192}));
  EXPECT_DOUBLE_EQ(j.at("models")[1].at("by_context")[1].at("mean").get<double>(), r.by_context[1][1].mean);
  std::ifstream table(out + "/table.md");
  std::string text((std::istreambuf_iterator<char>(table)), {});
  EXPECT_NE(text.find("| ttt-e2e - swa |"), std::string::npos) << text;
  EXPECT_NE(text.find("2-5"), std::string::npos) << text;
  EXPECT_TRUE(std::ifstream(out + "/plot.gp").good());
  EXPECT_TRUE(std::ifstream(out + "/curve.dat").good());
  EXPECT_TRUE(std::ifstream(out + "/context.gp").good());
  std::ifstream context_data(out + "/context.dat");
  std::string header, line;
  std::getline(context_data, header);
  std::getline(context_data, line);
  EXPECT_EQ(line.rfind("4 ", 0), 0u) << line;
  // gnuplot draws the PNGs wherever it is installed (scripts/setup.sh installs it).
  const bool has_gnuplot = std::system("command -v gnuplot >/dev/null 2>&1") == 0;
  if (!has_gnuplot) {
    EXPECT_TRUE(pngs.empty());
    return;
  }
  ASSERT_EQ(pngs, (std::vector<std::string>{"loss_by_position.png", "loss_by_context.png"}));
  for (const std::string& png : pngs) {
    std::ifstream image(out + "/" + png, std::ios::binary);
    char magic[4] = {};
    image.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << png;
  }
}

}  // namespace
}  // namespace ttt
