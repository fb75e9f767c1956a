// The model side of `ttt serve`: one model shared read-only by every request, and the
// sessions (infer/session.h), each with fast weights and a cache of its own. Sessions live in
// memory up to a limit; the least recently used ones spill to a directory and come back on
// use, and a restarted server finds them there. A completion reads its prompt and samples
// exactly as `ttt generate` does. This header is torch-free: the HTTP layer includes it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "infer/sampling_options.h"

namespace ttt::serve {

struct EngineOptions {
  std::string model_path, device = "cpu", dtype = "auto";
  int64_t max_sessions = 16;  // in memory
  std::string session_dir;    // "": sessions never leave memory
};

struct ModelInfo {
  std::string variant;
  int64_t vocab_size = 0, bos_id = 0, eos_id = 0, mini_batch = 0;
};

struct SessionInfo {
  std::string id;
  int64_t created = 0;      // unix seconds
  int64_t tokens = 0;       // read so far (its position)
  int64_t inner_steps = 0;  // test-time training steps taken
  int64_t state_bytes = 0;  // fast weights and cache: constant in the tokens read (swa, ttt-e2e)
  bool in_memory = false;
};

// Called between pieces of a long read; throws (an ApiError) to stop it: the server is
// stopping, or the client has gone.
using Interrupt = std::function<void()>;

// One completion's decoding: the prompt already read, a token per call.
class Generation {
 public:
  struct Step {
    int64_t token = 0;
    double logprob = 0;                           // under the model's distribution (before sampling's changes)
    std::vector<std::pair<int64_t, double>> top;  // the most likely tokens, when asked for
  };
  virtual ~Generation() = default;
  // The next token (the previous one is read first, as `ttt generate` does).
  virtual Step next() = 0;
  virtual int64_t prompt_tokens() const = 0;
  virtual int64_t inner_steps() const = 0;  // taken by this request so far
  // Makes the session's state the one after the prompt and the tokens generated (not eos);
  // only for a generation started with commit.
  virtual SessionInfo commit() = 0;
};

class Engine {
 public:
  // Loads the model onto the device; sessions saved in session_dir are found (they load on use).
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelInfo& model() const;

  // A fresh session reads `tokens` (bos first, added when missing). Throws ApiError (429 when
  // no room is left in memory and there is no session_dir), or what `interrupt` throws.
  SessionInfo create_session(std::vector<int64_t> tokens, const Interrupt& interrupt);
  // The session reads more. ApiError 404 for an unknown id.
  SessionInfo append(const std::string& id, const std::vector<int64_t>& tokens, const Interrupt& interrupt);
  SessionInfo session(const std::string& id);
  std::vector<SessionInfo> sessions();
  // Forgets the session, in memory and on disk; a request using it finishes undisturbed.
  void remove(const std::string& id);

  // Reads the prompt and returns the decoding. Without a session the prompt starts with bos
  // (added when missing); with one, it continues the session's text on a copy of its state
  // unless `commit`, which holds the session until the generation ends. `logprobs`: how many
  // alternatives each step reports (0 with only the chosen token's; -1 none).
  std::unique_ptr<Generation> start(const std::optional<std::string>& session, std::vector<int64_t> prompt,
                                    const SamplingOptions& sampling, int64_t logprobs, bool commit,
                                    const Interrupt& interrupt);

  // Writes every session in memory to session_dir (at shutdown); returns how many.
  int64_t save_sessions();

  struct Stats {
    int64_t sessions_in_memory = 0, sessions_on_disk = 0, session_state_bytes = 0, device_bytes = 0;
  };
  Stats stats();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::serve
