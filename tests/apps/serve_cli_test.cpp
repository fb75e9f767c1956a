// `ttt serve` driven as its users drive it: the real program on a free loopback port, curl
// (streaming included) and npm's official `openai` client under node. Completions are compared
// token for token with `ttt generate`; sessions with plain completions of their text; bad
// requests get their status and the server keeps serving.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "apps/cli_run.h"
#include "io/paths.h"
#include "io/subprocess.h"
#include "io/token_file.h"
#include "test_util.h"

namespace ttt {
namespace {

using nlohmann::json;
using test::run_ttt;
using test::temp_path;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A tiny ttt-e2e model over the byte tokenizer's ids (bos 256, eos 257).
std::string byte_model() {
  static const std::string path = [] {
    ModelConfig c = test::tiny_config(Variant::kTttE2E);
    c.vocab_size = 258;
    c.bos_id = 256;
    c.eos_id = 257;
    const std::string config = temp_path("config.json");
    write_file(config, c.to_json().dump());
    const std::string model = temp_path("serve_model.safetensors");
    const test::CliRun run = run_ttt("init --config " + config + " --out " + model + " --seed 5");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return model;
  }();
  return path;
}

struct Reply {
  int status = 0;
  std::string body;
  json parsed() const {
    json j = json::parse(body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << body;
    return j;
  }
};

// Runs curl with `args`; the status and the body.
Reply curl(const std::string& args) {
  const std::string body = temp_path("body");
  FILE* pipe = ::popen(("curl -s -o " + body + " -w '%{http_code}' " + args).c_str(), "r");
  char status[16] = {0};
  const size_t got = std::fread(status, 1, sizeof status - 1, pipe);
  ::pclose(pipe);
  status[got] = 0;
  return {std::atoi(status), read_file(body)};
}

// The ids `ttt generate` prints without a tokenizer.
std::vector<int64_t> ids_of(const std::string& text) {
  std::vector<int64_t> ids;
  std::istringstream in(text);
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

std::vector<int64_t> generate(const std::vector<int64_t>& prompt, const std::string& sampling) {
  const std::string tokens = temp_path("prompt.u32");
  io::write_token_file(tokens, prompt);
  const test::CliRun run = run_ttt("generate --model " + byte_model() + " --prompt-tokens " + tokens + " " + sampling);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  return ids_of(run.output);
}

// `ttt serve` on a free port of 127.0.0.1, ready to answer (or, without `until_ready`, listening
// while it loads the model); SIGTERM (stop) ends it. `environment`: NAME=VALUE words for it.
class Serve {
 public:
  explicit Serve(const std::string& args, const std::string& environment = "", bool until_ready = true)
      : log_(temp_path("serve.log")) {
    pid_ = io::start_command({.program = "/bin/bash",
                              .args = {"-c", "OMP_NUM_THREADS=1 " + environment + " exec " + std::string(TTT_BINARY) +
                                                 " serve --port 0 " + args + " 2>" + log_}});
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    const std::regex listening("listening on (http://127\\.0\\.0\\.1:[0-9]+)");
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch match;
      const std::string log = read_file(log_);
      if (base_.empty() && std::regex_search(log, match, listening)) base_ = match[1];
      if (!base_.empty() && (!until_ready || log.find("ready") != std::string::npos)) return;
      if (io::wait_command(pid_, /*block=*/false)) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "ttt serve did not become ready: " << read_file(log_);
  }
  ~Serve() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      io::wait_command(pid_);
    }
  }

  std::string url(const std::string& path) const { return "'" + base_ + path + "'"; }
  std::string log() const { return read_file(log_); }

  Reply get(const std::string& path, const std::string& extra = "") const { return curl(extra + " " + url(path)); }
  Reply del(const std::string& path, const std::string& extra = "") const {
    return curl("-X DELETE " + extra + " " + url(path));
  }
  Reply post(const std::string& path, const std::string& body, const std::string& extra = "") const {
    const std::string file = temp_path("request.json");
    write_file(file, body);
    return curl("-H 'Content-Type: application/json' --data-binary @" + file + " " + extra + " " + url(path));
  }
  Reply post(const std::string& path, const json& body, const std::string& extra = "") const {
    return post(path, body.dump(), extra);
  }

