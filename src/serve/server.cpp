#include "serve/server.h"

#include <dirent.h>
#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "serve/api.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/scheduler.h"
#include "serve/text_codec.h"
#include "serve/text_output.h"

namespace ttt::serve {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void send_json(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  res.set_content(error_body(error), "application/json");
}

// The route a request took, for the metrics' labels (ids left out: they are unbounded).
std::string endpoint_of(const httplib::Request& req) {
  const std::string& path = req.path;
  for (const char* fixed : {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/sessions"}) {
    if (path == fixed) return req.method + " " + fixed;
  }
  if (path.rfind("/v1/sessions/", 0) == 0) {
    const bool append = path.size() > 7 && path.compare(path.size() - 7, 7, "/append") == 0;
    return req.method + (append ? " /v1/sessions/{id}/append" : " /v1/sessions/{id}");
  }
  return "other";
}

json session_json(const SessionInfo& info) {
  return {{"id", info.id},
          {"object", "session"},
          {"created", info.created},
          {"tokens", info.tokens},
          {"inner_steps", info.inner_steps},
          {"state_bytes", info.state_bytes},
          {"in_memory", info.in_memory}};
}

std::string event(const json& data) { return "data: " + json_text(data) + "\n\n"; }

// nginx's status for a client that closed its connection before the answer: only the metrics
// see it (ttt_requests_total).
constexpr int kClientClosedRequest = 499;
ApiError client_gone() {
  return {kClientClosedRequest, "the client closed the connection", "invalid_request_error", "client_closed_request",
          ""};
}

// Whether the client of a request is still there. httplib 0.11.4 gives a handler neither its
// connection nor a way to ask about it (only a streamed response's DataSink can), so the
// connection's socket is found among this process's descriptors by the addresses httplib read
// into the request: it stays open while the request is handled. The client has gone when it
// closed its end, by httplib's own test (nothing to read, or unread bytes such as a next
// request, mean it is still there).
class ClientConnection {
 public:
  explicit ClientConnection(const httplib::Request& req) {
    DIR* descriptors = ::opendir("/proc/self/fd");
    if (!descriptors) return;
    while (const dirent* entry = ::readdir(descriptors)) {
      const int fd = std::atoi(entry->d_name);  // 0 for "." and ".."
      if (fd <= 2 || fd == ::dirfd(descriptors)) continue;
      std::string remote_addr, local_addr;
      int remote_port = -1, local_port = -1;
      httplib::detail::get_remote_ip_and_port(fd, remote_addr, remote_port);
      if (remote_port != req.remote_port || remote_addr != req.remote_addr) continue;
      httplib::detail::get_local_ip_and_port(fd, local_addr, local_port);
      if (local_port == req.local_port && local_addr == req.local_addr) {
        socket_ = fd;
        break;
      }
    }
    ::closedir(descriptors);
  }
  bool gone() const { return socket_ >= 0 && !httplib::detail::is_socket_alive(socket_); }

 private:
  int socket_ = -1;
};

}  // namespace

struct Server::Impl {
  ServerOptions options;
  httplib::Server http;
  Scheduler scheduler;
  Metrics metrics;
  std::atomic<Engine*> engine{nullptr};
  TextCodec* codec = nullptr;
  std::thread listener;

  explicit Impl(const ServerOptions& o) : options(o), scheduler(o.slots, o.queue) {}

  bool stopping() const { return scheduler.stopping(); }
  // Stops a long read when the server stops or the client has gone.
  Interrupt interrupt(const ClientConnection& client) const {
    return [this, &client] {
      if (stopping()) throw server_stopping();
      if (client.gone()) throw client_gone();
    };
  }
  Limits limits() const { return {engine.load()->model().vocab_size, options.max_tokens}; }

  // The prompt's ids: text goes through the tokenizer.
  std::vector<int64_t> prompt_ids(const Prompt& prompt) {
    if (!prompt.text) return prompt.ids;
    if (!codec) {
      throw bad_request("the server has no tokenizer (start it with --tokenizer): send the prompt as token ids",
                        "prompt");
    }
    try {
      return codec->encode(*prompt.text);
    } catch (const Error& e) {
      throw bad_request(std::string("the prompt cannot be tokenized: ") + e.what(), "prompt");
    }
  }

