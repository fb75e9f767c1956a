#include "serve/engine.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <random>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "common/error.h"
#include "infer/sampler.h"
#include "infer/session.h"
#include "io/atomic_file.h"
#include "io/json_input.h"
#include "io/paths.h"
#include "model/compute.h"
#include "serve/api.h"

namespace ttt::serve {
namespace {

using nlohmann::json;

// Mini-batches per piece of a long read: between pieces a stopping server cuts it.
constexpr int64_t kChunksPerPiece = 64;

ApiError not_found(const std::string& id) {
  return {404, "no session " + id, "invalid_request_error", "session_not_found", "session"};
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string new_session_id() {
  static std::mutex mutex;
  static std::mt19937_64 generator(std::random_device{}());
  const std::lock_guard lock(mutex);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(generator()));
  return std::string("sess-") + hex;
}

std::vector<int64_t> distinct(std::vector<int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

// Reads `tokens` into `session` in pieces, calling `interrupt` before each; the logits after
// the last (the session's last ones when there is nothing to read).
torch::Tensor read_tokens(Session& session, const std::vector<int64_t>& tokens, int64_t piece,
                          const Interrupt& interrupt) {
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(piece)) {
    if (interrupt) interrupt();
    const size_t end = std::min(tokens.size(), i + static_cast<size_t>(piece));
    session.feed(
        std::vector<int64_t>(tokens.begin() + static_cast<int64_t>(i), tokens.begin() + static_cast<int64_t>(end)));
  }
  return session.last_logits();
}

// A session of the store. Its session is computed on with `mutex` held; everything else
// (bookkeeping, the pointer itself when it spills) changes with the store's mutex held too.
struct Entry {
  std::mutex mutex;
  std::string id;
  int64_t created = 0;
  std::unique_ptr<Session> session;  // null while on disk
  std::vector<int64_t> seen;         // the distinct ids read: the repetition penalty's context
  int64_t tokens = 0, inner_steps = 0, state_bytes = 0;
  uint64_t last_used = 0;
  bool dirty = false;  // changed since it was last written to disk
  std::atomic<bool> removed{false};
};

class SessionGeneration final : public Generation {
 public:
  // Commits through `commit` (empty unless started with commit), the session held by `hold`.
  using Commit = std::function<SessionInfo(std::unique_ptr<Session>, std::vector<int64_t>)>;
  SessionGeneration(std::unique_ptr<Session> session, std::vector<int64_t> context, const SamplingOptions& sampling,
                    int64_t logprobs, int64_t prompt_tokens, int64_t start_steps, int64_t eos_id, Commit commit,
                    std::unique_lock<std::mutex> hold)
      : session_(std::move(session)),
        context_(std::move(context)),
        sampler_(sampling),
        logprobs_(logprobs),
        prompt_tokens_(prompt_tokens),
        eos_id_(eos_id),
        start_steps_(start_steps),
        logits_(session_->last_logits()),
        commit_(std::move(commit)),
        hold_(std::move(hold)) {}

  Step next() override {
    if (last_ >= 0) logits_ = session_->feed(std::vector<int64_t>{last_});
    Step step;
    step.token = sampler_.sample(logits_, context_);
    if (logprobs_ >= 0) {
      const torch::Tensor logp = torch::log_softmax(logits_.to(torch::kCPU, torch::kFloat64), 0);
      step.logprob = logp[step.token].item<double>();
      if (logprobs_ > 0) {
        const auto [values, ids] = logp.topk(std::min<int64_t>(logprobs_, logp.size(0)));
        for (int64_t i = 0; i < values.size(0); ++i) {
          step.top.emplace_back(ids[i].item<int64_t>(), values[i].item<double>());
        }
      }
    }
    context_.push_back(step.token);
    last_ = step.token;
    return step;
  }

  int64_t prompt_tokens() const override { return prompt_tokens_; }
  int64_t inner_steps() const override { return session_ ? session_->inner_steps() - start_steps_ : 0; }

  SessionInfo commit() override {
    require(commit_ && hold_.owns_lock(), "internal: commit of a generation not started with commit");
    const bool ended_by_eos = last_ == eos_id_;
    if (last_ >= 0 && !ended_by_eos) session_->feed(std::vector<int64_t>{last_});
    if (ended_by_eos) context_.pop_back();
    return commit_(std::move(session_), distinct(std::move(context_)));
  }

