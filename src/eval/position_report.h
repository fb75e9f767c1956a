// Loss by context position over many documents, for several models: the paper's central
// measurement. Per-target NLLs go in; out come per-bucket means with their spread over
// documents, paired differences against the first model, a smoothed per-position curve (the
// paper's Figure 6, loss by token index), the loss by context length T (its Figures 1 and 9)
// and the unigram baseline of the evaluated text. Files: report.json (every number),
// table.md, curve.dat + plot.gp and context.dat + context.gp, rendered to
// loss_by_position.png and loss_by_context.png when gnuplot is installed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt {

// One evaluated document: its tokens (the first is usually bos) and, per model, the NLL of
// each target (tokens[1..]).
struct EvaluatedDocument {
  std::string name;
  std::vector<int64_t> tokens;
  std::vector<std::vector<double>> nll;  // [model][target]
};

struct ReportModel {
  std::string label;  // the variant, or the checkpoint's path when variants repeat
  std::string path;
  std::string variant;
  int64_t params = 0;
  int64_t window = 0;  // 0: attends to everything
  int64_t mini_batch = 0;
  double seconds = 0;  // evaluation time over all documents
};

// Summary of one model in one position bucket over the documents that reach it: the mean
// over documents of each document's mean NLL in the bucket, their standard deviation and
// the standard error of the mean.
struct BucketStats {
  double mean = 0, std = 0, sem = 0;
  int64_t documents = 0, targets = 0;
};

struct PositionReport {
  std::vector<ReportModel> models;
  std::vector<std::string> documents;
  std::vector<int64_t> document_targets;
  std::vector<int64_t> edges;  // bucket i covers target positions [edges[i], edges[i+1])
  int64_t bos_id = 0;          // targets equal to it carry no loss (SPEC section 4)
  double unigram_nll = 0;      // entropy of the evaluated targets' own unigram distribution
  std::vector<BucketStats> overall;                   // [model]: all positions
  std::vector<std::vector<BucketStats>> buckets;      // [model][bucket]
  std::vector<std::vector<std::vector<double>>> document_buckets;  // [model][document][bucket], NaN: none
  std::vector<std::vector<BucketStats>> paired_vs_first;  // [model][bucket]: model minus models[0]
  std::vector<double> curve_positions;                // log-spaced bins: mean context (target position + 1)
  std::vector<std::vector<double>> curve;             // [model][bin]: mean NLL over documents
  // Loss by context length T (tokens, bos included): over the documents of at least T
  // tokens, each document's mean NLL over the targets inside its first T tokens (the first
  // T - 1). Every model is causal, so these are the losses of evaluating at length T.
  std::vector<int64_t> contexts;                     // the lengths reported
  std::vector<int64_t> contexts_left_out;            // asked for, but longer than every document
  std::vector<std::vector<BucketStats>> by_context;  // [model][context]
};

// The paper's context lengths (Figures 1 and 9): 8K to 128K tokens.
inline const std::vector<int64_t> kPaperContexts = {8192, 16384, 32768, 65536, 131072};

// Bucket edges for documents of up to `max_targets` targets: the first mini-batch, then up
// to the window, then doubling. `mini_batch` or `window` 0 leaves that edge out.
std::vector<int64_t> default_bucket_edges(int64_t mini_batch, int64_t window, int64_t max_targets);

// Throws ttt::Error for inconsistent input (no documents, NLL counts that do not match, a
// context below 2 tokens). `contexts` longer than every document go to contexts_left_out.
PositionReport make_position_report(std::vector<ReportModel> models, const std::vector<EvaluatedDocument>& documents,
                                    std::vector<int64_t> edges, int64_t bos_id,
                                    const std::vector<int64_t>& contexts = {});

std::string report_json(const PositionReport& report);
// Markdown: loss per bucket (mean and spread over documents), differences to models[0], and
// loss by context length.
std::string report_table(const PositionReport& report);

// Writes report.json, table.md, curve.dat, plot.gp (and context.dat, context.gp where there
// are contexts) into `dir` (created) and, where gnuplot is on PATH, renders
// loss_by_position.png (and loss_by_context.png). Returns the names of the PNGs drawn (none
// without gnuplot).
std::vector<std::string> write_position_report(const PositionReport& report, const std::string& dir);

}  // namespace ttt