  // The text of a generated token: its bytes, or without a tokenizer its id (space-separated,
  // as `ttt generate` prints them).
  std::string piece(int64_t id, bool first) const {
    if (codec) return codec->piece(id);
    return (first ? "" : " ") + std::to_string(id);
  }

  // Authentication and readiness, then the handler; every failure is an OpenAI-shaped error.
  template <typename Handler>
  void guarded(const httplib::Request& req, httplib::Response& res, bool needs_engine, const Handler& handler) {
    try {
      if (!options.api_key.empty() && req.get_header_value("Authorization") != "Bearer " + options.api_key) {
        throw ApiError{401, "a valid API key is required: Authorization: Bearer KEY", "invalid_request_error",
                       "invalid_api_key", ""};
      }
      if (stopping()) throw server_stopping();
      if (needs_engine && !engine.load()) {
        throw ApiError{503, "the model is loading; retry shortly", "server_error", "model_loading", ""};
      }
      handler();
    } catch (const ApiError& error) {
      send_error(res, error);
    } catch (const std::exception& e) {
      send_error(res, {500, describe(e), "server_error", "internal_error", ""});
    }
  }

  // A POST handler: its body read up to --max-body-mb (413 beyond, also for chunked uploads).
  httplib::Server::HandlerWithContentReader with_body(
      std::function<void(const httplib::Request&, const std::string&, httplib::Response&)> handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
      std::string body;
      bool too_large = false;
      const bool complete = reader([&](const char* data, size_t size) {
        if (body.size() + size > static_cast<size_t>(options.max_body_bytes)) {
          too_large = true;
          return false;
        }
        body.append(data, size);
        return true;
      });
      if (too_large || res.status == 413) {
        send_error(res,
                   {413, "the body is larger than " + std::to_string(options.max_body_bytes) + " bytes (--max-body-mb)",
                    "invalid_request_error", "body_too_large", ""});
        return;
      }
      if (!complete) {
        send_error(res, bad_request("the body ended before its declared length (or was malformed)"));
        return;
      }
      res.status = -1;
      handler(req, body, res);
    };
  }

  SessionRequest session_request(const httplib::Request& req, const std::string& body) {
    // A raw text upload (curl --data-binary @book.txt -H 'Content-Type: text/plain') is the prompt.
    if (req.get_header_value("Content-Type").rfind("text/plain", 0) == 0) {
      try {
        (void)json(body).dump();  // throws on invalid UTF-8, which JSON bodies cannot hold either
      } catch (const json::type_error&) {
        throw bad_request("the body is not UTF-8 text");
      }
      if (body.empty()) throw bad_request("the body is empty: send the document's text");
      return SessionRequest{Prompt{body, {}}};
    }
    Parsed<SessionRequest> parsed = parse_session_request(body, limits());
    if (auto* error = std::get_if<ApiError>(&parsed)) throw *error;
    return std::get<SessionRequest>(std::move(parsed));
  }

  void handle_completion(const httplib::Request& req, const std::string& body, httplib::Response& res);
  void add_routes();
};

namespace {

// One completion from its first token to its end; steps run on the thread of the request.
struct CompletionRun {
  Server::Impl& server;
  CompletionRequest request;
  ClientConnection client;
  Scheduler::Slot slot;
  std::unique_ptr<Generation> generation;
  std::string id = "cmpl-";
  int64_t created = unix_now();
  TextOutput output;
  std::vector<int64_t> tokens;
  std::optional<std::vector<TokenLogprob>> logprobs;
  std::string finish;  // "" while running
  const int64_t prompt_tokens, prefill_steps;

