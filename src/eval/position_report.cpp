#include "eval/position_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "eval/plot.h"
#include "io/atomic_file.h"
#include "io/paths.h"

namespace ttt {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

BucketStats stats_of(const std::vector<double>& values, int64_t targets) {
  BucketStats s;
  s.targets = targets;
  s.documents = static_cast<int64_t>(values.size());
  if (values.empty()) {
    s.mean = s.std = s.sem = kNaN;
    return s;
  }
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  // The sample standard deviation; one document has no spread to speak of.
  s.std = values.size() > 1 ? std::sqrt(squares / static_cast<double>(values.size() - 1)) : 0.0;
  s.sem = s.std / std::sqrt(static_cast<double>(values.size()));
  return s;
}

// Log-spaced bins over target positions [0, max_targets): single positions first, then
// four bins per doubling, so that the plot is smooth on a logarithmic axis.
std::vector<int64_t> curve_bin_edges(int64_t max_targets) {
  std::vector<int64_t> edges;
  for (double x = 0; static_cast<int64_t>(x) < max_targets;) {
    const auto edge = static_cast<int64_t>(x);
    if (edges.empty() || edge > edges.back()) edges.push_back(edge);
    x = x < 8 ? x + 1 : x * std::pow(2.0, 0.25);
  }
  edges.push_back(max_targets);
  return edges;
}

std::string format_loss(double value) {
  if (std::isnan(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", value);
  return text;
}

std::string format_signed(double value) {
  if (std::isnan(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%+.3f", value);
  return text;
}

std::string bucket_name(int64_t begin, int64_t end) {
  return std::to_string(begin) + "-" + std::to_string(end);
}

nlohmann::json stats_json(const BucketStats& s) {
  return {{"mean", s.mean}, {"std", s.std}, {"sem", s.sem}, {"documents", s.documents}, {"targets", s.targets}};
}

}  // namespace

std::vector<int64_t> default_bucket_edges(int64_t mini_batch, int64_t window, int64_t max_targets) {
  require(max_targets > 0, "no targets to bucket");
  std::vector<int64_t> edges = {0};
  auto add = [&](int64_t edge) {
    if (edge > edges.back() && edge < max_targets) edges.push_back(edge);
  };
  if (mini_batch > 0) add(mini_batch);
  if (window > 0) add(window);
  for (int64_t edge = std::max<int64_t>(2 * edges.back(), 1); edge < max_targets; edge *= 2) add(edge);
  edges.push_back(max_targets);
  return edges;
}

PositionReport make_position_report(std::vector<ReportModel> models, const std::vector<EvaluatedDocument>& documents,
                                    std::vector<int64_t> edges, int64_t bos_id, const std::vector<int64_t>& contexts) {
  require(!models.empty(), "no models to report");
  require(!documents.empty(), "no documents to report");
  require(edges.size() >= 2 && edges.front() == 0 && std::is_sorted(edges.begin(), edges.end()) &&
              std::adjacent_find(edges.begin(), edges.end()) == edges.end(),
          "bucket edges must start at 0 and increase");
  const size_t n_models = models.size(), n_docs = documents.size(), n_buckets = edges.size() - 1;

  PositionReport report;
  report.models = std::move(models);
  report.edges = std::move(edges);
  report.bos_id = bos_id;
  int64_t max_targets = 0;
  for (const EvaluatedDocument& doc : documents) {
    require(doc.tokens.size() >= 2, doc.name + ": fewer than 2 tokens");
    require(doc.nll.size() == n_models, doc.name + ": NLLs for " + std::to_string(doc.nll.size()) + " models, expected " +
                                            std::to_string(n_models));
    for (const auto& nll : doc.nll) {
      require(nll.size() == doc.tokens.size() - 1, doc.name + ": one NLL per target expected");
    }
    report.documents.push_back(doc.name);
    report.document_targets.push_back(static_cast<int64_t>(doc.tokens.size() - 1));
    max_targets = std::max(max_targets, report.document_targets.back());
  }

  // The unigram baseline: the cross-entropy of the targets under their own frequencies.
  std::map<int64_t, int64_t> counts;
  int64_t counted = 0;
  for (const EvaluatedDocument& doc : documents) {
    for (size_t t = 1; t < doc.tokens.size(); ++t) {
      if (doc.tokens[t] == bos_id) continue;
      ++counts[doc.tokens[t]];
      ++counted;
    }
  }
  require(counted > 0, "every target is bos: nothing to evaluate");
  for (const auto& [token, count] : counts) {
    const double p = static_cast<double>(count) / static_cast<double>(counted);
    report.unigram_nll -= p * std::log(p);
  }

  const std::vector<int64_t> bins = curve_bin_edges(max_targets);
  const size_t n_bins = bins.size() - 1;
  for (size_t b = 0; b < n_bins; ++b) {
    report.curve_positions.push_back(0.5 * static_cast<double>(bins[b] + bins[b + 1] - 1) + 1.0);
  }

  report.document_buckets.assign(n_models, std::vector<std::vector<double>>(n_docs, std::vector<double>(n_buckets, kNaN)));
  for (size_t m = 0; m < n_models; ++m) {
    std::vector<double> doc_means;
    std::vector<std::vector<double>> bucket_values(n_buckets);
    std::vector<int64_t> bucket_targets(n_buckets, 0);
    int64_t all_targets = 0;
    std::vector<double> bin_sum(n_bins, 0.0);
    std::vector<int64_t> bin_count(n_bins, 0);
    for (size_t d = 0; d < n_docs; ++d) {
      const EvaluatedDocument& doc = documents[d];
      const std::vector<double>& nll = doc.nll[m];
      double doc_sum = 0;
      int64_t doc_count = 0;
      size_t bin = 0;
      for (size_t b = 0; b < n_buckets; ++b) {
        double sum = 0;
        int64_t count = 0;
        const auto end = std::min<int64_t>(report.edges[b + 1], static_cast<int64_t>(nll.size()));
        for (int64_t t = report.edges[b]; t < end; ++t) {
          if (doc.tokens[t + 1] == bos_id) continue;
          require(std::isfinite(nll[t]), doc.name + ": non-finite NLL at target " + std::to_string(t));
          sum += nll[t];
          ++count;
          while (bins[bin + 1] <= t) ++bin;
          bin_sum[bin] += nll[t];
          ++bin_count[bin];
        }
        if (count > 0) {
          report.document_buckets[m][d][b] = sum / static_cast<double>(count);
          bucket_values[b].push_back(sum / static_cast<double>(count));
          bucket_targets[b] += count;
        }
        doc_sum += sum;
        doc_count += count;
      }
      if (doc_count > 0) doc_means.push_back(doc_sum / static_cast<double>(doc_count));
      all_targets += doc_count;
    }
    report.overall.push_back(stats_of(doc_means, all_targets));
    std::vector<BucketStats> per_bucket;
    for (size_t b = 0; b < n_buckets; ++b) per_bucket.push_back(stats_of(bucket_values[b], bucket_targets[b]));
    report.buckets.push_back(per_bucket);
    std::vector<double> curve;
    for (size_t b = 0; b < n_bins; ++b) {
      curve.push_back(bin_count[b] ? bin_sum[b] / static_cast<double>(bin_count[b]) : kNaN);
    }
    report.curve.push_back(curve);
  }

  for (size_t m = 0; m < n_models; ++m) {
    std::vector<BucketStats> paired;
    for (size_t b = 0; b < n_buckets; ++b) {
      std::vector<double> differences;
      for (size_t d = 0; d < n_docs; ++d) {
        const double mine = report.document_buckets[m][d][b], first = report.document_buckets[0][d][b];
        if (!std::isnan(mine) && !std::isnan(first)) differences.push_back(mine - first);
      }
      paired.push_back(stats_of(differences, 0));
    }
    report.paired_vs_first.push_back(paired);
  }

  std::vector<int64_t> asked = contexts;
  std::sort(asked.begin(), asked.end());
  asked.erase(std::unique(asked.begin(), asked.end()), asked.end());
  for (int64_t context : asked) {
    require(context >= 2, "context length " + std::to_string(context) + ": at least 2 tokens (one target) needed");
    (context <= max_targets + 1 ? report.contexts : report.contexts_left_out).push_back(context);
  }
  for (size_t m = 0; m < n_models; ++m) {
    std::vector<BucketStats> per_context;
    for (int64_t context : report.contexts) {
      std::vector<double> doc_means;
      int64_t targets = 0;
      for (const EvaluatedDocument& doc : documents) {
        if (static_cast<int64_t>(doc.tokens.size()) < context) continue;
        double sum = 0;
        int64_t count = 0;
        for (int64_t t = 0; t + 1 < context; ++t) {
          if (doc.tokens[t + 1] == bos_id) continue;
          sum += doc.nll[m][t];
          ++count;
        }
        if (count > 0) doc_means.push_back(sum / static_cast<double>(count));
        targets += count;
      }
      per_context.push_back(stats_of(doc_means, targets));
    }
    report.by_context.push_back(per_context);
  }
  return report;
}

std::string report_json(const PositionReport& report) {
  using nlohmann::json;
  json models = json::array();
  for (size_t m = 0; m < report.models.size(); ++m) {
    const ReportModel& model = report.models[m];
    json buckets = json::array(), paired = json::array(), per_document = json::array(), by_context = json::array();
    for (size_t b = 0; b < report.buckets[m].size(); ++b) {
      buckets.push_back(stats_json(report.buckets[m][b]));
      paired.push_back(stats_json(report.paired_vs_first[m][b]));
    }
    for (const auto& values : report.document_buckets[m]) per_document.push_back(values);
    for (const BucketStats& s : report.by_context[m]) by_context.push_back(stats_json(s));
    models.push_back({{"label", model.label},
                      {"path", model.path},
                      {"variant", model.variant},
                      {"params", model.params},
                      {"window", model.window},
                      {"mini_batch", model.mini_batch},
                      {"eval_seconds", model.seconds},
                      {"overall", stats_json(report.overall[m])},
                      {"buckets", buckets},
                      {"minus_first_model", paired},
                      {"document_buckets", per_document},
                      {"curve", report.curve[m]},
                      {"by_context", by_context}});
  }
  json documents = json::array();
  for (size_t d = 0; d < report.documents.size(); ++d) {
    documents.push_back({{"name", report.documents[d]}, {"targets", report.document_targets[d]}});
  }
  const json j = {{"format", "ttt-position-report/1"},
                  {"loss", "mean NLL (nats) per target; bucket stats are over documents"},
                  {"bucket_edges", report.edges},
                  {"bos_id", report.bos_id},
                  {"unigram_nll", report.unigram_nll},
                  {"documents", documents},
                  {"curve_positions", report.curve_positions},
                  {"contexts", report.contexts},
                  {"contexts_left_out", report.contexts_left_out},
                  {"models", models}};
  return j.dump(1) + "\n";
}

std::string report_table(const PositionReport& report) {
  std::ostringstream out;
  const size_t n_buckets = report.edges.size() - 1;
  int64_t targets = 0;
  for (int64_t t : report.document_targets) targets += t;
  out << "Loss (mean NLL in nats per token) by target position (the paper's Figure 6, loss by token index), over "
      << report.documents.size() << " documents (" << targets
      << " targets): mean (standard deviation over documents).\n"
      << "Unigram baseline of the evaluated text: " << format_loss(report.unigram_nll) << ".\n\n";
  out << "| model | params | all";
  for (size_t b = 0; b < n_buckets; ++b) out << " | " << bucket_name(report.edges[b], report.edges[b + 1]);
  out << " |\n|:--|--:|--:";
  for (size_t b = 0; b < n_buckets; ++b) out << "|--:";
  out << "|\n";
  for (size_t m = 0; m < report.models.size(); ++m) {
    out << "| " << report.models[m].label << " | " << report.models[m].params << " | "
        << format_loss(report.overall[m].mean) << " (" << format_loss(report.overall[m].std) << ")";
    for (const BucketStats& s : report.buckets[m]) out << " | " << format_loss(s.mean) << " (" << format_loss(s.std) << ")";
    out << " |\n";
  }
  out << "| documents | | " << report.overall[0].documents;
  for (const BucketStats& s : report.buckets[0]) out << " | " << s.documents;
  out << " |\n";
  if (report.models.size() > 1) {
    out << "\nPaired difference to " << report.models[0].label
        << " per bucket (mean over documents +- standard error; negative: lower loss than "
        << report.models[0].label << ").\n\n| model";
    for (size_t b = 0; b < n_buckets; ++b) out << " | " << bucket_name(report.edges[b], report.edges[b + 1]);
    out << " |\n|:--";
    for (size_t b = 0; b < n_buckets; ++b) out << "|--:";
    out << "|\n";
    for (size_t m = 1; m < report.models.size(); ++m) {
      out << "| " << report.models[m].label << " - " << report.models[0].label;
      for (const BucketStats& s : report.paired_vs_first[m]) {
        out << " | " << format_signed(s.mean) << " +- " << format_loss(s.sem);
      }
      out << " |\n";
    }
  }
  if (!report.contexts.empty()) {
    out << "\nLoss by context length T (the paper's Figures 1 and 9): over the documents of at least T tokens, "
           "each one's mean NLL over its first T tokens; mean +- standard error over documents.\n\n| model";
    for (int64_t context : report.contexts) out << " | " << context_label(context);
    out << " |\n|:--";
    for (size_t c = 0; c < report.contexts.size(); ++c) out << "|--:";
    out << "|\n";
    for (size_t m = 0; m < report.models.size(); ++m) {
      out << "| " << report.models[m].label;
      for (const BucketStats& s : report.by_context[m])
        out << " | " << format_loss(s.mean) << " +- " << format_loss(s.sem);
      out << " |\n";
    }
    out << "| documents";
    for (const BucketStats& s : report.by_context[0]) out << " | " << s.documents;
    out << " |\n";
  }
  if (!report.contexts_left_out.empty()) {
    out << "\nContext lengths left out, longer than every document:";
    for (size_t c = 0; c < report.contexts_left_out.size(); ++c) {
      out << (c ? ", " : " ") << context_label(report.contexts_left_out[c]);
    }
    out << ".\n";
  }
  return out.str();
}

std::vector<std::string> write_position_report(const PositionReport& report, const std::string& dir) {
  io::make_directories(dir);
  io::write_text_file(dir + "/report.json", report_json(report));
  io::write_text_file(dir + "/table.md", report_table(report));

  std::ostringstream data;
  data << "# position";
  for (const ReportModel& model : report.models) data << " " << model.label;
  data << "\n";
  for (size_t b = 0; b < report.curve_positions.size(); ++b) {
    data << report.curve_positions[b];
    for (const auto& curve : report.curve) data << " " << (std::isnan(curve[b]) ? std::string("NaN") : std::to_string(curve[b]));
    data << "\n";
  }
  io::write_text_file(dir + "/curve.dat", data.str());

  int64_t window = 0;
  for (const ReportModel& model : report.models) window = std::max(window, model.window);
  std::ostringstream plot;
  plot << "# Loss against position; run `gnuplot plot.gp` in this folder.\n"
       << "set terminal pngcairo size 900,560 noenhanced\nset output 'loss_by_position.png'\n"
       << "set title 'Loss by token index (as in Figure 6 of the paper) over " << report.documents.size()
       << " held-out documents'\n"
       << "set xlabel 'context: tokens seen, bos included'\nset ylabel 'mean NLL (nats)'\n"
       << "set logscale x 2\nset grid\nset key top right\nset datafile missing 'NaN'\n"
       << "set xrange [1:*]\n";
  if (window > 0) {
    plot << "set arrow from " << window << ", graph 0 to " << window << ", graph 1 nohead dashtype 2\n"
         << "set label 'window' at " << window << ", graph 0.95 offset 0.5,0\n";
  }
  plot << "set arrow from graph 0, first " << report.unigram_nll << " to graph 1, first " << report.unigram_nll
       << " nohead dashtype 3\nset label 'unigram' at graph 0.01, first " << report.unigram_nll << " offset 0,0.6\n";
  plot << "plot";
  for (size_t m = 0; m < report.models.size(); ++m) {
    plot << (m ? ", \\\n    " : " ") << "'curve.dat' using 1:" << m + 2 << " with lines linewidth 2 title '"
         << report.models[m].label << "'";
  }
  plot << "\n";
  io::write_text_file(dir + "/plot.gp", plot.str());
  if (report.contexts.empty()) {
    if (!run_gnuplot(dir, "plot.gp")) return {};
    return {"loss_by_position.png"};
  }

  std::ostringstream by_context;
  by_context << "# context";
  for (const ReportModel& model : report.models) by_context << " " << model.label << " sem";
  by_context << "\n";
  for (size_t c = 0; c < report.contexts.size(); ++c) {
    by_context << report.contexts[c];
    for (const auto& stats : report.by_context) by_context << " " << stats[c].mean << " " << stats[c].sem;
    by_context << "\n";
  }
  io::write_text_file(dir + "/context.dat", by_context.str());
  std::ostringstream context_plot;
  context_plot << "# Loss against context length; run `gnuplot context.gp` in this folder.\n"
               << "set terminal pngcairo size 900,560 noenhanced\nset output 'loss_by_context.png'\n"
               << "set title 'Loss by context length (as in Figures 1 and 9 of the paper)'\n"
               << "set xlabel 'context length T (tokens, bos included)'\n"
               << "set ylabel 'mean NLL over the first T tokens (nats), +- standard error'\n"
               << "set grid\nset key outside right\n"
               << context_axis(report.contexts) << "plot";
  for (size_t m = 0; m < report.models.size(); ++m) {
    context_plot << (m ? ", \\\n    " : " ") << "'context.dat' using 1:" << 2 * m + 2 << ":" << 2 * m + 3
                 << " with yerrorlines linewidth 2 title '" << report.models[m].label << "'";
  }
  context_plot << "\n";
  io::write_text_file(dir + "/context.gp", context_plot.str());
  if (!run_gnuplot(dir, "plot.gp")) return {};
  run_gnuplot(dir, "context.gp");
  return {"loss_by_position.png", "loss_by_context.png"};
}

}  // namespace ttt
