// File: queue_config.h
//
// tern-queue's configuration, read once at startup from a Haraka-style
// config directory into one struct and validated:
//
//   tern.ini [queue]
//     listen=127.0.0.1:7070          gRPC (Queue, Admin, health, reflection)
//     data_dir=var/queue             RocksDB directory (--data-dir overrides)
//     metrics_listen=127.0.0.1:9470  Prometheus /metrics; empty disables
//     lease_seconds=300              lease when the worker asks for none
//     max_lease_seconds=3600         longest lease granted
//     max_lease_body_bytes=16777216  soft cap on body bytes per Lease answer
//     ambiguous_policy=redeliver     or hold: a lease that expired after DATA
//     max_queue_age=0                e.g. 5d; recipients older bounce (5.4.7); 0 = off
//     delay_warning=                 e.g. 4h or 4h,1d: delay DSN points; empty = off
//     event_retention=24h            events older than this are pruned
//     event_retention_count=1000000  and beyond this many
//     idempotency_retention=7d       Enqueue idempotency keys dedupe this long; 0 = forever
//     delete_undo_window=1h          ternctl delete can be undone this long; 0 = deletes are final
//     min_free_bytes=104857600       refuse Enqueue below this much free disk; 0 = off
//     wal_prefill_bytes=67108864     zero-filled spare for each WAL (wal_prefill.h); 0 = off
//     destination_concurrency_max=0  per-domain lease cap; shaping.ini refines it
//     config_watch_ms=2000           look for changed config files this often; 0 = SIGHUP only
//   tern.ini [tlsrpt]                SMTP TLS Reporting (RFC 8460), queue_core.h TlsRptOptions
//     enabled=false                  send daily TLS reports (deliverers read it to count at all)
//     from=                          reports' envelope sender and From:; required when enabled
//     organization=                  report organization-name; default: the domain of `from`
//     contact=                       report contact-info; default: `from`
//     submitter=                     TLS-Report-Submitter and report ids; default: the domain of `from`
//   outbound.ini [main]
//     disabled=false                 pause delivery
//     temp_fail_intervals=(unset)    Haraka's retry schedule grammar
//     maxTempFailures=13             used when temp_fail_intervals is unset
//     always_split=false             one delivery per recipient
//   shaping.ini                      per-domain and per-MX-site limits (destination_shaping.h)
//
// On SIGHUP, and when one of these files changes, the queue loads them all
// again: outbound.ini, shaping.ini and most [queue] keys apply at once
// (QueueCore::SetDisabled, Reconfigure); the others keep
// their running values until a restart (RestartOnlyChanges names those that
// differ).
//
// Thread-safety: a plain value; copy it or share it const.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "services/queue/queue_core.h"

namespace tern::queue {

struct QueueConfig {
  // Default: 127.0.0.1:7070
  std::string listen = "127.0.0.1:7070";
  // Default: 127.0.0.1:9470. Empty disables the exporter.
  std::string metrics_listen = "127.0.0.1:9470";
  // data_dir, leases, disabled, always_split and the retry schedule.
  CoreOptions core;
  // Default: 2000 ms; 0 = only SIGHUP reloads.
  std::chrono::milliseconds config_watch{2000};

  // Checks ranges: lease_seconds in [1, max_lease_seconds], max_lease_seconds
  // in [1, 86400*7], max_lease_body_bytes >= 1, listen not empty; with
  // [tlsrpt] enabled, a `from` that is an address and a submitter that is a
  // domain.
  absl::Status Validate() const;
};

// Reads tern.ini [queue] and outbound.ini [main] from `dir`. `data_dir`, when
// given, replaces tern.ini's data_dir (the --data-dir flag). Every error
// names the file, section and key.
absl::StatusOr<QueueConfig> LoadQueueConfig(const config::ConfigDir& dir,
                                            const std::optional<std::string>& data_dir);

// "30s", "90m", "4h", "5d", or a plain number of seconds; "0" is 0. Errors
// name the bad text.
absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text);

// The settings of `loaded` that only a restart applies and that differ from
// `running` (what the queue started with), each named as the operator
// wrote it ("tern.ini [queue] lease_seconds"), in file order.
std::vector<std::string> RestartOnlyChanges(const QueueConfig& running, const QueueConfig& loaded);

// The files a reload reads, for the watcher.
std::vector<std::string> QueueConfigPaths(const config::ConfigDir& dir);

}  // namespace tern::queue
