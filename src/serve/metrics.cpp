#include "serve/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace ttt::serve {
namespace {

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

void describe(std::ostringstream& out, const std::string& name, const std::string& type, const std::string& help) {
  out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t bucket = 0;
  while (bucket < bounds_.size() && value > bounds_[bucket]) ++bucket;
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

std::string Histogram::render(const std::string& name) const {
  std::ostringstream out;
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    out << name << "_bucket{le=\"" << (i < bounds_.size() ? number(bounds_[i]) : "+Inf") << "\"} " << cumulative
        << "\n";
  }
  out << name << "_sum " << number(sum_) << "\n" << name << "_count " << count_ << "\n";
  return out.str();
}

Metrics::Metrics()
    : prefill_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      token_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  const std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::add_tokens(int64_t read, int64_t generated, int64_t inner_steps) {
  const std::lock_guard lock(mutex_);
  tokens_read_ += static_cast<uint64_t>(read);
  tokens_generated_ += static_cast<uint64_t>(generated);
  inner_steps_ += static_cast<uint64_t>(inner_steps);
}

void Metrics::observe_prefill(double seconds) {
  const std::lock_guard lock(mutex_);
  prefill_.observe(seconds);
}

void Metrics::observe_token(double seconds) {
  const std::lock_guard lock(mutex_);
  token_.observe(seconds);
}

std::string Metrics::render(const Gauges& gauges) const {
  const std::lock_guard lock(mutex_);
  std::ostringstream out;
  describe(out, "ttt_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
  for (const auto& [key, count] : requests_) {
    out << "ttt_requests_total{endpoint=\"" << key.first << "\",status=\"" << key.second << "\"} " << count << "\n";
  }
  const auto single = [&](const std::string& name, const std::string& type, const std::string& help, double value) {
    describe(out, name, type, help);
    out << name << " " << number(value) << "\n";
  };
  single("ttt_tokens_read_total", "counter", "Prompt and document tokens read (prefill).", double(tokens_read_));
  single("ttt_tokens_generated_total", "counter", "Tokens generated.", double(tokens_generated_));
  single("ttt_inner_steps_total", "counter", "Test-time training steps taken (one per full mini-batch read).",
         double(inner_steps_));
  single("ttt_requests_running", "gauge", "Requests holding a compute slot.", double(gauges.requests_running));
  single("ttt_queue_length", "gauge", "Requests waiting for a compute slot.", double(gauges.requests_waiting));
  single("ttt_sessions_in_memory", "gauge", "Sessions whose state is in memory.", double(gauges.sessions_in_memory));
  single("ttt_sessions_on_disk", "gauge", "Sessions spilled to --session-dir.", double(gauges.sessions_on_disk));
  single("ttt_session_state_bytes", "gauge", "Bytes of the state of the sessions in memory.",
         double(gauges.session_state_bytes));
  single("ttt_resident_memory_bytes", "gauge", "Resident memory of the server process.", double(gauges.resident_bytes));
  single("ttt_device_memory_bytes", "gauge",
         "Peak accelerator memory in tensors since the server started (0 on the CPU).", double(gauges.device_bytes));
  describe(out, "ttt_prefill_seconds", "histogram", "Time to read a request's prompt (to the first token).");
  out << prefill_.render("ttt_prefill_seconds");
  describe(out, "ttt_token_seconds", "histogram", "Time per generated token.");
  out << token_.render("ttt_token_seconds");
  return out.str();
}

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace ttt::serve