 private:
  std::unique_ptr<Session> session_;
  std::vector<int64_t> context_;  // the penalty's: what the session read, the prompt, the tokens made
  Sampler sampler_;
  const int64_t logprobs_, prompt_tokens_, eos_id_;
  const int64_t start_steps_;  // the session's before this request
  torch::Tensor logits_;
  int64_t last_ = -1;  // sampled, not yet read
  Commit commit_;
  std::unique_lock<std::mutex> hold_;
};

}  // namespace

struct Engine::Impl {
  EngineOptions options;
  Model model;
  ModelInfo info;
  std::mutex mutex;  // the store
  std::map<std::string, std::shared_ptr<Entry>> entries;
  uint64_t clock = 0;

  int64_t piece() const { return kChunksPerPiece * std::max<int64_t>(model.config.mini_batch, 1); }
  std::string file(const std::string& id, const std::string& extension) const {
    return options.session_dir + "/" + id + extension;
  }

  static SessionInfo info_of(const Entry& e) {
    return {e.id, e.created, e.tokens, e.inner_steps, e.state_bytes, e.session != nullptr};
  }

  int64_t in_memory() const {
    return std::count_if(entries.begin(), entries.end(), [](const auto& e) { return e.second->session != nullptr; });
  }

  // The entry, now the most recently used; 404 when there is none.
  std::shared_ptr<Entry> find(const std::string& id) {
    const std::lock_guard lock(mutex);
    const auto it = entries.find(id);
    if (it == entries.end()) throw not_found(id);
    it->second->last_used = ++clock;
    return it->second;
  }

  // With the entry's mutex held: its session, read back from disk when it had spilled.
  Session& loaded(Entry& e) {
    if (e.removed) throw not_found(e.id);
    if (e.session) return *e.session;
    auto session = std::make_unique<Session>(model.config, model.params);
    try {
      session->restore(file(e.id, ".session"));
    } catch (const Error&) {
      if (e.removed) throw not_found(e.id);  // deleted while it was being read
      throw;
    }
    const std::lock_guard lock(mutex);
    e.session = std::move(session);
    make_room(&e);
    return *e.session;
  }

  // With the store's mutex held: writes the entry's session and what the store knows of it.
  void write(Entry& e) {
    e.session->save(file(e.id, ".session"));
    io::write_text_file(file(e.id, ".json"), json{{"id", e.id},
                                                  {"created", e.created},
                                                  {"tokens", e.tokens},
                                                  {"inner_steps", e.inner_steps},
                                                  {"state_bytes", e.state_bytes},
                                                  {"seen", e.seen}}
                                                 .dump());
    e.dirty = false;
  }

  // With the store's mutex held: spills the least recently used sessions beyond max_sessions
  // to disk, never `keep` nor one in use (those may stay over the limit for a while).
  void make_room(const Entry* keep) {
    if (options.session_dir.empty()) return;
    while (in_memory() > options.max_sessions) {
      std::vector<Entry*> candidates;
      for (const auto& [id, e] : entries) {
        if (e->session && e.get() != keep) candidates.push_back(e.get());
      }
      std::sort(candidates.begin(), candidates.end(), [](Entry* a, Entry* b) { return a->last_used < b->last_used; });
      bool spilled = false;
      for (Entry* e : candidates) {
        std::unique_lock busy(e->mutex, std::try_to_lock);
        if (!busy.owns_lock()) continue;
        if (e->dirty) write(*e);
        e->session.reset();
        spilled = true;
        break;
      }
      if (!spilled) return;
    }
  }

  // The session's new state after an append or a commit.
  SessionInfo replace(Entry& e, std::unique_ptr<Session> session, std::vector<int64_t> seen) {
    const std::lock_guard lock(mutex);
    if (e.removed) throw not_found(e.id);
    e.tokens = session->position();
    e.inner_steps = session->inner_steps();
    e.state_bytes = session->state_bytes();
    e.session = std::move(session);
    e.seen = std::move(seen);
    e.dirty = true;
    e.last_used = ++clock;
    return info_of(e);
  }

