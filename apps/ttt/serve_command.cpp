// `ttt serve`: an OpenAI-compatible HTTP server whose sessions learn what they read
// (src/serve). The tokenizer runs in a `ttt-data` coprocess (see data_main.cpp for why).
#include <malloc.h>
#include <pthread.h>
#include <signal.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "cli_support.h"
#include "commands.h"
#include "io/input_file.h"
#include "io/paths.h"
#include "io/scratch_dir.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "serve/text_codec.h"

namespace ttt::cli {
namespace {

struct ServeOptions {
  std::string model_path, tokenizer, session_dir;
  ComputeFlags compute;
  serve::ServerOptions server{.host = "127.0.0.1",
                              .port = 8080,
                              .max_body_bytes = 0,
                              .timeout_s = 60,
                              .slots = 1,
                              .queue = 64,
                              .max_tokens = 4096};
  int64_t max_sessions = 16, max_body_mb = 64;
};

// The model name that /v1/models lists: the checkpoint's file name without its extension.
std::string model_name(const std::string& path) {
  std::string name = io::file_name(path);
  if (const size_t dot = name.rfind(".safetensors"); dot != std::string::npos && dot > 0) name.resize(dot);
  return name;
}

// Test-only: with TTT_SERVE_TEST_LOAD_GATE=FILE the model loads once FILE exists, so that a test
// sees how the server answers while it loads (tests/apps/serve_cli_test.cpp).
void wait_for_test_load_gate() {
  const char* gate = std::getenv("TTT_SERVE_TEST_LOAD_GATE");
  if (!gate) return;
  while (::access(gate, F_OK) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void serve_until_signalled(ServeOptions& options) {
  require(options.server.slots >= 1, "--slots must be at least 1");
  require(options.server.queue >= 0, "--queue must be 0 or more");
  require(options.max_body_mb >= 1, "--max-body-mb must be at least 1");
  require(options.server.timeout_s >= 1, "--timeout must be at least 1 second");
  require(options.server.max_tokens >= 1, "--max-tokens must be at least 1");
  require(options.server.port >= 0 && options.server.port <= 65535, "--port must be 0 to 65535");
  // SIGINT and SIGTERM are waited for below: blocked before any thread starts, every thread
  // inherits the mask and none is interrupted.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // a client or the tokenizer process gone is an error, not the end
  // Requests compute on many threads in turn; glibc gives each its own arena (up to 8 per core),
  // and each arena keeps what its tensors freed (tune_malloc_for_tensors): memory would grow
  // with the number of threads that ever computed. Slots + 1 arenas keep it flat.
  mallopt(M_ARENA_MAX, static_cast<int>(options.server.slots) + 1);

  // What can be checked at once fails before the server listens (the model loads after).
  io::open_input_file(options.model_path, "--model " + options.model_path + ": ");
  if (!options.session_dir.empty()) io::make_directories(options.session_dir);
  options.server.max_body_bytes = options.max_body_mb * 1024 * 1024;
  options.server.model_name = model_name(options.model_path);
  serve::Server server(options.server);
  const int port = server.start();
  std::fprintf(stderr, "ttt serve: listening on http://%s:%d (loading the model)\n", options.server.host.c_str(), port);

  const serve::EngineOptions engine_options{options.model_path, options.compute.device, options.compute.dtype,
                                            options.max_sessions, options.session_dir};
  wait_for_test_load_gate();
  serve::Engine engine(engine_options);
  std::unique_ptr<serve::TextCodec> codec;
  const std::string tokenizer = tokenizer_for(options.model_path, options.tokenizer);
  if (!tokenizer.empty()) {
    const io::ScratchDir scratch("ttt-serve");
    ModelConfig config;
    config.vocab_size = engine.model().vocab_size;
    config.bos_id = engine.model().bos_id;
    codec = std::make_unique<serve::TextCodec>(data_program(), tokenizer,
                                               token_table_for(config, tokenizer, scratch.path("pieces.bin")));
  }
  server.set_ready(&engine, codec.get());
  std::fprintf(stderr, "ttt serve: ready: %s (%s, vocabulary %lld, tokenizer %s), %zu saved sessions\n",
               options.server.model_name.c_str(), engine.model().variant.c_str(),
               static_cast<long long>(engine.model().vocab_size), codec ? codec->name().c_str() : "none: token ids",
               engine.sessions().size());

  int signal = 0;
  sigwait(&stop_signals, &signal);
  std::fprintf(stderr, "ttt serve: %s: stopping\n", signal == SIGINT ? "interrupted" : "terminated");
  server.stop(std::chrono::seconds(options.server.timeout_s));
  const int64_t saved = engine.save_sessions();
  if (!options.session_dir.empty()) {
    std::fprintf(stderr, "ttt serve: saved %lld sessions to %s\n", static_cast<long long>(saved),
                 options.session_dir.c_str());
  }
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* command = app.add_subcommand(
      "serve",
      "Serve the model over HTTP with OpenAI's completions API (POST /v1/completions, GET /v1/models) and\n"
      "sessions that learn what they read: POST /v1/sessions reads a document (test-time training included)\n"
      "into fast weights, and completions with \"session\": ID answer from them. GET /health, GET /metrics\n"
      "(Prometheus). SIGTERM or Ctrl-C stops it, saving the sessions to --session-dir.");
  command->add_option("--model", options->model_path, "model checkpoint (.safetensors)")->required();
  options->compute.add_to(command);
  command->add_option("--tokenizer", options->tokenizer,
                      "bytes, cl100k_base, llama3, ... or a tokenizer file (default: tokenizer.model beside the\n"
                      "model; without one, prompts are token ids and completions' text is ids)");
  command->add_option("--host", options->server.host, "address to listen on")->capture_default_str();
  command->add_option("--port", options->server.port, "port to listen on (0: any free one, printed)")
      ->capture_default_str();
  command->add_option("--slots", options->server.slots, "requests that compute at once")->capture_default_str();
  command->add_option("--queue", options->server.queue, "requests that wait for a slot (more are 429s)")
      ->capture_default_str();
  command
      ->add_option("--max-sessions", options->max_sessions,
                   "sessions kept in memory; the least recently used beyond spill to --session-dir")
      ->capture_default_str();
  command->add_option("--session-dir", options->session_dir,
                      "where sessions spill and are saved at shutdown; a restart restores them");
  command->add_option("--api-key", options->server.api_key,
                      "require `Authorization: Bearer KEY` on every endpoint but /health");
  command->add_option("--max-body-mb", options->max_body_mb, "largest request body in MiB (more is a 413)")
      ->capture_default_str();
  command->add_option("--timeout", options->server.timeout_s, "seconds to read a request or write a response")
      ->capture_default_str();
  command->add_option("--max-tokens", options->server.max_tokens, "most tokens one completion may ask for")
      ->capture_default_str();
  command->callback([options] { serve_until_signalled(*options); });
}

}  // namespace ttt::cli
