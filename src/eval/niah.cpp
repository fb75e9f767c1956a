#include "eval/niah.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "eval/plot.h"
#include "io/atomic_file.h"
#include "io/json_input.h"
#include "io/paths.h"
#include "io/token_file.h"

namespace ttt::niah {
namespace {

// RULER's niah task template and answer prefix (scripts/data/synthetic/constants.py), its
// needle and its noise haystack (niah.py), verbatim.
constexpr std::string_view kTemplate =
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz "
    "you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} "
    "mentioned in the provided text?";
constexpr std::string_view kAnswerPrefix =
    " The special magic {type_needle_v} for {query} mentioned in the provided text are";
constexpr std::string_view kNeedle = "One of the special magic {type_needle_v} for {key} is: {value}.";
constexpr std::string_view kNoise =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

// Keys are adjective-noun pairs as RULER's (it draws from the word lists of the Python package
// wonderwords, which Debian does not carry): common words of our own choosing.
constexpr const char* kAdjectives[] = {
    "able",   "ancient", "bitter", "bold",    "brave",  "bright",  "broad",  "busy",   "calm",   "careful",
    "cheap",  "clean",   "clever", "cold",    "cool",   "curious", "damp",   "dark",   "deep",   "dry",
    "eager",  "early",   "empty",  "equal",   "faint",  "fair",    "false",  "famous", "fancy",  "fast",
    "fierce", "flat",    "fresh",  "gentle",  "giant",  "glad",    "golden", "grand",  "great",  "green",
    "happy",  "heavy",   "hidden", "hollow",  "honest", "huge",    "humble", "icy",    "jolly",  "kind",
    "large",  "lazy",    "light",  "little",  "lively", "lonely",  "loud",   "lucky",  "mellow", "mighty",
    "modern", "narrow",  "neat",   "nervous", "noble",  "odd",     "old",    "orange", "pale",   "patient",
    "plain",  "polite",  "proud",  "purple",  "quick",  "quiet",   "rapid",  "rare",   "red",    "rich",
    "rough",  "round",   "royal",  "rusty",   "sharp",  "shiny",   "silent", "silly",  "simple", "slow",
    "smooth", "soft",    "solid",  "sour",    "steady", "strange", "strong", "sweet",  "tall",   "tender",
    "thick",  "tidy",    "tiny",   "true",    "warm",   "wild",    "wise",   "witty",  "young",  "zealous"};
constexpr const char* kNouns[] = {
    "anchor",  "apple",    "arrow",   "badge",   "basket",   "beacon",  "bell",    "blanket", "boat",       "bottle",
    "bridge",  "bucket",   "butter",  "cabin",   "camera",   "candle",  "canvas",  "carpet",  "castle",     "chair",
    "cherry",  "circle",   "cloud",   "coin",    "comet",    "compass", "copper",  "cottage", "crayon",     "crown",
    "crystal", "desert",   "diamond", "dragon",  "drum",     "eagle",   "engine",  "feather", "fiddle",     "flag",
    "forest",  "fountain", "garden",  "glacier", "guitar",   "hammer",  "harbor",  "helmet",  "horizon",    "island",
    "jacket",  "jungle",   "kettle",  "kite",    "ladder",   "lantern", "lemon",   "library", "lighthouse", "magnet",
    "mango",   "marble",   "meadow",  "mirror",  "mountain", "needle",  "ocean",   "orchard", "paddle",     "palace",
    "parrot",  "pencil",   "pepper",  "piano",   "pillow",   "planet",  "pocket",  "pond",    "puzzle",     "quilt",
    "rabbit",  "raft",     "ribbon",  "river",   "rocket",   "saddle",  "sailor",  "school",  "shadow",     "shelf",
    "silver",  "spoon",    "statue",  "stone",   "sunset",   "teapot",  "thunder", "tiger",   "tower",      "trumpet",
    "tunnel",  "umbrella", "valley",  "violin",  "wagon",    "whistle", "window",  "wizard"};

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// The value kind's name as RULER's type_needle_v (plural; the template makes it singular).
std::string value_kind(Task task) { return task == Task::kUuid ? "uuids" : "numbers"; }

// RULER's template for one needle and one question: "Some ... are" becomes "A ... is" and the
// kind singular. Split at the context: the text before it and the question with the answer prefix.
std::pair<std::string, std::string> prompt_around_context(Task task, const std::string& key) {
  constexpr std::pair<std::string_view, std::string_view> kSingular[] = {
      {"Some", "A"}, {"are all", "is"}, {"are", "is"}, {"answers", "answer"}};
  std::string text = std::string(kTemplate) + std::string(kAnswerPrefix);
  for (const auto& [from, to] : kSingular) text = replace_all(text, from, to);
  const std::string kind = value_kind(task);
  text = replace_all(replace_all(text, "{type_needle_v}", kind.substr(0, kind.size() - 1)), "{query}", key);
  const size_t context = text.find("{context}");
  return {text.substr(0, context), text.substr(context + 9)};
}

std::string needle_text(Task task, const std::string& key, const std::string& value) {
  return replace_all(replace_all(replace_all(std::string(kNeedle), "{type_needle_v}", value_kind(task)), "{key}", key),
                     "{value}", value);
}

// Draws by the modulo of the generator's output: the same numbers on every platform (the
// standard library's distributions differ between implementations).
uint64_t draw(std::mt19937_64& rng, uint64_t n) { return rng() % n; }

std::string random_value(Task task, std::mt19937_64& rng) {
  if (task != Task::kUuid) return std::to_string(1000000 + draw(rng, 9000000));  // 7 digits
  // A version-4 UUID from 128 random bits, as Python's uuid.UUID(int=..., version=4) makes it.
  uint64_t high = rng(), low = rng();
  high = (high & ~0xF000ull) | 0x4000ull;                // version 4
  low = (low & ~(0xC000ull << 48)) | (0x8000ull << 48);  // RFC 4122 variant
  char text[40];
  std::snprintf(text, sizeof text, "%08llx-%04llx-%04llx-%04llx-%012llx", static_cast<unsigned long long>(high >> 32),
                static_cast<unsigned long long>((high >> 16) & 0xFFFF), static_cast<unsigned long long>(high & 0xFFFF),
                static_cast<unsigned long long>(low >> 48), static_cast<unsigned long long>(low & 0xFFFFFFFFFFFFull));
  return text;
}

// The text haystack's sentences: whitespace runs become one space (as RULER joins the essay's
// words) and a sentence ends after . ! or ? (and closing quotes or brackets) before a space.
std::vector<std::string> split_sentences(const std::string& text) {
  std::string words;
  for (char c : text) {
    const bool space = std::isspace(static_cast<unsigned char>(c));
    if (space && (words.empty() || words.back() == ' ')) continue;
    words.push_back(space ? ' ' : c);
  }
  if (!words.empty() && words.back() == ' ') words.pop_back();
  std::vector<std::string> sentences;
  size_t begin = 0;
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i] != ' ') continue;
    std::string_view sentence = std::string_view(words).substr(begin, i - begin);
    for (bool closed = true; closed;) {  // closing quotes and brackets after the full stop
      closed = false;
      for (std::string_view closer : {"\"", "'", ")", "]", "\u201d", "\u2019"}) {
        if (sentence.size() > closer.size() && sentence.substr(sentence.size() - closer.size()) == closer) {
          sentence.remove_suffix(closer.size());
          closed = true;
        }
      }
    }
    if (!sentence.empty() && std::string_view(".!?").find(sentence.back()) != std::string_view::npos) {
      sentences.push_back(words.substr(begin, i - begin));
      begin = i + 1;
    }
  }
  if (begin < words.size()) sentences.push_back(words.substr(begin));
  return sentences;
}