  // SIGTERM, then its exit status.
  int stop() {
    ::kill(pid_, SIGTERM);
    const std::optional<io::CommandExit> ended = io::wait_command(pid_);
    pid_ = -1;
    return ended->exit_code;
  }

  // A metric's value as /metrics reports it.
  double metric(const std::string& name) const {
    const std::string text = get("/metrics", auth_).body;
    const size_t at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::atof(text.c_str() + at + name.size() + 2);
  }
  void set_auth(const std::string& auth) { auth_ = auth; }

 private:
  std::string log_, base_, auth_;
  int pid_ = -1;
};

std::vector<int64_t> tokens_of(const Reply& reply) {
  EXPECT_EQ(reply.status, 200) << reply.body;
  const json j = reply.parsed();
  if (!j.contains("choices")) return {};
  return j["choices"][0]["tokens"].get<std::vector<int64_t>>();
}

// The tokens and events of a streamed completion (curl -N): every data line until [DONE].
struct Streamed {
  std::vector<int64_t> tokens;
  std::string text, finish;
  bool done = false;
};
Streamed parse_stream(const std::string& body) {
  Streamed out;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string data = line.substr(6);
    if (data == "[DONE]") {
      out.done = true;
      continue;
    }
    const json chunk = json::parse(data);
    if (chunk.contains("error") || chunk["choices"].empty()) continue;
    const json& choice = chunk["choices"][0];
    out.text += choice["text"].get<std::string>();
    for (int64_t id : choice["tokens"]) out.tokens.push_back(id);
    if (!choice["finish_reason"].is_null()) out.finish = choice["finish_reason"];
  }
  return out;
}

const std::vector<int64_t> kDocument = {72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101};
const std::vector<int64_t> kQuestion = {87, 104, 111, 63, 32};

std::vector<int64_t> with_bos(std::vector<int64_t> ids) {
  ids.insert(ids.begin(), 256);
  return ids;
}
std::vector<int64_t> joined(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const char* const kSampling = "--max-tokens 12 --temperature 0.9 --top-p 0.95 --top-k 40 --seed 7";
json sampled(json request) {
  request.update({{"max_tokens", 12}, {"temperature", 0.9}, {"top_p", 0.95}, {"top_k", 40}, {"seed", 7}});
  return request;
}

// Tokenizers run in ttt-data, which a machine without PCRE2 and SentencePiece (the GPU
// machine of scripts/gpu.sh) does not build.
#define SKIP_WITHOUT_TOKENIZERS() \
  if (!TTT_HAS_TOKENIZERS) GTEST_SKIP() << "built without tokenizers (ttt-data)"

TEST(ServeCli, CompletionsEqualGenerateStreamedOrNot) {
  SKIP_WITHOUT_TOKENIZERS();
  Serve serve("--model " + byte_model() + " --tokenizer bytes");
  EXPECT_EQ(serve.get("/health").status, 200);
  const json models = serve.get("/v1/models").parsed();
  EXPECT_EQ(models["object"], "list");
  const std::string model_name = io::file_name(byte_model()).substr(0, io::file_name(byte_model()).rfind('.'));
  EXPECT_EQ(models["data"][0]["id"], model_name);

  const std::vector<int64_t> expected = generate(with_bos(kDocument), kSampling);
  ASSERT_FALSE(expected.empty());
  const Reply plain = serve.post("/v1/completions", sampled({{"prompt", kDocument}, {"model", model_name}}));
  EXPECT_EQ(tokens_of(plain), expected);
  const json body = plain.parsed();
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["usage"]["completion_tokens"], expected.size());
  EXPECT_EQ(body["choices"][0]["finish_reason"], expected.size() == 12 ? "length" : "stop");

  // Text prompts go through the tokenizer: "Hello world!\nThe" is kDocument's bytes.
  const Reply text = serve.post("/v1/completions", sampled({{"prompt", "Hello world!\nThe"}}));
  EXPECT_EQ(tokens_of(text), expected);

  const std::string request = temp_path("stream.json");
  write_file(request,
             sampled({{"prompt", kDocument}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}).dump());
  const Reply streamed =
      curl("-N -H 'Content-Type: application/json' --data-binary @" + request + " " + serve.url("/v1/completions"));
  EXPECT_EQ(streamed.status, 200);
  const Streamed events = parse_stream(streamed.body);
  EXPECT_EQ(events.tokens, expected);
  EXPECT_TRUE(events.done) << streamed.body;
  EXPECT_EQ(events.text, body["choices"][0]["text"].get<std::string>());
  EXPECT_NE(streamed.body.find("\"total_tokens\""), std::string::npos) << streamed.body;

  // Logprobs: the chosen token's and the alternatives, per token.
  const json with_logprobs = serve.post("/v1/completions", sampled({{"prompt", kDocument}, {"logprobs", 2}})).parsed();
  EXPECT_EQ(with_logprobs["choices"][0]["tokens"], expected);
  EXPECT_EQ(with_logprobs["choices"][0]["logprobs"]["token_logprobs"].size(), expected.size());
  for (const json& logprob : with_logprobs["choices"][0]["logprobs"]["token_logprobs"])
    EXPECT_LE(logprob.get<double>(), 0);

  EXPECT_GE(serve.metric("ttt_tokens_generated_total"), 4.0 * static_cast<double>(expected.size()));
  EXPECT_GT(serve.metric("ttt_inner_steps_total"), 0);
  const std::string metrics = serve.get("/metrics").body;
  EXPECT_NE(metrics.find("ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"200\"}"), std::string::npos);
  EXPECT_NE(metrics.find("ttt_prefill_seconds_bucket"), std::string::npos);
  EXPECT_NE(metrics.find("ttt_token_seconds_count"), std::string::npos);
  EXPECT_GT(serve.metric("ttt_resident_memory_bytes"), 0);
  EXPECT_EQ(serve.stop(), 0);
}

TEST(ServeCli, SessionsAnswerFromTheirStateAloneOrInterleaved) {
  Serve serve("--model " + byte_model() + " --slots 2");
  const json created = serve.post("/v1/sessions", json{{"prompt", kDocument}}).parsed();
  const std::string id = created["id"];
  EXPECT_EQ(created["tokens"], kDocument.size() + 1);  // bos first
  EXPECT_GT(created["inner_steps"].get<int64_t>(), 0);
  EXPECT_GT(created["state_bytes"].get<int64_t>(), 0);

  // A completion on the session: the tokens of the session's text followed by the prompt.
  const std::vector<int64_t> expected = generate(joined(with_bos(kDocument), kQuestion), kSampling);
  const json on_session = sampled({{"prompt", kQuestion}, {"session", id}});
  EXPECT_EQ(tokens_of(serve.post("/v1/completions", on_session)), expected);
  EXPECT_EQ(tokens_of(serve.post("/v1/completions", on_session)), expected);  // the session did not change
  EXPECT_EQ(serve.get("/v1/sessions/" + id).parsed()["tokens"], kDocument.size() + 1);

  // Two sessions' requests interleaved on two slots: each gets what it gets alone.
  const std::vector<int64_t> other_document = {66, 111, 111, 107, 115, 32, 97, 114, 101, 32, 108, 111, 110, 103};
  const std::string other = serve.post("/v1/sessions", json{{"prompt", other_document}}).parsed()["id"];
  const std::vector<int64_t> other_expected = generate(joined(with_bos(other_document), kQuestion), kSampling);
  std::vector<std::thread> clients;
  std::vector<std::vector<int64_t>> got(8);
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      got[i] =
          tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", i % 2 ? other : id}})));
    });
  }
  for (std::thread& client : clients) client.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i], i % 2 ? other_expected : expected) << i;

  // Append reads more; commit appends the exchange (prompt and tokens generated).
  const json appended = serve.post("/v1/sessions/" + other + "/append", json{{"prompt", kQuestion}}).parsed();
  EXPECT_EQ(appended["tokens"], other_document.size() + 1 + kQuestion.size());
  json commit = sampled({{"prompt", kQuestion}, {"session", id}, {"commit", true}});
  const std::vector<int64_t> committed = tokens_of(serve.post("/v1/completions", commit));
  EXPECT_EQ(committed, expected);
  EXPECT_EQ(serve.get("/v1/sessions/" + id).parsed()["tokens"],
            kDocument.size() + 1 + kQuestion.size() + committed.size());
  const std::vector<int64_t> after =
      generate(joined(joined(joined(with_bos(kDocument), kQuestion), committed), kQuestion), kSampling);
  EXPECT_EQ(tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", id}}))), after);

  const json listed = serve.get("/v1/sessions").parsed();
  EXPECT_EQ(listed["data"].size(), 2u);
  EXPECT_EQ(serve.del("/v1/sessions/" + other).parsed()["deleted"], true);
  EXPECT_EQ(serve.get("/v1/sessions/" + other).status, 404);
  EXPECT_EQ(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", other}})).status, 404);
  EXPECT_EQ(serve.stop(), 0);
}

TEST(ServeCli, SessionsSpillToDiskAndSurviveARestart) {
  test::ScratchDir dir;
  const std::string args = "--model " + byte_model() + " --max-sessions 1 --session-dir " + dir.path("sessions");
  std::string first, second;
  std::vector<int64_t> first_tokens, second_tokens;
  {
    Serve serve(args);
    first = serve.post("/v1/sessions", json{{"prompt", kDocument}}).parsed()["id"];
    second = serve.post("/v1/sessions", json{{"prompt", kQuestion}}).parsed()["id"];
    EXPECT_EQ(serve.metric("ttt_sessions_in_memory"), 1);
    EXPECT_EQ(serve.metric("ttt_sessions_on_disk"), 1);
    first_tokens = tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", first}})));
    EXPECT_EQ(first_tokens, generate(joined(with_bos(kDocument), kQuestion), kSampling));
    second_tokens = tokens_of(serve.post("/v1/completions", sampled({{"prompt", kDocument}, {"session", second}})));
    EXPECT_EQ(serve.stop(), 0);
  }
  const std::vector<std::string> files = dir.files();
  {
    Serve serve(args);
    EXPECT_NE(serve.log().find("2 saved sessions"), std::string::npos) << serve.log();
    EXPECT_EQ(tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", first}}))),
              first_tokens);
    EXPECT_EQ(tokens_of(serve.post("/v1/completions", sampled({{"prompt", kDocument}, {"session", second}}))),
              second_tokens);
    EXPECT_EQ(serve.del("/v1/sessions/" + first).status, 200);
    EXPECT_EQ(serve.stop(), 0);
  }
  Serve serve(args);
  EXPECT_EQ(serve.get("/v1/sessions/" + first).status, 404);
  EXPECT_EQ(serve.get("/v1/sessions/" + second).status, 200);
}

// A saved session's metadata damaged or hostile: that session is skipped with a one-line warning
// naming its file, the server starts and serves the others.
TEST(ServeCli, DamagedSavedSessionsAreSkippedAndTheOthersServed) {
  test::ScratchDir dir;
  const std::string sessions = dir.path("sessions");
  const std::string args = "--model " + byte_model() + " --session-dir " + sessions;
  std::string good;
  std::vector<int64_t> good_tokens;
  {
    Serve serve(args);
    good = serve.post("/v1/sessions", json{{"prompt", kDocument}}).parsed()["id"];
    good_tokens = tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", good}})));
    EXPECT_EQ(serve.stop(), 0);
  }
  const std::string meta = read_file(sessions + "/" + good + ".json");
  const std::string state = read_file(sessions + "/" + good + ".session");
  ASSERT_FALSE(meta.empty() || state.empty());
  // The metadata with `key`'s value replaced by the JSON text `value` (which may not parse).
  const auto with = [&meta](const std::string& key, const std::string& value) {
    json changed = json::parse(meta);
    changed[key] = "@";
    std::string text = changed.dump();
    return text.replace(text.find("\"@\""), 3, value);
  };
  const auto without = [&meta](const std::string& key) {
    json changed = json::parse(meta);
    changed.erase(key);
    return changed.dump();
  };
  // Each a copy of the good session (its .session file too) whose metadata file is damaged.
  const std::vector<std::pair<std::string, std::string>> damaged = {
      {meta.substr(0, meta.size() / 2), "not valid JSON"},
      {meta.substr(0, 8) + std::string(1, '\0') + meta.substr(9), "NUL byte"},
      {std::string(100000, '['), "nested deeper than"},
      {"[1, 2]", "not a JSON object"},
      {with("tokens", "1e999"), "not valid JSON"},
      {with("tokens", "1e300"), "\"tokens\" must be an integer"},
      {with("inner_steps", "-1"), "\"inner_steps\" must be an integer"},
      {with("seen", "[1, 258]"), "a token id of \"seen\" must be an integer from 0 to 257"},
      {with("seen", "{}"), "\"seen\" must be an array"},
      {without("created"), "no \"created\""},
  };
  std::vector<std::string> bad_ids;
  for (size_t i = 0; i < damaged.size(); ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "sess-%016zx", i);
    bad_ids.push_back(id);
    write_file(sessions + "/" + id + ".json", damaged[i].first);
    write_file(sessions + "/" + id + ".session", state);
  }
  Serve serve(args);
  const std::string log = serve.log();
  EXPECT_NE(log.find("1 saved sessions"), std::string::npos) << log;
  for (size_t i = 0; i < damaged.size(); ++i) {
    const std::string path = sessions + "/" + bad_ids[i] + ".json";
    const size_t at = log.find("ttt: warning: skipping saved session " + bad_ids[i] + ": " + path + ": ");
    ASSERT_NE(at, std::string::npos) << log;
    const std::string line = log.substr(at, log.find('\n', at) - at);
    EXPECT_NE(line.find(damaged[i].second), std::string::npos) << line;
    EXPECT_EQ(serve.get("/v1/sessions/" + bad_ids[i]).status, 404);
  }
  EXPECT_EQ(tokens_of(serve.post("/v1/completions", sampled({{"prompt", kQuestion}, {"session", good}}))), good_tokens);
  EXPECT_EQ(serve.stop(), 0);
}

