// The server's counters and latency histograms, rendered as Prometheus text (GET /metrics).
// Thread-safe; torch-free.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ttt::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds of the buckets, increasing
  void observe(double value);
  // name_bucket{le="..."}, name_sum and name_count lines.
  std::string render(const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Values the server reads when it renders (queue, sessions, memory).
struct Gauges {
  int64_t requests_running = 0, requests_waiting = 0;
  int64_t sessions_in_memory = 0, sessions_on_disk = 0, session_state_bytes = 0;
  int64_t resident_bytes = 0, device_bytes = 0;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, int status);
  void add_tokens(int64_t read, int64_t generated, int64_t inner_steps);
  void observe_prefill(double seconds);
  void observe_token(double seconds);
  std::string render(const Gauges& gauges) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t tokens_read_ = 0, tokens_generated_ = 0, inner_steps_ = 0;
  Histogram prefill_, token_;
};

// This process's resident memory in bytes (/proc/self/statm); 0 where unknown.
int64_t resident_bytes();

}  // namespace ttt::serve
