// `ttt serve`'s HTTP side (cpp-httplib, plain HTTP): OpenAI's /v1/completions and /v1/models,
// the sessions API, /health and /metrics, with the engine (serve/engine.h) behind a scheduler
// of compute slots and a bounded queue. Torch-free.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace ttt::serve {

class Engine;
class TextCodec;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (bind() says which)
  std::string api_key;           // "": no authentication
  int64_t max_body_bytes = 0;    // larger bodies are 413s
  int64_t timeout_s = 0;         // reading a request, writing a response
  int64_t slots = 1, queue = 0;  // requests computing at once, and waiting for a slot
  int64_t max_tokens = 0;        // per completion
  std::string model_name;        // what /v1/models lists and responses name
};

class Server {
 public:
  explicit Server(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket and serves on threads of its own; API requests are 503s until
  // set_ready. Returns the port. Throws ttt::Error when the address cannot be bound.
  int start();
  // The model is loaded: requests are answered from now on. `codec` may be null (no
  // tokenizer: prompts are token ids, and completions' text is ids).
  void set_ready(Engine* engine, TextCodec* codec);
  // Refuses new requests (503), cuts running generations at their next token, waits for the
  // requests in flight (at most `grace`), and closes the listening socket.
  void stop(std::chrono::milliseconds grace);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::serve