  // The sessions a previous server left in session_dir: known now, read on use. A file that is
  // not what write() writes is skipped with a warning naming it; the others are served.
  void find_saved_sessions() {
    const std::vector<std::string> names = io::list_files(options.session_dir, ".json");
    for (const std::string& name : names) {
      const std::string id = name.substr(0, name.size() - 5);
      if (!valid_session_id(id)) continue;
      try {
        std::shared_ptr<Entry> e = read_saved_entry(id);
        e->last_used = ++clock;
        entries[id] = std::move(e);
      } catch (const std::exception& error) {
        std::fprintf(stderr, "ttt: warning: skipping saved session %s: %s\n", id.c_str(), describe(error).c_str());
      }
    }
  }

  // What write() wrote of session `id`; ttt::Error naming the file when it is anything else.
  std::shared_ptr<Entry> read_saved_entry(const std::string& id) const {
    const std::string path = file(id, ".json");
    const std::string prefix = path + ": ";
    const json meta = io::read_json_file(path, prefix);
    require(meta.is_object(), prefix + "not a saved session's metadata (not a JSON object)");
    const auto count = [&](const json& value, const std::string& what, int64_t highest) {
      return io::json_integer(value, 0, highest, prefix + what);
    };
    const auto field = [&](const std::string& key) -> const json& {
      require(meta.contains(key), prefix + "no \"" + key + "\" in a saved session's metadata");
      return meta.at(key);
    };
    const auto count_field = [&](const std::string& key) {
      return count(field(key), "\"" + key + "\"", std::numeric_limits<int64_t>::max());
    };
    auto e = std::make_shared<Entry>();
    e->id = id;
    e->created = count_field("created");
    e->tokens = count_field("tokens");
    e->inner_steps = count_field("inner_steps");
    e->state_bytes = count_field("state_bytes");
    const json& seen = field("seen");
    require(seen.is_array(), prefix + "\"seen\" must be an array of token ids");
    for (const json& token : seen) e->seen.push_back(count(token, "a token id of \"seen\"", info.vocab_size - 1));
    require(::access(file(id, ".session").c_str(), R_OK) == 0, file(id, ".session") + " is missing");
    return e;
  }
};

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  require(options.max_sessions >= 1, "--max-sessions must be at least 1");
  impl_->model = load_for_inference(options.model_path, options.device, options.dtype);
  const ModelConfig& c = impl_->model.config;
  impl_->info = {variant_name(c.variant), c.vocab_size, c.bos_id, c.eos_id, c.mini_batch};
  if (!options.session_dir.empty()) impl_->find_saved_sessions();
}

Engine::~Engine() = default;

const ModelInfo& Engine::model() const { return impl_->info; }

SessionInfo Engine::create_session(std::vector<int64_t> tokens, const Interrupt& interrupt) {
  Impl& m = *impl_;
  const auto full = [&] {
    const std::lock_guard lock(m.mutex);
    return m.options.session_dir.empty() && m.in_memory() >= m.options.max_sessions;
  };
  const ApiError no_room{429,
                         "no room for another session: " + std::to_string(m.options.max_sessions) +
                             " in memory (--max-sessions) and no --session-dir to spill to; delete one",
                         "server_busy", "too_many_sessions", ""};
  if (full()) throw no_room;
  if (tokens.empty() || tokens[0] != m.info.bos_id) tokens.insert(tokens.begin(), m.info.bos_id);
  auto session = std::make_unique<Session>(m.model.config, m.model.params);
  read_tokens(*session, tokens, m.piece(), interrupt);
  auto e = std::make_shared<Entry>();
  e->id = new_session_id();
  e->created = unix_now();
  e->tokens = session->position();
  e->inner_steps = session->inner_steps();
  e->state_bytes = session->state_bytes();
  e->session = std::move(session);
  e->seen = distinct(std::move(tokens));
  e->dirty = true;
  const std::lock_guard lock(m.mutex);
  if (m.options.session_dir.empty() && m.in_memory() >= m.options.max_sessions) throw no_room;
  e->last_used = ++m.clock;
  m.entries[e->id] = e;
  m.make_room(e.get());
  return Impl::info_of(*e);
}

