// `ttt eval`: one model over one token file (loss and per-token NLLs), or several models over
// many documents, reported as loss by context position (eval/position_report.h).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "commands.h"
#include "data/prepare_manifest.h"
#include "eval/evaluate.h"
#include "eval/plot.h"
#include "eval/position_report.h"
#include "io/atomic_file.h"
#include "io/paths.h"
#include "model/checkpoint.h"
#include "ttt/chunk_graphs.h"

namespace ttt::cli {
namespace {

struct EvalOptions {
  std::vector<std::string> model_paths, token_paths;
  std::string documents_dir, json_path, report_dir, buckets, contexts;
  ComputeFlags compute;
  int64_t length = 0, max_documents = 0;
  std::optional<double> inner_lr;
};

// A model as --inner-lr asks for it: ttt-e2e's inner steps at another learning rate (0: its
// meta-learned weights without test-time training, the ablation that separates the two).
Model load_model_for_eval(const EvalOptions& options, const std::string& path) {
  Model model = options.compute.load_for_inference(path);
  if (options.inner_lr) {
    require(model.config.is_ttt(),
            path + ": --inner-lr applies to ttt-e2e models; this one is " + variant_name(model.config.variant));
    model.config.inner_lr = *options.inner_lr;
  }
  return model;
}

struct DocumentFile {
  std::string name, path;
};

// The documents to evaluate: the files given, or those of a --per-document folder.
std::vector<DocumentFile> document_files(const EvalOptions& options, std::optional<PrepareManifest>& manifest) {
  std::vector<DocumentFile> files;
  for (const std::string& path : options.token_paths) files.push_back({path, path});
  if (options.documents_dir.empty()) return files;
  require(io::is_directory(options.documents_dir), options.documents_dir + ": not a directory");
  manifest = PrepareManifest::read(options.documents_dir);
  if (manifest) {
    for (const PrepareManifest::Entry& entry : manifest->entries) files.push_back({entry.name, entry.path});
  } else {
    for (const std::string& name : io::list_files(options.documents_dir, ".u32")) {
      files.push_back({name.substr(0, name.size() - 4), options.documents_dir + "/" + name});
    }
  }
  require(!files.empty(), options.documents_dir + ": no token files (.u32) in it");
  return files;
}

std::vector<int64_t> parse_edges(const std::string& text) {
  const std::vector<int64_t> edges = parse_integers("--buckets", text, "edges like 0,64,256,1024");
  require(edges.size() >= 2 && edges.front() == 0, "--buckets: give at least two edges, starting at 0");
  for (size_t i = 1; i < edges.size(); ++i) {
    require(edges[i] > edges[i - 1], "--buckets: edges must increase");
  }
  return edges;
}

// One model over one token file: the loss line, and --json with every NLL.
void evaluate_one(const EvalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const ComputeOptions compute = options.compute.compute();
  const MatmulDtypeGuard precision(compute.matmul_dtype);
  const Model model = load_model_for_eval(options, options.model_paths[0]);
  const torch::Tensor tokens = load_tokens_for(model.config, options.token_paths[0]).to(compute.device);
  const EvalResult result = evaluate(model.config, model.params, tokens, progress_reporter("eval"));
  require_finite_loss(result.loss);
  if (!options.json_path.empty()) {
    io::write_text_file(options.json_path, nlohmann::json{{"loss", result.loss}, {"nll", result.nll}}.dump() + "\n");
  }
  const double seconds = seconds_since(start);
  std::printf("loss %.6f over %zu targets, %lld inner steps, %.2f s (%.0f tokens/s)\n", result.loss,
              result.nll.size(), static_cast<long long>(result.inner_steps), seconds,
              static_cast<double>(result.nll.size()) / seconds);
}

// Several models and/or documents: loss by position, printed and optionally written out.
void evaluate_report(const EvalOptions& options) {
  const ComputeOptions compute = options.compute.compute();
  const MatmulDtypeGuard precision(compute.matmul_dtype);
  std::vector<Model> models;
  std::vector<ReportModel> described;
  std::multiset<std::string> variants;
  for (const std::string& path : options.model_paths) {
    models.push_back(load_model_for_eval(options, path));
    variants.insert(variant_name(models.back().config.variant));
  }
  for (size_t m = 0; m < models.size(); ++m) {
    const ModelConfig& config = models[m].config;
    require(config.bos_id == models[0].config.bos_id,
            options.model_paths[m] + ": bos_id " + std::to_string(config.bos_id) + " differs from " +
                options.model_paths[0] + "'s " + std::to_string(models[0].config.bos_id) +
                " (models compared on the same documents must share a tokenizer)");
    const std::string variant = variant_name(config.variant);
    const std::string name = variants.count(variant) > 1 ? options.model_paths[m] : variant;
    std::ostringstream shown;
    shown << name;
    if (options.inner_lr) shown << " (inner_lr " << *options.inner_lr << ")";
    described.push_back({shown.str(), options.model_paths[m], variant, count_params(config, models[m].params),
                         config.attention_window(), config.is_ttt() ? config.mini_batch : 0, 0.0});
  }

  std::optional<PrepareManifest> manifest;
  const std::vector<DocumentFile> files = document_files(options, manifest);
  if (manifest) {
    for (size_t m = 0; m < models.size(); ++m) {
      manifest->check_fits_model(options.documents_dir, models[m].config.vocab_size, models[m].config.bos_id);
    }
  }
  std::vector<EvaluatedDocument> documents;
  int64_t too_short = 0;
  for (const DocumentFile& file : files) {
    if (options.max_documents > 0 && static_cast<int64_t>(documents.size()) == options.max_documents) break;
    std::vector<int64_t> tokens = io::read_token_file(file.path);
    if (options.length > 0) {
      if (static_cast<int64_t>(tokens.size()) < options.length) {
        ++too_short;
        continue;
      }
      tokens.resize(options.length);
    }
    documents.push_back({file.name, std::move(tokens), {}});
  }
  require(!documents.empty(), "no document to evaluate: all " + std::to_string(too_short) +
                                  " are shorter than --length " + std::to_string(options.length) + " tokens");
  if (too_short > 0) {
    std::printf("skipped %lld of %zu documents shorter than --length %lld tokens\n", static_cast<long long>(too_short),
                files.size(), static_cast<long long>(options.length));
  }

  const bool tty = isatty(STDERR_FILENO);
  for (size_t m = 0; m < models.size(); ++m) {
    const auto start = std::chrono::steady_clock::now();
    // One set of CUDA graphs serves every document of the model.
    const std::unique_ptr<ChunkGraphs> graphs = ChunkGraphs::where_supported(models[m].config, models[m].params);
    for (size_t d = 0; d < documents.size(); ++d) {
      if (tty) {
        std::fprintf(stderr, "\reval %s: document %zu/%zu", described[m].label.c_str(), d + 1, documents.size());
        std::fflush(stderr);
      }
      torch::Tensor tokens;
      try {
        tokens = checked_tokens(models[m].config, documents[d].tokens);
      } catch (const Error& e) {
        throw Error(documents[d].name + ": " + e.what());
      }
      EvalResult result = evaluate(models[m].config, models[m].params, tokens.to(compute.device), {}, graphs.get());
      require_finite_loss(result.loss);
      documents[d].nll.push_back(std::move(result.nll));
    }
    if (tty) std::fprintf(stderr, "\n");
    described[m].seconds = seconds_since(start);
  }

  int64_t max_targets = 0;
  for (const EvaluatedDocument& doc : documents) max_targets = std::max<int64_t>(max_targets, doc.tokens.size() - 1);
  std::vector<int64_t> edges;
  if (!options.buckets.empty()) {
    edges = parse_edges(options.buckets);
    require(edges.back() >= max_targets, "--buckets: the last edge " + std::to_string(edges.back()) +
                                             " must cover every target position (up to " +
                                             std::to_string(max_targets) + ")");
  } else {
    int64_t mini_batch = 0, window = 0;
    for (const ReportModel& model : described) {
      if (model.mini_batch > 0) mini_batch = mini_batch ? std::min(mini_batch, model.mini_batch) : model.mini_batch;
      window = std::max(window, model.window);
    }
    edges = default_bucket_edges(mini_batch, window, max_targets);
  }
  const std::vector<int64_t> contexts =
      options.contexts.empty() ? kPaperContexts : parse_token_counts("--contexts", options.contexts);
  const PositionReport report = make_position_report(described, documents, edges, models[0].config.bos_id, contexts);
  for (size_t m = 0; m < models.size(); ++m) {
    std::printf("%s: loss %.4f over %lld documents (%lld targets), %.1f s\n", described[m].label.c_str(),
                report.overall[m].mean, static_cast<long long>(report.overall[m].documents),
                static_cast<long long>(report.overall[m].targets), described[m].seconds);
  }
  std::printf("\n%s", report_table(report).c_str());
  if (!options.report_dir.empty()) {
    const std::vector<std::string> plots = write_position_report(report, options.report_dir);
    std::string files = "report.json, table.md, curve.dat, plot.gp";
    if (!report.contexts.empty()) files += ", context.dat, context.gp";
    for (const std::string& png : plots) files += ", " + png;
    std::printf("\nreport in %s/ (%s)\n", options.report_dir.c_str(), files.c_str());
    if (plots.empty()) std::fprintf(stderr, "%s\n", kNoGnuplotWarning);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  CLI::App* command = app.add_subcommand(
      "eval",
      "Run models over token files by their own procedure (test-time training for ttt-e2e).\n"
      "One model and one file: the loss, the mean over chunks of mini_batch tokens of each chunk's\n"
      "masked mean NLL (fa: the masked mean over all targets), and --json with every NLL.\n"
      "Several models or documents (--documents): loss by position in the document, bucketed (the\n"
      "first mini-batch, up to the window, then doubling) with the spread over documents, paired\n"
      "differences to the first model, the loss by context length T (--contexts) and the unigram baseline\n"
      "of the text; --report writes it all with plots. Targets equal to bos_id carry no loss.\n"
      "`ttt eval niah` runs RULER's needle-in-a-haystack tasks (see `ttt eval niah --help`).");
  command->add_option("--model", options->model_paths, "model checkpoint (.safetensors); repeat to compare models");
  auto* tokens = command->add_option("--tokens", options->token_paths,
                                     "token file(s): raw little-endian uint32 ids, no header (.u32), one document each");
  auto* documents = command->add_option(
      "--documents", options->documents_dir,
      "folder of per-document token files (`ttt data prepare --per-document`): those its prepare.json lists,\n"
      "or every .u32 in it");
  tokens->excludes(documents);
  command->add_option("--length", options->length,
                      "evaluate the first N tokens of each document and skip shorter ones (0: whole documents)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--max-documents", options->max_documents, "evaluate at most this many documents (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--buckets", options->buckets, "position bucket edges, e.g. 0,64,256,1024,4096");
  command->add_option("--contexts", options->contexts,
                      "context lengths T for the loss by context length: the mean NLL over the first T tokens of\n"
                      "documents at least T long, e.g. 1K,2K,4K (default: the paper's 8K,16K,32K,64K,128K; lengths\n"
                      "longer than every document are left out)");
  command->add_option("--report", options->report_dir,
                      "write report.json, table.md, curve.dat, plot.gp, context.dat, context.gp, and with gnuplot\n"
                      "loss_by_position.png and loss_by_context.png here");
  command
      ->add_option("--inner-lr", options->inner_lr,
                   "evaluate ttt-e2e models with this inner learning rate instead of their own (0: the "
                   "meta-learned weights without test-time training)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--json", options->json_path,
                      "one model over one file: write {\"loss\": L, \"nll\": [per target token]} here");
  options->compute.add_to(command);
  add_niah_command(*command);
  command->callback([options, command] {
    if (command->got_subcommand("niah")) return;
    require(!options->model_paths.empty(), "--model is required");
    require(!options->token_paths.empty() || !options->documents_dir.empty(), "give --tokens or --documents");
    const bool single = options->model_paths.size() == 1 && options->token_paths.size() == 1 &&
                        options->documents_dir.empty() && options->report_dir.empty() && options->buckets.empty() &&
                        options->contexts.empty() && options->length == 0;
    if (single) return evaluate_one(*options);
    require(options->json_path.empty(),
            "--json writes one model's NLLs over one token file; for several use --report DIR");
    evaluate_report(*options);
  });
}

}  // namespace ttt::cli