// The haystack's sentences one after another, as tokens: the first as it follows the text
// before the context, each further one after the separator (RULER joins the noise sentences
// with newlines, the essay's with spaces). Sentences repeat from the first when the text runs
// out, as RULER repeats its essays.
struct Haystack {
  std::vector<int64_t> tokens;
  std::vector<int64_t> starts;          // each sentence's first token
  std::vector<int64_t> first_as_later;  // the first sentence after a separator (the needle went first)
  std::string separator;
};

Haystack make_haystack(const std::vector<std::string>& sentences, const std::string& separator, const Encode& encode,
                       int64_t tokens_needed) {
  Haystack h;
  h.separator = separator;
  h.first_as_later = encode(separator + sentences[0]);
  // One sentence more than needed, so that every prompt ends in a cut sentence or at a boundary inside.
  for (size_t i = 0; h.starts.size() < 2 || static_cast<int64_t>(h.tokens.size()) <= tokens_needed; ++i) {
    const std::string& sentence = sentences[i % sentences.size()];
    const std::vector<int64_t> tokens = encode(i == 0 ? sentence : separator + sentence);
    require(!tokens.empty(), "the haystack has a sentence that encodes to no tokens");
    h.starts.push_back(static_cast<int64_t>(h.tokens.size()));
    h.tokens.insert(h.tokens.end(), tokens.begin(), tokens.end());
  }
  return h;
}

