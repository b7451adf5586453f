// File: delivery_worker.h
//
// DeliveryWorker: the deliverer's engine. A lease loop per queue shard
// (ARCHITECTURE.md §8; one for an unsharded queue) asks its shard for
// delivery jobs while fewer than concurrency_max are in flight, each loop
// for a fair part of the free slots, so that no shard starves the others and
// one that is down or slow holds up no other (delivery_worker.cc, "Leasing
// from the queue shards"). Each job runs as its own coroutine (resolve MX,
// plan the addresses, one SMTP transaction per address until every
// recipient is decided or the addresses run out; a TLS report for an
// https: rua is one HTTPS POST instead, https_client.h); finished
// deliveries go to the reporter of the shard that leased them, which sends
// them at once, sharing Report calls under load, and retries a failed call
// with the same tokens. Every call about a job (Progress, Report) and about
// what its delivery learnt (host flags, MTA-STS policies, TLS report
// counts) goes to the job's shard, where its lease and token live. The
// concurrency budget, connection pool, DNS resolver and caches are shared by
// all shards.
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
// Shutdown: Stop() stops leasing from every shard, lets in-flight deliveries
// finish for up to `drain_timeout`, flushes pending reports to every shard,
// then calls `on_stopped`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  // `config` and `resolver` must outlive the worker. `channels` lead to the
  // queue shards, one each, in the order of config.queues (whose targets
  // name them in logs and are dialled again when one stays unreachable; a
  // channel beyond config.queues is named "shard <i>" and never rebuilt).
  // With no channel the worker leases nothing.
  DeliveryWorker(asio::io_context& io, const DelivererConfig& config,
                 std::vector<std::shared_ptr<grpc::Channel>> channels, dns::MxResolver& resolver,
                 RoutePlanner planner);
  ~DeliveryWorker();

  // Resolves `me` (its addresses count as local), then starts leasing.
  void Start();

  // Begins a graceful stop; `on_stopped` runs on the executor when done.
  void Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout = std::chrono::seconds(10));

  // SIGHUP: signs with `dkim` (dkim.ini and the keys, read again) from now
  // on. A signing in progress finishes with the keys it started with;
  // signatures kept for other deliveries of a message (dkim.h) are made
  // anew, so a key taken out of use is not used again. On the executor's
  // thread.
  void ReloadDkim(DkimConfig dkim);

  // SIGHUP with a config that loaded: `config` (the restart-only settings
  // taken from the running config, KeepRestartOnlySettings) is used by every
  // delivery that starts from now on: outbound.ini's concurrency_max
  // (a raised limit leases more at once, a lowered one leases nothing until
  // enough deliveries end), connect_timeout, local_mx_ok, inet_prefer and
  // enable_tls; tern.ini [deliverer]'s step timeouts, tls_failure_ttl,
  // host_flags_refresh, unreachable_backoff, mta_sts_timeout, dane,
  // chunking and chunking_failure_ttl; outbound_routes.ini and
  // smtp_forward.ini routes; tls.ini for SMTP sessions; DKIM as
  // ReloadDkim. Deliveries in flight finish with the config they started
  // with; connections already pooled are reused as they are. On the
  // executor's thread.
  void Reload(DelivererConfig config);

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tern::deliverer
