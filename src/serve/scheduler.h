// Who computes: at most `slots` requests at once, at most `queue` more waiting for a slot
// (a full queue is a 429), none once the server stops (503). Torch-free.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace ttt::serve {

class Scheduler {
 public:
  Scheduler(int64_t slots, int64_t queue);

  // A slot held until destruction.
  class Slot {
   public:
    explicit Slot(Scheduler* owner) : owner_(owner) {}
    Slot(Slot&& other) noexcept : owner_(other.owner_) { other.owner_ = nullptr; }
    Slot& operator=(Slot&&) = delete;
    ~Slot();

   private:
    Scheduler* owner_;
  };

  // Waits in the queue for a slot; throws ApiError 429 when the queue is full, 503 when the
  // server stops (before or while waiting).
  Slot acquire();
  // Refuses new requests and wakes those waiting (they get 503); running ones keep their slots.
  void stop();
  bool stopping() const;
  // Waits until no slot is held, at most `timeout`; true when none is.
  bool wait_idle(std::chrono::milliseconds timeout);

  int64_t running() const;
  int64_t waiting() const;

 private:
  void release();

  const int64_t slots_, queue_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  int64_t running_ = 0, waiting_ = 0;
  bool stopping_ = false;
};

}  // namespace ttt::serve