void append(std::vector<int64_t>& to, const std::vector<int64_t>& tokens, size_t begin = 0,
            size_t end = std::string::npos) {
  end = std::min(end, tokens.size());
  if (begin < end)
    to.insert(to.end(), tokens.begin() + static_cast<ptrdiff_t>(begin), tokens.begin() + static_cast<ptrdiff_t>(end));
}

// One prompt of exactly `context` tokens: bos, the text before the context, the haystack with
// the needle at the sentence boundary RULER picks (after int(sentences * depth / 100) whole
// sentences), cut to length at its end, then the question and answer prefix.
Sample make_sample(const Spec& spec, const Haystack& haystack, const Encode& encode, int64_t bos_id, int64_t context,
                   double depth, std::mt19937_64& rng) {
  Sample s;
  s.context = context;
  s.depth = depth;
  s.key = std::string(kAdjectives[draw(rng, std::size(kAdjectives))]) + "-" + kNouns[draw(rng, std::size(kNouns))];
  s.values.push_back(random_value(spec.task, rng));
  while (static_cast<int64_t>(s.values.size()) <= spec.distractors) {
    std::string value = random_value(spec.task, rng);
    if (std::find(s.values.begin(), s.values.end(), value) == s.values.end()) s.values.push_back(value);
  }
  for (const std::string& value : s.values) s.value_tokens.push_back(encode(" " + value));

  const auto [before_text, question_text] = prompt_around_context(spec.task, s.key);
  const std::vector<int64_t> before = encode(before_text), question = encode(question_text);
  const std::string needle = needle_text(spec.task, s.key, s.values[0]);
  const std::vector<int64_t> later_needle = encode(haystack.separator + needle);
  const int64_t fixed = 1 + static_cast<int64_t>(before.size() + question.size());
  const int64_t room = context - fixed - static_cast<int64_t>(later_needle.size());
  require(room >= 0, "context " + std::to_string(context) + " tokens: the template, question and needle alone take " +
                         std::to_string(context - room) + " tokens");
  // The sentences wholly inside the room: the needle goes between them (the last one cut
  // short, if any, follows it).
  const auto sentences = static_cast<int64_t>(std::upper_bound(haystack.starts.begin(), haystack.starts.end(), room) -
                                              haystack.starts.begin() - 1);
  const auto boundary = static_cast<int64_t>(static_cast<double>(sentences) * depth / 100.0);

  std::vector<int64_t> hay_before, needle_tokens, hay_after;
  if (boundary == 0) {
    // The needle opens the context, and the first sentence then follows a separator.
    needle_tokens = encode(needle);
    const int64_t length = context - fixed - static_cast<int64_t>(needle_tokens.size());
    require(length >= 0, "context " + std::to_string(context) +
                             " tokens: the template, question and needle alone take " +
                             std::to_string(context - length) + " tokens");
    append(hay_after, haystack.first_as_later, 0, static_cast<size_t>(length));
    if (haystack.starts.size() > 1) {
      append(hay_after, haystack.tokens, static_cast<size_t>(haystack.starts[1]),
             static_cast<size_t>(haystack.starts[1] + length - static_cast<int64_t>(hay_after.size())));
    }
    require(static_cast<int64_t>(hay_after.size()) == length, "the haystack is too short for the context");
  } else {
    needle_tokens = later_needle;
    const int64_t split = haystack.starts[boundary];
    append(hay_before, haystack.tokens, 0, static_cast<size_t>(split));
    append(hay_after, haystack.tokens, static_cast<size_t>(split), static_cast<size_t>(room));
  }
  s.prompt.reserve(static_cast<size_t>(context));
  s.prompt.push_back(bos_id);
  append(s.prompt, before);
  append(s.prompt, hay_before);
  s.needle_position = static_cast<int64_t>(s.prompt.size());
  append(s.prompt, needle_tokens);
  append(s.prompt, hay_after);
  append(s.prompt, question);
  require(static_cast<int64_t>(s.prompt.size()) == context, "internal: a prompt of the wrong length");
  const auto hay = static_cast<double>(hay_before.size() + hay_after.size());
  s.needle_depth = hay > 0 ? 100.0 * static_cast<double>(hay_before.size()) / hay : 0.0;
  return s;
}