  CompletionRun(Server::Impl& s, CompletionRequest r, ClientConnection c, Scheduler::Slot held,
                std::unique_ptr<Generation> g)
      : server(s),
        request(std::move(r)),
        client(c),
        slot(std::move(held)),
        generation(std::move(g)),
        output(request.stop),
        prompt_tokens(generation->prompt_tokens()),
        prefill_steps(generation->inner_steps()) {
    static std::atomic<uint64_t> counter{0};
    thread_local std::mt19937_64 random(std::random_device{}());
    char suffix[40];
    std::snprintf(suffix, sizeof suffix, "%08llx%llu", static_cast<unsigned long long>(random() & 0xffffffff),
                  static_cast<unsigned long long>(++counter));
    id += suffix;
    if (request.logprobs) logprobs.emplace();
  }

  // Generates one token; returns the text that may be sent now. Sets `finish` at the end.
  std::string step() {
    if (server.stopping()) {
      finish = "cancelled";
      return output.finish();
    }
    const Clock::time_point start = Clock::now();
    const Generation::Step next = generation->next();
    server.metrics.observe_token(seconds_since(start));
    if (next.token == server.engine.load()->model().eos_id) {
      finish = "stop";
      return output.finish();
    }
    const std::string bytes = server.piece(next.token, tokens.empty());
    tokens.push_back(next.token);
    if (logprobs) {
      TokenLogprob entry{bytes, next.logprob, {}};
      for (const auto& [id, logprob] : next.top) entry.top.emplace_back(server.piece(id, true), logprob);
      logprobs->push_back(std::move(entry));
    }
    std::string text = output.add(bytes);
    if (output.stopped()) {
      finish = "stop";
    } else if (static_cast<int64_t>(tokens.size()) >= request.max_tokens) {
      finish = "length";
      text += output.finish();
    }
    return text;
  }

  // After the last step: the session takes the exchange (with commit), the counters the tokens.
  void complete() {
    server.metrics.add_tokens(0, static_cast<int64_t>(tokens.size()), generation->inner_steps() - prefill_steps);
    if (request.commit && finish != "cancelled") generation->commit();
    generation.reset();  // the session is free for the next request
  }

  // The client has gone: the counters take what was generated, the session nothing.
  void abandon() {
    finish = "cancelled";
    complete();
  }

  Usage usage() const { return {prompt_tokens, static_cast<int64_t>(tokens.size())}; }
};

}  // namespace

void Server::Impl::handle_completion(const httplib::Request& req, const std::string& body, httplib::Response& res) {
  Parsed<CompletionRequest> parsed = parse_completion_request(body, limits());
  if (auto* error = std::get_if<ApiError>(&parsed)) throw *error;
  CompletionRequest request = std::get<CompletionRequest>(std::move(parsed));
  const std::vector<int64_t> prompt = prompt_ids(request.prompt);
  SamplingOptions sampling{.temperature = request.temperature,
                           .top_k = request.top_k,
                           .top_p = request.top_p,
                           .repetition_penalty = request.repetition_penalty,
                           .seed = request.seed.value_or(std::random_device{}())};
  const ClientConnection client(req);
  Scheduler::Slot slot = scheduler.acquire();
  const Clock::time_point start = Clock::now();
  std::unique_ptr<Generation> generation = engine.load()->start(
      request.session, prompt, sampling, request.logprobs.value_or(-1), request.commit, interrupt(client));
  metrics.observe_prefill(seconds_since(start));
  metrics.add_tokens(static_cast<int64_t>(prompt.size()), 0, generation->inner_steps());
  auto run = std::make_shared<CompletionRun>(*this, std::move(request), client, std::move(slot), std::move(generation));

  if (!run->request.stream) {
    std::string text;
    while (run->finish.empty()) {
      if (run->client.gone()) {
        run->abandon();
        throw client_gone();  // frees the slot (with `run`)
      }
      text += run->step();
    }
    run->complete();
    Choice choice{text, run->finish, run->logprobs};
    json out = completion_json(run->id, run->created, options.model_name, choice, run->usage());
    out["choices"][0]["tokens"] = run->tokens;
    send_json(res, out);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [this, run, &res](size_t, httplib::DataSink& sink) {
    // The client has gone: its slot is freed with `run` when httplib drops the response.
    const auto abandon = [&] {
      run->abandon();
      res.status = kClientClosedRequest;
      return false;
    };
    try {
      if (run->client.gone()) return abandon();
      const size_t before = run->tokens.size();
      const std::string text = run->step();
      std::optional<std::vector<TokenLogprob>> logprobs;
      if (run->logprobs) logprobs.emplace(run->logprobs->begin() + static_cast<int64_t>(before), run->logprobs->end());
      json chunk =
          completion_json(run->id, run->created, options.model_name, {text, run->finish, logprobs}, std::nullopt);
      chunk["choices"][0]["tokens"] =
          std::vector<int64_t>(run->tokens.begin() + static_cast<int64_t>(before), run->tokens.end());
      // Every token gets its chunk (its text may be held back: part of a character or of a stop).
      if (run->tokens.size() > before || !run->finish.empty()) {
        const std::string data = event(chunk);
        if (!sink.write(data.data(), data.size())) return abandon();
      }
      if (run->finish.empty()) return true;
      run->complete();
      std::string tail;
      if (run->request.include_usage) {
        json usage = completion_json(run->id, run->created, options.model_name, {}, run->usage());
        usage["choices"] = json::array();
        tail += event(usage);
      }
      tail += "data: [DONE]\n\n";
      sink.write(tail.data(), tail.size());
      sink.done();
      return true;
    } catch (const std::exception& e) {
      const ApiError error = [&]() -> ApiError {
        if (const auto* api = dynamic_cast<const ApiError*>(&e)) return *api;
        return {500, describe(e), "server_error", "internal_error", ""};
      }();
      const std::string tail = "data: " + error_body(error) + "\n\ndata: [DONE]\n\n";
      sink.write(tail.data(), tail.size());
      sink.done();
      return true;
    }
  });
}

