// File: delivery_worker.h
//
// DeliveryWorker: the deliverer's engine. A lease loop asks the queue for
// delivery jobs while fewer than concurrency_max are in flight; each job runs
// as its own coroutine (resolve MX, plan the addresses, one SMTP transaction
// per address until every recipient is decided or the addresses run out; a
// TLS report for an https: rua is one HTTPS POST instead, https_client.h);
// finished deliveries go to a reporter that sends them at once, sharing
// Report calls under load, and retries a failed call with the same tokens.
// The worker keeps no state a crash could lose: everything it does is under a
// lease, and an unreported job simply becomes due again when its lease ends.
// No DATA is sent before the queue has recorded Progress(data_sent) for the
// lease, so a job that may have reached the remote is known as ambiguous
// rather than silently sent twice; a finished job holds its concurrency slot
// until its report is applied, bounding that window.
//
// Executor: everything runs on the io_context given at construction, which
// must be run by ONE thread (c-ares and all coroutines share it). Start() and
// Stop() must be called on that thread (post them there).
//
// Shutdown: Stop() stops leasing, lets in-flight deliveries finish for up to
// `drain_timeout`, flushes pending reports, then calls `on_stopped`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "lib/dns/mx_resolver.h"
#include "services/deliverer/deliverer_config.h"
#include "services/deliverer/route_planner.h"

namespace asio {
class io_context;
}
namespace grpc {
class Channel;
}

namespace tern::deliverer {

class DeliveryWorker {
 public:
  // `resolver` must outlive the worker. `channel` leads to the queue.
  DeliveryWorker(asio::io_context& io, const DelivererConfig& config, std::shared_ptr<grpc::Channel> channel,
                 dns::MxResolver& resolver, RoutePlanner planner);
  ~DeliveryWorker();

  // Resolves `me` (its addresses count as local), then starts leasing.
  void Start();

  // Begins a graceful stop; `on_stopped` runs on the executor when done.
  void Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout = std::chrono::seconds(10));

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tern::deliverer