nlohmann::json accuracy_json(double accuracy) {
  return std::isnan(accuracy) ? nlohmann::json() : nlohmann::json(accuracy);
}

std::string format_accuracy(double accuracy) {
  if (std::isnan(accuracy)) return "-";
  char text[16];
  std::snprintf(text, sizeof text, "%.2f", accuracy);
  return text;
}

}  // namespace

Task parse_task(const std::string& name) {
  if (name == "passkey") return Task::kPasskey;
  if (name == "number") return Task::kNumber;
  if (name == "uuid") return Task::kUuid;
  throw Error("unknown NIAH task '" + name + "' (passkey, number or uuid)");
}

std::string task_name(Task task) {
  switch (task) {
    case Task::kPasskey:
      return "passkey";
    case Task::kNumber:
      return "number";
    case Task::kUuid:
      return "uuid";
  }
  return "";
}

bool uses_text_haystack(Task task) { return task != Task::kPasskey; }

std::string Spec::to_json() const {
  return nlohmann::json{{"task", task_name(task)},  {"contexts", contexts}, {"depths", depths},
                        {"samples", samples},       {"seed", seed},         {"distractors", distractors},
                        {"haystack", haystack_path}}
      .dump();
}

namespace {

// Any int64: no range is checked here.
int64_t integer(const nlohmann::json& value, const std::string& what) {
  return io::json_integer(value, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), what);
}

std::vector<int64_t> integers(const nlohmann::json& value, const std::string& what) {
  require(value.is_array(), what + " must be a list of integers, not " + value.type_name());
  std::vector<int64_t> out;
  for (const nlohmann::json& v : value) out.push_back(integer(v, what));
  return out;
}

}  // namespace

Spec Spec::from_json(const std::string& text, const std::string& source) {
  const std::string prefix = source + ": malformed NIAH spec: ";
  const nlohmann::json j = io::parse_json_input(text, prefix);
  try {
    Spec spec;
    spec.task = parse_task(j.at("task").get<std::string>());
    spec.contexts = integers(j.at("contexts"), "contexts");
    spec.depths = j.at("depths").get<std::vector<double>>();
    spec.samples = integer(j.at("samples"), "samples");
    // Written as a uint64; nothing else (a negative or fractional number, a string) is one.
    const nlohmann::json& seed = j.at("seed");
    spec.seed = seed.is_number_unsigned() ? seed.get<uint64_t>()
                                          : io::json_integer(seed, 0, std::numeric_limits<int64_t>::max(), "seed");
    spec.distractors = integer(j.at("distractors"), "distractors");
    spec.haystack_path = j.at("haystack").get<std::string>();
    return spec;
  } catch (const nlohmann::json::exception& e) {
    throw Error(prefix + e.what());
  } catch (const Error& e) {
    throw Error(prefix + e.what());
  }
}

std::vector<double> evenly_spaced_depths(int64_t count) {
  require(count >= 1, "give at least one depth");
  if (count == 1) return {0.0};
  std::vector<double> depths;
  for (int64_t i = 0; i < count; ++i) depths.push_back(std::round(100.0 * static_cast<double>(i) / (count - 1)));
  return depths;
}