void Server::Impl::add_routes() {
  http.Get("/health", [this](const httplib::Request& req, httplib::Response& res) {
    (void)req;
    if (stopping()) return send_error(res, server_stopping());
    if (!engine.load()) return send_error(res, {503, "the model is loading", "server_error", "model_loading", ""});
    send_json(res, {{"status", "ok"}});
  });
  http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(req, res, false, [&] {
      send_json(
          res,
          {{"object", "list"},
           {"data",
            json::array({{{"id", options.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "ttt"}}})}});
    });
  });
  http.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(req, res, false, [&] {
      Gauges gauges{.requests_running = scheduler.running(),
                    .requests_waiting = scheduler.waiting(),
                    .resident_bytes = resident_bytes()};
      if (Engine* e = engine.load()) {
        const Engine::Stats stats = e->stats();
        gauges.sessions_in_memory = stats.sessions_in_memory;
        gauges.sessions_on_disk = stats.sessions_on_disk;
        gauges.session_state_bytes = stats.session_state_bytes;
        gauges.device_bytes = stats.device_bytes;
      }
      res.set_content(metrics.render(gauges), "text/plain; version=0.0.4");
    });
  });
  http.Post("/v1/completions",
            with_body([this](const httplib::Request& req, const std::string& body, httplib::Response& res) {
              guarded(req, res, true, [&] { handle_completion(req, body, res); });
            }));
  http.Post("/v1/sessions",
            with_body([this](const httplib::Request& req, const std::string& body, httplib::Response& res) {
              guarded(req, res, true, [&] {
                const std::vector<int64_t> ids = prompt_ids(session_request(req, body).prompt);
                const ClientConnection client(req);
                const Scheduler::Slot slot = scheduler.acquire();
                const Clock::time_point start = Clock::now();
                const SessionInfo info = engine.load()->create_session(ids, interrupt(client));
                metrics.observe_prefill(seconds_since(start));
                metrics.add_tokens(info.tokens, 0, info.inner_steps);
                send_json(res, session_json(info));
              });
            }));
  http.Post(R"(/v1/sessions/([^/]+)/append)",
            with_body([this](const httplib::Request& req, const std::string& body, httplib::Response& res) {
              guarded(req, res, true, [&] {
                const std::string id = req.matches[1];
                if (!valid_session_id(id))
                  throw ApiError{404, "no session " + id, "invalid_request_error", "session_not_found", "session"};
                const std::vector<int64_t> ids = prompt_ids(session_request(req, body).prompt);
                const ClientConnection client(req);
                const Scheduler::Slot slot = scheduler.acquire();
                const Clock::time_point start = Clock::now();
                const int64_t steps_before = engine.load()->session(id).inner_steps;
                const SessionInfo info = engine.load()->append(id, ids, interrupt(client));
                metrics.observe_prefill(seconds_since(start));
                metrics.add_tokens(static_cast<int64_t>(ids.size()), 0, info.inner_steps - steps_before);
                send_json(res, session_json(info));
              });
            }));
  http.Get("/v1/sessions", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(req, res, true, [&] {
      json data = json::array();
      for (const SessionInfo& info : engine.load()->sessions()) data.push_back(session_json(info));
      send_json(res, {{"object", "list"}, {"data", data}});
    });
  });
  const auto session_id = [](const httplib::Request& req) {
    const std::string id = req.matches[1];
    if (!valid_session_id(id)) {
      throw ApiError{404, "no session " + id, "invalid_request_error", "session_not_found", "session"};
    }
    return id;
  };
  http.Get(R"(/v1/sessions/([^/]+))", [this, session_id](const httplib::Request& req, httplib::Response& res) {
    guarded(req, res, true, [&] { send_json(res, session_json(engine.load()->session(session_id(req)))); });
  });
  http.Delete(R"(/v1/sessions/([^/]+))", [this, session_id](const httplib::Request& req, httplib::Response& res) {
    guarded(req, res, true, [&] {
      const std::string id = session_id(req);
      engine.load()->remove(id);
      send_json(res, {{"id", id}, {"object", "session.deleted"}, {"deleted", true}});
    });
  });
  // httplib's own answers (unknown routes, malformed requests, oversized bodies) in OpenAI's shape.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string message = res.status == 404   ? "unknown endpoint"
                                : res.status == 413 ? "the body is too large (--max-body-mb)"
                                                    : httplib::detail::status_message(res.status);
    send_error(res, {res.status, message, "invalid_request_error", "", ""});
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(endpoint_of(req), res.status);
    // What the request's tensors freed goes back to the system (about 1 ms on the CPU load test):
    // glibc keeps it otherwise (tune_malloc_for_tensors' trim threshold, free pages amid live
    // blocks) and the resident memory grew by steps under load (docs/BENCHMARKS.md).
    malloc_trim(0);
  });
}

