// File: queue_clock.h
//
// The wall clock the queue schedules by (due times, lease deadlines, arrival
// times are Unix milliseconds), behind an interface so tests can move time
// by hand: SystemClock for the service, FakeClock for tests.
//
// Thread-safety: both implementations may be read from any thread; FakeClock
// may be advanced from any thread.
#pragma once

#include <atomic>
#include <cstdint>

namespace tern::queue {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  // A process-wide instance (never destroyed).
  static const Clock* Get();
  int64_t NowUnixMs() const override;
};

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now_unix_ms) : now_(now_unix_ms) {}
  int64_t NowUnixMs() const override { return now_.load(std::memory_order_relaxed); }
  void AdvanceMs(int64_t ms) { now_.fetch_add(ms, std::memory_order_relaxed); }
  void SetMs(int64_t now_unix_ms) { now_.store(now_unix_ms, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace tern::queue
