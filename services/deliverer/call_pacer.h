// File: call_pacer.h
//
// CallPacer: decides when the deliverer's next Lease or Report call may
// start, so that under load one call carries many items instead of many
// calls carrying one each.
//
// Why. A gRPC call costs both processes far more CPU than an item in it does
// (HTTP/2 framing, a reactor on the queue, thread hand-offs on both sides:
// about 0.2 CPU ms per call round trip on the 2-core bench machine, against
// a few microseconds per item). With calls sent the moment a slot is free, the
// 2 KB end-to-end bench made 0.2 Lease and 0.2 Report calls per message;
// waiting up to 5 ms for company cut both to 0.07-0.09 and the whole
// pipeline's CPU per message by about a sixth (bench/README.md, session 5).
//
// Rule. A call may start at once when `enough` items wait, or when the
// previous call of its kind started at least `wait` ago (so an idle
// deliverer never waits: its lone report goes out immediately); otherwise
// it starts at previous start + `wait`. Postgres' commit_delay and MySQL's
// binlog_group_commit_sync_delay make the same trade on a log: a bounded,
// small delay under load for fewer, fuller writes. `wait` zero disables it.
//
// Thread-safety: none; one per call kind, used on the worker's io thread.
#pragma once

#include <chrono>
#include <cstddef>

namespace tern::deliverer {

class CallPacer {
 public:
  using Clock = std::chrono::steady_clock;

  CallPacer(Clock::duration wait, size_t enough) : wait_(wait), enough_(enough) {}

  // When a call carrying `waiting` items may start; at or before `now`
  // means at once.
  Clock::time_point ReadyAt(size_t waiting, Clock::time_point now) const {
    if (wait_ <= Clock::duration::zero() || waiting >= enough_ || !started_) {
      return now;
    }
    const Clock::time_point ready = last_start_ + wait_;
    return ready < now ? now : ready;
  }

  // A call of this kind started at `now`.
  void Started(Clock::time_point now) {
    last_start_ = now;
    started_ = true;
  }

 private:
  Clock::duration wait_;
  size_t enough_;
  Clock::time_point last_start_{};
  bool started_ = false;
};

}  // namespace tern::deliverer