std::vector<Sample> make_samples(const Spec& spec, const Encode& encode, int64_t bos_id,
                                 const std::string& haystack_text) {
  require(!spec.contexts.empty() && !spec.depths.empty() && spec.samples > 0, "NIAH: no contexts, depths or samples");
  require(spec.distractors >= 0, "NIAH: a negative number of distractors");
  for (double depth : spec.depths) require(depth >= 0 && depth <= 100, "NIAH: depths are percents from 0 to 100");
  std::vector<std::string> sentences = {std::string(kNoise)};
  std::string separator = "\n";
  if (uses_text_haystack(spec.task)) {
    sentences = split_sentences(haystack_text);
    require(!sentences.empty(), "the haystack text " + spec.haystack_path + " has no words");
    separator = " ";
  }
  const Haystack haystack =
      make_haystack(sentences, separator, encode, *std::max_element(spec.contexts.begin(), spec.contexts.end()));
  std::vector<Sample> samples;
  for (int64_t context : spec.contexts) {
    for (int64_t i = 0; i < spec.samples; ++i) {
      // Each sample's own generator: a sample does not change when others are added.
      std::seed_seq seeds{static_cast<uint64_t>(spec.seed), static_cast<uint64_t>(spec.seed >> 32),
                          static_cast<uint64_t>(context), static_cast<uint64_t>(i)};
      std::mt19937_64 rng(seeds);
      const double depth = spec.depths[static_cast<size_t>(i) % spec.depths.size()];
      samples.push_back(make_sample(spec, haystack, encode, bos_id, context, depth, rng));
    }
  }
  return samples;
}

void write_samples(const std::vector<Sample>& samples, const std::string& dir) {
  nlohmann::json list = nlohmann::json::array();
  std::vector<int64_t> prompts;
  for (const Sample& s : samples) {
    list.push_back({{"context", s.context},
                    {"depth", s.depth},
                    {"needle_depth", s.needle_depth},
                    {"needle_position", s.needle_position},
                    {"key", s.key},
                    {"values", s.values},
                    {"value_tokens", s.value_tokens}});
    prompts.insert(prompts.end(), s.prompt.begin(), s.prompt.end());
  }
  io::write_token_file(dir + "/prompts.u32", prompts);
  io::write_text_file(dir + "/samples.json", list.dump() + "\n");
}

