// The server's pure parts: request parsing and checking, stop sequences and UTF-8 in streamed
// text, the scheduler's slots and queue, the metrics' text.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "serve/api.h"
#include "serve/metrics.h"
#include "serve/scheduler.h"
#include "serve/text_output.h"

namespace ttt::serve {
namespace {

const Limits kLimits{.vocab_size = 50, .max_tokens = 100};

CompletionRequest parsed(const std::string& body) {
  Parsed<CompletionRequest> result = parse_completion_request(body, kLimits);
  if (const auto* error = std::get_if<ApiError>(&result)) ADD_FAILURE() << body << ": " << error->message;
  return std::holds_alternative<CompletionRequest>(result) ? std::get<CompletionRequest>(result) : CompletionRequest{};
}

// The request is refused with a 400 whose message names `fragment`.
void expect_refused(const std::string& body, const std::string& fragment) {
  const Parsed<CompletionRequest> result = parse_completion_request(body, kLimits);
  const auto* error = std::get_if<ApiError>(&result);
  ASSERT_NE(error, nullptr) << body;
  EXPECT_EQ(error->status, 400) << body;
  EXPECT_NE(error->message.find(fragment), std::string::npos) << body << ": " << error->message;
  const nlohmann::json shaped = nlohmann::json::parse(error_body(*error));
  EXPECT_EQ(shaped["error"]["message"], error->message);
  EXPECT_EQ(shaped["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(shaped["error"].contains("code"));
}

TEST(ServeApi, ParsesOpenAiCompletionRequests) {
  const CompletionRequest r = parsed(
      R"({"model": "m", "prompt": [1, 5, 49], "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 3,
          "repetition_penalty": 1.2, "seed": 11, "stop": ["a", "bc"], "stream": true,
          "stream_options": {"include_usage": true}, "logprobs": 2, "session": "sess-0123456789abcdef",
          "commit": true, "user": "ignored", "n": 1})");
  EXPECT_EQ(r.prompt.ids, (std::vector<int64_t>{1, 5, 49}));
  EXPECT_FALSE(r.prompt.text);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_DOUBLE_EQ(r.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.top_p, 0.9);
  EXPECT_EQ(r.top_k, 3);
  EXPECT_DOUBLE_EQ(r.repetition_penalty, 1.2);
  EXPECT_EQ(r.seed, 11u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.commit);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.session, "sess-0123456789abcdef");

  const CompletionRequest defaults = parsed(R"({"prompt": "hello", "stop": "x", "seed": null})");
  EXPECT_EQ(defaults.prompt.text, "hello");
  EXPECT_EQ(defaults.max_tokens, 16);
  EXPECT_DOUBLE_EQ(defaults.temperature, 1.0);
  EXPECT_FALSE(defaults.seed || defaults.stream || defaults.logprobs || defaults.session);
  EXPECT_EQ(defaults.stop, (std::vector<std::string>{"x"}));
  EXPECT_EQ(parsed(R"({"prompt": ["batch of one"]})").prompt.text, "batch of one");
  EXPECT_EQ(parsed(R"({"prompt": [[3, 4]]})").prompt.ids, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(parsed(R"({"prompt": "x", "seed": -1})").seed, ~uint64_t{0});
}

TEST(ServeApi, RefusesBadRequestsWithOpenAiErrors) {
  expect_refused("", "not valid JSON");
  expect_refused(R"({"prompt": "x")", "not valid JSON");  // truncated
  expect_refused("[1, 2]", "must be a JSON object");
  expect_refused("{\"prompt\": \"\xff\xfe\"}", "not valid JSON");         // invalid UTF-8
  expect_refused("{\"prompt\": \"\xff\xfe\"}", "\\xFF");                  // the parser's quote of the byte, as text
  expect_refused(R"({"prompt": "x", "seed": 1e999})", "not valid JSON");  // out of range
  expect_refused(std::string(R"({"prompt": )") + std::string(100, '[') + std::string(100, ']') + "}",
                 "nested deeper");  // bounded before anything walks it
  expect_refused(R"({"max_tokens": 3})", "prompt is required");
  expect_refused(R"({"prompt": 5})", "prompt must be");
  expect_refused(R"({"prompt": ["a", "b"]})", "one prompt per request");
  const std::string vocabulary_id = " (a token id of the model's vocabulary) must be an integer from 0 to 49, got ";
  expect_refused(R"({"prompt": [1, 50]})", "prompt[1]" + vocabulary_id + "50");
  expect_refused(R"({"prompt": [1, -1]})", "prompt[1]" + vocabulary_id + "-1");
  expect_refused(R"({"prompt": [1, 2.5]})", "prompt[1]" + vocabulary_id + "2.5");
  expect_refused(R"({"prompt": [18446744073709551615]})", "prompt[0]" + vocabulary_id + "18446744073709551615");
  expect_refused(R"({"prompt": "x", "max_tokens": 101})", "max_tokens must be an integer from 1 to 100, got 101");
  expect_refused(R"({"prompt": "x", "max_tokens": 99999999999999999999})", "max_tokens");
  expect_refused(R"({"prompt": "x", "max_tokens": 0})", "max_tokens");
  expect_refused(R"({"prompt": "x", "max_tokens": "10"})", "max_tokens must be an integer");
  expect_refused(R"({"prompt": "x", "temperature": -0.5})", "temperature");
  expect_refused(R"({"prompt": "x", "temperature": "hot"})", "temperature must be a number");
  expect_refused(R"({"prompt": "x", "top_p": 0})", "top_p");
  expect_refused(R"({"prompt": "x", "top_k": -1})", "top_k");
  expect_refused(R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty");
  expect_refused(R"({"prompt": "x", "stream": "yes"})", "stream must be true or false");
  expect_refused(R"({"prompt": "x", "stop": ["a", 3]})", "stop must be");
  expect_refused(R"({"prompt": "x", "stop": ["", "b"]})", "must not be empty");
  expect_refused(R"({"prompt": "x", "logprobs": 6})", "logprobs");
  expect_refused(R"({"prompt": "x", "session": 3})", "session must be a string");
  expect_refused(R"({"prompt": "x", "commit": true})", "commit needs a session");
  expect_refused(R"({"prompt": "x", "n": 2})", "n must be an integer from 1 to 1, got 2");
  expect_refused(R"({"prompt": "x", "seed": 0.5})", "seed must be an integer, got 0.5");
  expect_refused(R"({"prompt": "x", "echo": true})", "echo");
  expect_refused(R"({"prompt": "x", "presence_penalty": 0.5})", "repetition_penalty");
  EXPECT_TRUE(std::holds_alternative<ApiError>(parse_session_request(R"({"prompt": {}})", kLimits)));
  EXPECT_EQ(std::get<SessionRequest>(parse_session_request(R"({"prompt": [1, 2]})", kLimits)).prompt.ids.size(), 2u);
}

TEST(ServeApi, SessionIdsAreTheServersOwnShape) {
  EXPECT_TRUE(valid_session_id("sess-0123456789abcdef"));
  for (const char* bad : {"", "sess-", "sess-0123456789abcdeg", "sess-0123456789ABCDEF", "../../etc/passwd",
                          "sess-0123456789abcdef0", "xess-0123456789abcdef"}) {
    EXPECT_FALSE(valid_session_id(bad)) << bad;
  }
}

TEST(ServeApi, CompletionJsonHasOpenAisFields) {
  const nlohmann::json out = completion_json("cmpl-1", 42, "m", {"hi \xff", "length", std::nullopt}, Usage{3, 2});
  EXPECT_EQ(out["object"], "text_completion");
  EXPECT_NE(json_text(out).find("\"text\":\"hi \xef\xbf\xbd\""), std::string::npos) << json_text(out);
  EXPECT_EQ(out["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(out["usage"]["total_tokens"], 5);
  // Invalid UTF-8 in generated bytes becomes U+FFFD when written, never an exception.
  EXPECT_NE(json_text(nlohmann::json("a\xff")).find("\xef\xbf\xbd"), std::string::npos);
  const nlohmann::json chunk = completion_json("cmpl-1", 42, "m", {"x", "", std::nullopt}, std::nullopt);
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(chunk.contains("usage"));
}

TEST(ServeTextOutput, StopSequencesEndTheTextAndAreNotSent) {
  TextOutput out({"END", "xy"});
  std::string sent = out.add("abc E");
  EXPECT_EQ(sent, "abc ");  // "E" may begin "END"
  sent += out.add("N");
  EXPECT_EQ(sent, "abc ");
  sent += out.add("Dtail");
  EXPECT_EQ(sent, "abc ");
  EXPECT_TRUE(out.stopped());
  EXPECT_EQ(out.add("more"), "");
  EXPECT_EQ(out.finish(), "");

  TextOutput false_start({"END"});
  EXPECT_EQ(false_start.add("EN"), "");
  EXPECT_EQ(false_start.add("x"), "ENx");
  EXPECT_EQ(false_start.add("E"), "");
  EXPECT_EQ(false_start.finish(), "E");  // the end of generation sends what was held
}

TEST(ServeTextOutput, PiecesNeverEndInsideACharacter) {
  TextOutput out({});
  const std::string euro = "\xe2\x82\xac";
  EXPECT_EQ(out.add(euro.substr(0, 1)), "");
  EXPECT_EQ(out.add(euro.substr(1, 1)), "");
  EXPECT_EQ(out.add(euro.substr(2) + "a"), euro + "a");
  EXPECT_EQ(out.add("\xff"), "\xff");  // not a character's start: sent (and written as U+FFFD)
  EXPECT_EQ(out.add("\xf0\x9f"), "");
  EXPECT_EQ(out.finish(), "\xf0\x9f");
}

TEST(ServeScheduler, SlotsThenABoundedQueueThen429) {
  Scheduler scheduler(1, 1);
  auto first = std::make_unique<Scheduler::Slot>(scheduler.acquire());
  EXPECT_EQ(scheduler.running(), 1);
  auto waiting = std::async(std::launch::async, [&] { return Scheduler::Slot(scheduler.acquire()); });
  while (scheduler.waiting() == 0) std::this_thread::yield();
  try {
    scheduler.acquire();
    ADD_FAILURE() << "a full queue admitted a request";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 429);
  }
  first.reset();  // the waiting request gets the slot
  {
    const Scheduler::Slot second = waiting.get();
    EXPECT_EQ(scheduler.running(), 1);
  }
  EXPECT_TRUE(scheduler.wait_idle(std::chrono::milliseconds(100)));

  auto held = std::make_unique<Scheduler::Slot>(scheduler.acquire());
  auto refused = std::async(std::launch::async, [&] {
    try {
      scheduler.acquire();
      return 0;
    } catch (const ApiError& e) {
      return e.status;
    }
  });
  while (scheduler.waiting() == 0) std::this_thread::yield();
  scheduler.stop();
  EXPECT_EQ(refused.get(), 503);
  EXPECT_FALSE(scheduler.wait_idle(std::chrono::milliseconds(10)));
  held.reset();
  EXPECT_TRUE(scheduler.wait_idle(std::chrono::milliseconds(100)));
}

TEST(ServeMetrics, PrometheusText) {
  Metrics metrics;
  metrics.count_request("POST /v1/completions", 200);
  metrics.count_request("POST /v1/completions", 200);
  metrics.count_request("POST /v1/completions", 429);
  metrics.add_tokens(10, 4, 3);
  metrics.observe_prefill(0.2);
  metrics.observe_token(0.003);
  const std::string text = metrics.render({.requests_waiting = 2, .sessions_on_disk = 1});
  for (const char* line : {"ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"200\"} 2\n",
                           "ttt_requests_total{endpoint=\"POST /v1/completions\",status=\"429\"} 1\n",
                           "ttt_tokens_read_total 10\n", "ttt_tokens_generated_total 4\n", "ttt_inner_steps_total 3\n",
                           "ttt_queue_length 2\n", "ttt_sessions_on_disk 1\n",
                           "ttt_prefill_seconds_bucket{le=\"0.1\"} 0\n", "ttt_prefill_seconds_bucket{le=\"0.25\"} 1\n",
                           "ttt_prefill_seconds_bucket{le=\"+Inf\"} 1\n", "ttt_token_seconds_count 1\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

}  // namespace
}  // namespace ttt::serve
