// RULER's single-needle needle-in-a-haystack tasks (S-NIAH-1/2/3 of Hsieh et al. 2024,
// github.com/NVIDIA/RULER, scripts/data/synthetic/niah.py and constants.py) as the paper's
// Table 2 runs them: a sentence "One of the special magic numbers for KEY is: VALUE." hidden
// at a depth of a haystack, and the question for KEY's value at the end of a prompt of exactly
// T tokens. Prompt building (for any tokenizer's encode), scoring and the summary live here,
// apart from any model: `ttt-data` builds the prompts (the tokenizers live there) and
// `ttt eval niah` runs the model on them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::niah {

enum class Task {
  kPasskey,  // S-NIAH-1: a 7-digit number in RULER's repeated noise sentence
  kNumber,   // S-NIAH-2: a 7-digit number in a text (essay) haystack
  kUuid,     // S-NIAH-3: a UUID in a text haystack
};
// "passkey", "number", "uuid"; anything else is a ttt::Error listing them.
Task parse_task(const std::string& name);
std::string task_name(Task task);
bool uses_text_haystack(Task task);

// Everything that fixes the prompts: the same spec and tokenizer give the same prompts.
struct Spec {
  Task task = Task::kPasskey;
  std::vector<int64_t> contexts;  // prompt lengths in tokens, bos included
  std::vector<double> depths;     // needle depths in percent of the haystack
  int64_t samples = 40;           // per context; sample i asks for depths[i % depths.size()]
  uint64_t seed = 0;
  int64_t distractors = 0;    // wrong values of the answer's kind drawn per sample (likelihood scoring)
  std::string haystack_path;  // number, uuid: the text whose sentences make the haystack

  std::string to_json() const;
  // ttt::Error naming `source` (the file it came from) on a malformed spec.
  static Spec from_json(const std::string& text, const std::string& source);
};

// `count` evenly spaced depths from 0 to 100 percent, rounded to whole percents as RULER's
// round(linspace(0, 100, count)) (its count is 40).
std::vector<double> evenly_spaced_depths(int64_t count);

struct Sample {
  int64_t context = 0;          // tokens in the prompt, bos included
  double depth = 0;             // asked for, percent
  double needle_depth = 0;      // where it landed: haystack tokens before it, percent of the haystack's
  int64_t needle_position = 0;  // index of the needle's first token in the prompt
  std::string key;
  std::vector<std::string> values;                 // [0] the answer, then the distractors
  std::vector<std::vector<int64_t>> value_tokens;  // each as it continues the prompt (" 1234567")
  std::vector<int64_t> prompt;
};

using Encode = std::function<std::vector<int64_t>(std::string_view)>;

// The samples of `spec`, context by context. `haystack_text` fills the haystack of number and
// uuid (passkey ignores it). Throws ttt::Error when a context cannot hold the template, the
// question and the needle, or the text has no words.
std::vector<Sample> make_samples(const Spec& spec, const Encode& encode, int64_t bos_id,
                                 const std::string& haystack_text);

// Samples as files in `dir`: samples.json (all but the prompts) and prompts.u32 (the prompts
// one after another). Reading checks that the two agree.
void write_samples(const std::vector<Sample>& samples, const std::string& dir);
std::vector<Sample> read_samples(const std::string& dir);

// RULER's string_match_all for one answer: whether `expected` occurs in `generated`, case ignored.
bool string_match(const std::string& expected, const std::string& generated);
// Likelihood scoring: the answer (index 0) counts when its log-likelihood beats every distractor's.
bool answer_most_likely(const std::vector<double>& log_likelihoods);

// One sample's outcome under the model.
struct Result {
  bool correct = false;
  std::string generated;                // generation: the text decoded greedily
  std::vector<double> log_likelihoods;  // likelihood: of each of the sample's values
};

struct Summary {
  std::vector<int64_t> contexts;
  std::vector<double> depths;
  std::vector<double> accuracy;                     // [context]
  std::vector<int64_t> samples;                     // [context]
  std::vector<std::vector<double>> depth_accuracy;  // [context][depth]; NaN where no sample asked for it
};
Summary summarize(const Spec& spec, const std::vector<Sample>& samples, const std::vector<Result>& results);

// What was run, for the report.
struct RunInfo {
  std::string model, variant, tokenizer, mode;  // mode: "generate" or "likelihood"
  double seconds = 0;
};
std::string report_json(const Spec& spec, const RunInfo& run, const std::vector<Sample>& samples,
                        const std::vector<Result>& results, const Summary& summary);
// Markdown: accuracy per context, and per depth where there are several.
std::string report_table(const Spec& spec, const RunInfo& run, const Summary& summary);
// Accuracy against context length, a line per depth and their mean: the data and gnuplot
// script beside `png` (same name, .dat and .gp), rendered where gnuplot is installed.
// Returns false without gnuplot.
bool write_plot(const Spec& spec, const RunInfo& run, const Summary& summary, const std::string& png);

}  // namespace ttt::niah