std::vector<Sample> read_samples(const std::string& dir) {
  const std::string path = dir + "/samples.json";
  const nlohmann::json list = io::read_json_file(path, path + ": ");
  require(list.is_array(), path + ": not a list of samples");
  std::vector<Sample> samples;
  try {
    for (const nlohmann::json& j : list) {
      Sample s;
      s.context = integer(j.at("context"), "a sample's context");
      s.depth = j.at("depth").get<double>();
      s.needle_depth = j.at("needle_depth").get<double>();
      s.needle_position = integer(j.at("needle_position"), "a sample's needle_position");
      s.key = j.at("key").get<std::string>();
      s.values = j.at("values").get<std::vector<std::string>>();
      require(j.at("value_tokens").is_array(), "a sample's value_tokens must be a list");
      for (const nlohmann::json& tokens : j.at("value_tokens")) {
        s.value_tokens.push_back(integers(tokens, "a sample's value_tokens"));
      }
      require(!s.values.empty() && s.value_tokens.size() == s.values.size(),
              "a sample's values and their tokens do not agree");
      samples.push_back(std::move(s));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": " + e.what());
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  const std::vector<int64_t> prompts = io::read_token_file(dir + "/prompts.u32");
  size_t offset = 0;
  for (Sample& s : samples) {
    require(static_cast<size_t>(s.context) <= prompts.size() - offset, dir + "/prompts.u32: shorter than the samples");
    s.prompt.assign(prompts.begin() + static_cast<ptrdiff_t>(offset),
                    prompts.begin() + static_cast<ptrdiff_t>(offset + static_cast<size_t>(s.context)));
    offset += static_cast<size_t>(s.context);
  }
  require(offset == prompts.size(), dir + "/prompts.u32: longer than the samples");
  return samples;
}

bool string_match(const std::string& expected, const std::string& generated) {
  auto lower = [](std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
  };
  return lower(generated).find(lower(expected)) != std::string::npos;
}

bool answer_most_likely(const std::vector<double>& log_likelihoods) {
  require(!log_likelihoods.empty(), "no log-likelihoods to compare");
  for (size_t i = 1; i < log_likelihoods.size(); ++i) {
    if (!(log_likelihoods[0] > log_likelihoods[i])) return false;
  }
  return true;
}

Summary summarize(const Spec& spec, const std::vector<Sample>& samples, const std::vector<Result>& results) {
  require(samples.size() == results.size(), "one result per sample expected");
  Summary summary;
  summary.contexts = spec.contexts;
  summary.depths = spec.depths;
  std::sort(summary.depths.begin(), summary.depths.end());
  summary.depths.erase(std::unique(summary.depths.begin(), summary.depths.end()), summary.depths.end());
  for (int64_t context : summary.contexts) {
    int64_t count = 0, correct = 0;
    std::vector<int64_t> depth_count(summary.depths.size(), 0), depth_correct(summary.depths.size(), 0);
    for (size_t i = 0; i < samples.size(); ++i) {
      if (samples[i].context != context) continue;
      const size_t d = static_cast<size_t>(
          std::lower_bound(summary.depths.begin(), summary.depths.end(), samples[i].depth) - summary.depths.begin());
      ++count;
      ++depth_count[d];
      correct += results[i].correct;
      depth_correct[d] += results[i].correct;
    }
    summary.samples.push_back(count);
    summary.accuracy.push_back(count ? static_cast<double>(correct) / static_cast<double>(count) : kNaN);
    std::vector<double> per_depth;
    for (size_t d = 0; d < summary.depths.size(); ++d) {
      per_depth.push_back(depth_count[d] ? static_cast<double>(depth_correct[d]) / static_cast<double>(depth_count[d])
                                         : kNaN);
    }
    summary.depth_accuracy.push_back(per_depth);
  }
  return summary;
}

std::string report_json(const Spec& spec, const RunInfo& run, const std::vector<Sample>& samples,
                        const std::vector<Result>& results, const Summary& summary) {
  using nlohmann::json;
  json contexts = json::array();
  for (size_t c = 0; c < summary.contexts.size(); ++c) {
    json per_depth = json::array(), listed = json::array();
    for (size_t d = 0; d < summary.depths.size(); ++d) {
      per_depth.push_back({{"depth", summary.depths[d]}, {"accuracy", accuracy_json(summary.depth_accuracy[c][d])}});
    }
    for (size_t i = 0; i < samples.size(); ++i) {
      const Sample& s = samples[i];
      if (s.context != summary.contexts[c]) continue;
      json sample = {{"depth", s.depth}, {"needle_depth", s.needle_depth}, {"needle_position", s.needle_position},
                     {"key", s.key},     {"expected", s.values[0]},        {"correct", results[i].correct}};
      if (run.mode == "generate") {
        sample["got"] = results[i].generated;
      } else {
        const auto best = std::max_element(results[i].log_likelihoods.begin(), results[i].log_likelihoods.end());
        sample["got"] = s.values[static_cast<size_t>(best - results[i].log_likelihoods.begin())];
        sample["candidates"] = s.values;
        sample["log_likelihoods"] = results[i].log_likelihoods;
      }
      listed.push_back(sample);
    }
    contexts.push_back({{"context", summary.contexts[c]},
                        {"accuracy", accuracy_json(summary.accuracy[c])},
                        {"samples", summary.samples[c]},
                        {"depths", per_depth},
                        {"results", listed}});
  }
  const json j = {{"format", "ttt-niah/1"},
                  {"task", task_name(spec.task)},
                  {"ruler_task", spec.task == Task::kPasskey  ? "niah_single_1"
                                 : spec.task == Task::kNumber ? "niah_single_2"
                                                              : "niah_single_3"},
                  {"mode", run.mode},
                  {"model", run.model},
                  {"variant", run.variant},
                  {"tokenizer", run.tokenizer},
                  {"haystack", uses_text_haystack(spec.task) ? spec.haystack_path : "RULER noise"},
                  {"seed", spec.seed},
                  {"distractors", spec.distractors},
                  {"seconds", run.seconds},
                  {"contexts", contexts}};
  // Generated bytes need not be UTF-8 (an untrained model's): those are written as U+FFFD.
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string report_table(const Spec& spec, const RunInfo& run, const Summary& summary) {
  std::ostringstream out;
  out << "NIAH " << task_name(spec.task) << " (" << run.variant << ", " << run.mode
      << "): accuracy by context length (tokens)";
  if (run.mode == "likelihood") out << ", the answer against " << spec.distractors << " distractors";
  out << ".\n\n| depth";
  for (int64_t context : summary.contexts) out << " | " << context_label(context);
  out << " |\n|:--";
  for (size_t c = 0; c < summary.contexts.size(); ++c) out << "|--:";
  out << "|\n";
  if (summary.depths.size() > 1) {
    for (size_t d = 0; d < summary.depths.size(); ++d) {
      out << "| " << summary.depths[d] << "%";
      for (size_t c = 0; c < summary.contexts.size(); ++c)
        out << " | " << format_accuracy(summary.depth_accuracy[c][d]);
      out << " |\n";
    }
  }
  out << "| all";
  for (double accuracy : summary.accuracy) out << " | **" << format_accuracy(accuracy) << "**";
  out << " |\n| samples";
  for (int64_t count : summary.samples) out << " | " << count;
  out << " |\n";
  return out.str();
}

bool write_plot(const Spec& spec, const RunInfo& run, const Summary& summary, const std::string& png) {
  const std::string dir = io::parent_directory(png), name = io::file_name(png);
  const std::string stem =
      name.size() > 4 && name.substr(name.size() - 4) == ".png" ? name.substr(0, name.size() - 4) : name;
  std::ostringstream data;
  data << "# context mean";
  for (double depth : summary.depths) data << " depth" << depth;
  data << "\n";
  for (size_t c = 0; c < summary.contexts.size(); ++c) {
    data << summary.contexts[c] << " " << summary.accuracy[c];
    for (double accuracy : summary.depth_accuracy[c])
      data << " " << (std::isnan(accuracy) ? "NaN" : std::to_string(accuracy));
    data << "\n";
  }
  io::write_text_file(dir + "/" + stem + ".dat", data.str());

  std::ostringstream plot;
  plot << "# NIAH accuracy against context length; run `gnuplot " << stem << ".gp` in this folder.\n"
       << "set terminal pngcairo size 900,560 noenhanced\nset output '" << name << "'\n"
       << "set title 'NIAH " << task_name(spec.task) << " (RULER S-NIAH), " << run.variant << ", " << run.mode << "'\n"
       << "set xlabel 'context length (tokens)'\nset ylabel 'accuracy'\nset yrange [-0.05:1.05]\n"
       << "set grid\nset key outside right\nset datafile missing 'NaN'\n"
       << context_axis(summary.contexts);
  if (run.mode == "likelihood") {  // a guess among the answer and its distractors
    const double chance = 1.0 / static_cast<double>(spec.distractors + 1);
    plot << "set arrow from graph 0, first " << chance << " to graph 1, first " << chance << " nohead dashtype 3\n"
         << "set label 'chance' at graph 0.01, first " << chance << " offset 0,0.6\n";
  }
  plot << "plot 'DATA' using 1:2 with linespoints linewidth 3 title 'all depths'";
  // A line per depth where there are a few; beyond that they would hide the mean.
  if (summary.depths.size() > 1 && summary.depths.size() <= 10) {
    for (size_t d = 0; d < summary.depths.size(); ++d) {
      plot << ", \\\n    'DATA' using 1:" << d + 3 << " with linespoints dashtype 2 title 'depth " << summary.depths[d]
           << "%'";
    }
  }
  plot << "\n";
  io::write_text_file(dir + "/" + stem + ".gp", replace_all(plot.str(), "DATA", stem + ".dat"));
  return run_gnuplot(dir, stem + ".gp");
}

}  // namespace ttt::niah
