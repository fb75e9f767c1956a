#include "serve/scheduler.h"

#include <string>

#include "serve/api.h"

namespace ttt::serve {

Scheduler::Scheduler(int64_t slots, int64_t queue) : slots_(slots), queue_(queue) {}

Scheduler::Slot::~Slot() {
  if (owner_) owner_->release();
}

Scheduler::Slot Scheduler::acquire() {
  std::unique_lock lock(mutex_);
  if (stopping_) throw server_stopping();
  if (running_ < slots_ && waiting_ == 0) {
    ++running_;
    return Slot(this);
  }
  if (waiting_ >= queue_) {
    throw ApiError{429,
                   "the server is busy: " + std::to_string(slots_) + " requests computing and " +
                       std::to_string(queue_) + " waiting; retry later",
                   "server_busy", "queue_full", ""};
  }
  ++waiting_;
  changed_.wait(lock, [&] { return stopping_ || running_ < slots_; });
  --waiting_;
  if (stopping_) {
    changed_.notify_all();
    throw server_stopping();
  }
  ++running_;
  return Slot(this);
}

void Scheduler::release() {
  {
    const std::lock_guard lock(mutex_);
    --running_;
  }
  changed_.notify_all();
}

void Scheduler::stop() {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
}

bool Scheduler::stopping() const {
  const std::lock_guard lock(mutex_);
  return stopping_;
}

bool Scheduler::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return running_ == 0 && waiting_ == 0; });
}

int64_t Scheduler::running() const {
  const std::lock_guard lock(mutex_);
  return running_;
}

int64_t Scheduler::waiting() const {
  const std::lock_guard lock(mutex_);
  return waiting_;
}

}  // namespace ttt::serve