void expect_error(const Reply& reply, int status, const std::string& fragment) {
  EXPECT_EQ(reply.status, status) << reply.body;
  const json body = json::parse(reply.body, nullptr, false);
  ASSERT_TRUE(!body.is_discarded() && body.contains("error")) << reply.body;
  EXPECT_NE(body["error"]["message"].get<std::string>().find(fragment), std::string::npos) << reply.body;
}

// Sends raw bytes to the server and returns what it answered within `seconds` (bash's /dev/tcp).
std::string raw_request(const Serve& serve, const std::string& bytes, int seconds) {
  const std::string file = temp_path("raw.txt"), out = temp_path("raw_out.txt");
  write_file(file, bytes);
  const std::string url = serve.url("");
  const std::string port = url.substr(url.rfind(':') + 1, url.size() - url.rfind(':') - 2);
  const std::string command = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/" + port + "; cat " + file + " >&3; timeout " +
                              std::to_string(seconds) + " cat <&3' >" + out + " 2>/dev/null";
  [[maybe_unused]] const int status = std::system(command.c_str());
  return read_file(out);
}

TEST(ServeCli, BadRequestsGetTheirStatusAndTheServerKeepsServing) {
  SKIP_WITHOUT_TOKENIZERS();
  Serve serve("--model " + byte_model() +
              " --tokenizer bytes --api-key sesame --max-body-mb 1 --max-tokens 64 --max-sessions 1 --timeout 1");
  const std::string auth = "-H 'Authorization: Bearer sesame'";
  serve.set_auth(auth);
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}}), 401, "API key");
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}}, "-H 'Authorization: Bearer wrong'"), 401,
               "API key");
  EXPECT_EQ(serve.get("/health").status, 200);  // health needs no key
  expect_error(serve.post("/v1/completions", std::string("{\"prompt\": "), auth), 400, "not valid JSON");
  expect_error(serve.post("/v1/completions", std::string("{\"prompt\": \"\xc3\x28\"}"), auth), 400, "not valid JSON");
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}, {"temperature", -1}}, auth), 400, "temperature");
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}, {"temperature", "warm"}}, auth), 400, "temperature");
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}, {"max_tokens", 1000000000}}, auth), 400,
               "max_tokens");
  expect_error(serve.post("/v1/completions", json{{"prompt", {1, 258}}}, auth), 400, "vocabulary");
  expect_error(serve.post("/v1/completions", json{{"prompt", "x"}, {"session", "sess-0000000000000000"}}, auth), 404,
               "no session");
  expect_error(serve.get("/v1/sessions/../../etc/passwd", auth), 404, "");
  expect_error(serve.get("/v1/nothing", auth), 404, "unknown endpoint");
  expect_error(serve.post("/v1/completions", json{{"prompt", std::string(2 << 20, 'a')}}, auth), 413, "larger");
  expect_error(serve.post("/v1/completions", json{{"prompt", std::string(2 << 20, 'a')}},
                          auth + " -H 'Transfer-Encoding: chunked'"),
               413, "larger");
  // A body shorter than its Content-Length, the connection half-closed: a 400, no hang.
  const std::string truncated =
      raw_request(serve,
                  "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: "
                  "application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": \"x\"",
                  3);
  EXPECT_EQ(truncated.rfind("HTTP/1.1 400", 0), 0u) << truncated;
  const std::string garbage = raw_request(serve, "NONSENSE\r\n\r\n", 1);
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  // Raw text uploads create sessions; invalid UTF-8 there is a 400 too.
  const Reply book =
      curl("-H 'Content-Type: text/plain' --data-binary 'Once upon a time' " + auth + " " + serve.url("/v1/sessions"));
  EXPECT_EQ(book.status, 200) << book.body;
  EXPECT_EQ(book.parsed()["tokens"], 17);
  const std::string invalid = temp_path("invalid.txt");
  write_file(invalid, "caf\xc3 \xff\xfe");
  expect_error(
      curl("-H 'Content-Type: text/plain' --data-binary @" + invalid + " " + auth + " " + serve.url("/v1/sessions")),
      400, "UTF-8");
  // At most --max-sessions in memory without a --session-dir to spill to.
  expect_error(curl("-H 'Content-Type: text/plain' --data-binary 'Twice' " + auth + " " + serve.url("/v1/sessions")),
               429, "no room for another session");
  // After all of that it still answers.
  EXPECT_EQ(serve.post("/v1/completions", json{{"prompt", "Hi"}, {"max_tokens", 3}}, auth).status, 200);
  EXPECT_EQ(serve.metric("ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"400\"}"),
            7);  // the seven above
  EXPECT_NE(serve.get("/metrics", auth).body.find("status=\"413\""), std::string::npos);
  EXPECT_EQ(serve.stop(), 0);
}