SessionInfo Engine::append(const std::string& id, const std::vector<int64_t>& tokens, const Interrupt& interrupt) {
  const std::shared_ptr<Entry> e = impl_->find(id);
  const std::lock_guard hold(e->mutex);
  // On a copy, swapped in when complete: a cut append leaves the session as it was.
  std::unique_ptr<Session> session = impl_->loaded(*e).fork();
  read_tokens(*session, tokens, impl_->piece(), interrupt);
  std::vector<int64_t> seen = e->seen;
  seen.insert(seen.end(), tokens.begin(), tokens.end());
  return impl_->replace(*e, std::move(session), distinct(std::move(seen)));
}

SessionInfo Engine::session(const std::string& id) {
  const std::shared_ptr<Entry> e = impl_->find(id);
  const std::lock_guard lock(impl_->mutex);
  return Impl::info_of(*e);
}

std::vector<SessionInfo> Engine::sessions() {
  const std::lock_guard lock(impl_->mutex);
  std::vector<SessionInfo> all;
  for (const auto& [id, e] : impl_->entries) all.push_back(Impl::info_of(*e));
  return all;
}

void Engine::remove(const std::string& id) {
  Impl& m = *impl_;
  const std::lock_guard lock(m.mutex);
  const auto it = m.entries.find(id);
  if (it == m.entries.end()) throw not_found(id);
  it->second->removed = true;
  m.entries.erase(it);
  if (!m.options.session_dir.empty()) {
    ::unlink(m.file(id, ".json").c_str());
    ::unlink(m.file(id, ".session").c_str());
  }
}

std::unique_ptr<Generation> Engine::start(const std::optional<std::string>& session_id, std::vector<int64_t> prompt,
                                          const SamplingOptions& sampling, int64_t logprobs, bool commit,
                                          const Interrupt& interrupt) {
  Impl& m = *impl_;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  std::unique_ptr<Session> session;
  std::vector<int64_t> context;
  std::shared_ptr<Entry> entry;
  std::unique_lock<std::mutex> hold;
  if (session_id) {
    entry = m.find(*session_id);
    hold = std::unique_lock(entry->mutex);
    session = m.loaded(*entry).fork();
    context = entry->seen;
    if (!commit) {
      hold.unlock();
      entry.reset();
    }
  } else {
    if (prompt.empty() || prompt[0] != m.info.bos_id) prompt.insert(prompt.begin(), m.info.bos_id);
    session = std::make_unique<Session>(m.model.config, m.model.params);
  }
  const int64_t start_steps = session->inner_steps();
  read_tokens(*session, prompt, m.piece(), interrupt);
  context.insert(context.end(), prompt.begin(), prompt.end());
  SessionGeneration::Commit commit_to;
  if (entry) {
    commit_to = [&m, entry](std::unique_ptr<Session> state, std::vector<int64_t> seen) {
      return m.replace(*entry, std::move(state), std::move(seen));
    };
  }
  auto generation =
      std::make_unique<SessionGeneration>(std::move(session), std::move(context), sampling, logprobs, prompt_tokens,
                                          start_steps, m.info.eos_id, std::move(commit_to), std::move(hold));
  return generation;
}

int64_t Engine::save_sessions() {
  Impl& m = *impl_;
  if (m.options.session_dir.empty()) return 0;
  const std::lock_guard lock(m.mutex);
  int64_t saved = 0;
  for (const auto& [id, e] : m.entries) {
    std::unique_lock busy(e->mutex, std::try_to_lock);
    if (!busy.owns_lock()) {
      std::fprintf(stderr, "ttt: warning: session %s is still in use and was not saved\n", id.c_str());
      continue;
    }
    if (e->session && e->dirty) {
      m.write(*e);
      ++saved;
    }
  }
  return saved;
}

Engine::Stats Engine::stats() {
  Impl& m = *impl_;
  Stats stats;
  {
    const std::lock_guard lock(m.mutex);
    for (const auto& [id, e] : m.entries) {
      if (e->session) {
        ++stats.sessions_in_memory;
        stats.session_state_bytes += e->state_bytes;
      } else {
        ++stats.sessions_on_disk;
      }
    }
  }
  if (const std::optional<DeviceMemory> memory = device_memory(m.model.params.final_norm.device())) {
    stats.device_bytes = memory->peak_allocated;
  }
  return stats;
}

}  // namespace ttt::serve