Server::Server(const ServerOptions& options) : impl_(std::make_unique<Impl>(options)) {
  Impl& s = *impl_;
  // Threads for every request that may compute or wait, and a few for /health and /metrics;
  // more concurrent requests wait for a thread (and then mostly get their 429).
  const size_t threads = static_cast<size_t>(options.slots + options.queue + 8);
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  s.http.set_read_timeout(static_cast<time_t>(options.timeout_s));
  s.http.set_write_timeout(static_cast<time_t>(options.timeout_s));
  s.add_routes();
}

Server::~Server() {
  if (impl_->listener.joinable()) stop(std::chrono::milliseconds(0));
}

int Server::start() {
  Impl& s = *impl_;
  int port = s.options.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.options.host);
  } else if (!s.http.bind_to_port(s.options.host, port)) {
    port = -1;
  }
  require(port > 0, "cannot listen on " + s.options.host + ":" + std::to_string(s.options.port) +
                        " (in use, or not an address of this machine)");
  s.listener = std::thread([&s] { s.http.listen_after_bind(); });
  return port;
}

void Server::set_ready(Engine* engine, TextCodec* codec) {
  impl_->codec = codec;
  impl_->engine = engine;
}

void Server::stop(std::chrono::milliseconds grace) {
  Impl& s = *impl_;
  s.scheduler.stop();
  s.scheduler.wait_idle(grace);
  s.http.stop();
  if (s.listener.joinable()) s.listener.join();
}

}  // namespace ttt::serve