// A streamed completion in the background (curl -N into a file), until it ends or is stopped.
class BackgroundStream {
 public:
  BackgroundStream(const Serve& serve, const json& request) : out_(temp_path("background.txt")) {
    const std::string file = temp_path("background.json");
    write_file(file, request.dump());
    pid_ = io::start_command({.program = "/bin/bash",
                              .args = {"-c", "exec curl -s -N -H 'Content-Type: application/json' --data-binary @" +
                                                 file + " " + serve.url("/v1/completions") + " >" + out_}});
  }
  ~BackgroundStream() { disconnect(); }
  void disconnect() {
    if (pid_ < 0) return;
    ::kill(pid_, SIGTERM);
    io::wait_command(pid_);
    pid_ = -1;
  }
  Streamed wait() {
    io::wait_command(pid_);
    pid_ = -1;
    return parse_stream(read_file(out_));
  }
  std::string output() const { return read_file(out_); }

 private:
  std::string out_;
  int pid_ = -1;
};

// Waits until `condition` holds (at most 30 s).
template <typename Condition>
bool eventually(Condition condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

TEST(ServeCli, QueueDisconnectsDeletesAndShutdown) {
  Serve serve("--model " + byte_model() + " --slots 1 --queue 1 --max-tokens 1000000");
  const std::string id = serve.post("/v1/sessions", json{{"prompt", kDocument}}).parsed()["id"];
  // Greedy decoding of this model never samples eos: the stream runs until it is stopped.
  const json long_stream = {
      {"prompt", kQuestion}, {"session", id}, {"max_tokens", 1000000}, {"temperature", 0}, {"stream", true}};
  {
    BackgroundStream stream(serve, long_stream);
    ASSERT_TRUE(eventually([&] { return serve.metric("ttt_requests_running") == 1; }));
    std::thread queued([&] {
      EXPECT_EQ(serve.post("/v1/completions", json{{"prompt", kQuestion}, {"max_tokens", 2}}).status, 200);
    });
    ASSERT_TRUE(eventually([&] { return serve.metric("ttt_queue_length") == 1; }));
    expect_error(serve.post("/v1/completions", json{{"prompt", kQuestion}}), 429, "busy");
    // The session in use is deleted: the stream goes on, the session is gone.
    EXPECT_EQ(serve.del("/v1/sessions/" + id).status, 200);
    EXPECT_EQ(serve.get("/v1/sessions/" + id).status, 404);
    EXPECT_TRUE(eventually([&] { return parse_stream(stream.output()).tokens.size() >= 5; }));
    // The client disconnects: its slot goes to the queued request.
    stream.disconnect();
    queued.join();
  }
  EXPECT_TRUE(eventually(
      [&] { return serve.metric("ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"499\"}") == 1; }));
  EXPECT_TRUE(eventually([&] { return serve.metric("ttt_requests_running") == 0; }));

  // SIGTERM: the running stream is cut cleanly, the queued request gets a 503, the exit is 0.
  BackgroundStream stream(serve,
                          {{"prompt", kQuestion}, {"max_tokens", 1000000}, {"temperature", 0}, {"stream", true}});
  ASSERT_TRUE(eventually([&] { return parse_stream(stream.output()).tokens.size() >= 5; }));
  Reply queued_reply;
  std::thread queued([&] { queued_reply = serve.post("/v1/completions", json{{"prompt", kQuestion}}); });
  ASSERT_TRUE(eventually([&] { return serve.metric("ttt_queue_length") == 1; }));
  EXPECT_EQ(serve.stop(), 0);
  queued.join();
  expect_error(queued_reply, 503, "stopping");
  const Streamed cut = stream.wait();
  EXPECT_TRUE(cut.done) << stream.output().substr(0, 2000);
  EXPECT_EQ(cut.finish, "cancelled");
}

// A client that leaves a plain (not streamed) completion or a session's read frees its slot at
// the next token or piece read: with one slot, the next request is served at once, not after
// the abandoned one would have ended.
TEST(ServeCli, ClientsThatLeaveFreeTheirSlot) {
  Serve serve("--model " + byte_model() + " --slots 1 --max-tokens 1000000");
  const auto leave_once_running = [&](const std::string& path, const json& request) {
    const std::string file = temp_path("leaving.json");
    write_file(file, request.dump());
    const int client = io::start_command(
        {.program = "/bin/bash",
         .args = {"-c", "exec curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary @" + file + " " +
                            serve.url(path)}});
    EXPECT_TRUE(eventually([&] { return serve.metric("ttt_requests_running") == 1; }));
    ::kill(client, SIGTERM);
    io::wait_command(client);
  };
  const auto served_within_seconds = [&](int seconds) {
    return serve.post("/v1/completions", json{{"prompt", kQuestion}, {"max_tokens", 2}},
                      "--max-time " + std::to_string(seconds));
  };
  // Greedy decoding of this model never samples eos: alone, this runs for a million tokens.
  leave_once_running("/v1/completions", {{"prompt", kQuestion}, {"max_tokens", 1000000}, {"temperature", 0}});
  EXPECT_EQ(served_within_seconds(20).status, 200);
  EXPECT_TRUE(eventually(
      [&] { return serve.metric("ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"499\"}") == 1; }));

  // A long document (a million tokens: minutes of reading) left while it is being read.
  leave_once_running("/v1/sessions", {{"prompt", std::vector<int64_t>(1000000, 97)}});
  EXPECT_EQ(served_within_seconds(20).status, 200);
  EXPECT_TRUE(eventually(
      [&] { return serve.metric("ttt_requests_total{endpoint=\"POST /v1/sessions\",status=\"499\"}") == 1; }));
  EXPECT_EQ(serve.metric("ttt_sessions_in_memory"), 0);
  EXPECT_EQ(serve.stop(), 0);
}

// Until the model is loaded the API answers 503 in OpenAI's shape; /health too.
TEST(ServeCli, AnswersWhileLoadingAre503s) {
  const std::string gate = temp_path("load_gate");
  Serve serve("--model " + byte_model(), "TTT_SERVE_TEST_LOAD_GATE=" + gate, /*until_ready=*/false);
  for (const Reply& loading : {serve.get("/health"), serve.post("/v1/completions", json{{"prompt", kQuestion}}),
                               serve.post("/v1/sessions", json{{"prompt", kDocument}}), serve.get("/v1/sessions")}) {
    expect_error(loading, 503, "loading");
    EXPECT_EQ(loading.parsed()["error"]["code"], "model_loading");
  }
  EXPECT_EQ(serve.get("/v1/models").status, 200);
  write_file(gate, "");
  ASSERT_TRUE(eventually([&] { return serve.get("/health").status == 200; }));
  EXPECT_EQ(serve.post("/v1/completions", json{{"prompt", kQuestion}, {"max_tokens", 2}}).status, 200);
  EXPECT_EQ(serve.metric("ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"503\"}"), 1);
  EXPECT_EQ(serve.stop(), 0);
}

// npm's `openai` package (pinned), installed once into the build tree.
std::string openai_package_dir() {
  const std::string binary = TTT_BINARY;
  const std::string dir = binary.substr(0, binary.rfind('/')) + "/npm-openai";
  if (::access((dir + "/node_modules/openai/package.json").c_str(), R_OK) != 0) {
    const std::string install = "npm install --prefix " + dir +
                                " --no-save --no-audit --no-fund --legacy-peer-deps --loglevel=error openai@5.7.0 "
                                ">/dev/null 2>&1";
    EXPECT_EQ(std::system(install.c_str()), 0) << install;
  }
  return dir;
}

TEST(ServeCli, BadFlagsFailBeforeListening) {
  test::expect_clean_failure(run_ttt("serve --model " + temp_path("missing.safetensors") + " --port 0"), "--model");
  test::expect_clean_failure(run_ttt("serve --model " + byte_model() + " --slots 0"), "--slots");
  test::expect_clean_failure(run_ttt("serve --model " + byte_model() + " --host 203.0.113.1 --port 0"),
                             "cannot listen on 203.0.113.1");
}

TEST(ServeCli, OpenAiClientLibraryWorksUnmodified) {
  SKIP_WITHOUT_TOKENIZERS();
  const std::string packages = openai_package_dir();
  Serve serve("--model " + byte_model() + " --tokenizer bytes --api-key test-key");
  const std::vector<int64_t> expected = generate(with_bos(kDocument), kSampling);
  const std::string model_name = io::file_name(byte_model()).substr(0, io::file_name(byte_model()).rfind('.'));
  const json request = sampled({{"model", model_name}, {"prompt", "Hello world!\nThe"}});
  const std::string out = temp_path("openai.json");
  const std::string command = "NODE_PATH=" + packages + "/node_modules node " + TTT_SOURCE_DIR +
                              "/tests/serve/openai_client.js " + serve.url("/v1") + " '" + request.dump() + "' >" +
                              out + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_file(out);
  const json got = json::parse(read_file(out));
  EXPECT_EQ(got["plain"]["tokens"], expected);
  EXPECT_EQ(got["plain"]["object"], "text_completion");
  EXPECT_EQ(got["stream"]["tokens"], expected);
  EXPECT_EQ(got["stream"]["text"], got["plain"]["text"]);
  EXPECT_EQ(got["stream"]["finish"], got["plain"]["finish"]);
  EXPECT_EQ(got["models"], json::array({model_name}));
  EXPECT_EQ(serve.stop(), 0);
}

}  // namespace
}  // namespace ttt
