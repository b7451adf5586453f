// File: queue_targets.h
//
// The queue shards a client service talks to. The queue is Tern's only
// durable state; past one machine it is sharded (ARCHITECTURE.md §8): each
// shard is a queue service with its own RocksDB. Ingest picks a shard per
// message, deliverers and the bouncer lease from every shard, ternctl asks
// them all. So the `queue` key of [ingest], [deliverer] and [bouncer] (and
// ternctl's --queue) holds one gRPC address or a comma-separated list:
//
//   queue=127.0.0.1:7070                          ; one queue (the default)
//   queue=queue-0.queue:7070, queue-1.queue:7070  ; two shards
//
// Each address is host:port, [v6]:port, or a gRPC target with a scheme
// (unix:/run/tern/queue.sock, dns:///queue:7070). Every client must list the
// same shards: a shard that no deliverer leases from is mail that never
// leaves.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/ini_file.h"

namespace tern::config {

// The most shards a list may name; far more than one site needs, and a bound
// on the lease loops and channels a client opens.
inline constexpr size_t kMaxQueueShards = 64;

// "host:port" or "[v6]:port" with a port of 1-65535 (0 too when
// `allow_zero`, for listen addresses that take any free port), no spaces or
// control characters in the host.
bool IsHostPort(absl::string_view text, bool allow_zero);

// Splits `value` at commas into trimmed gRPC targets. Each is a host:port
// (IsHostPort), or a target with one of gRPC's resolver schemes (unix:,
// unix-abstract:, dns:, ipv4:, ipv6:) and no spaces. Refuses an
// empty list, an empty entry, the same target twice (its shard would be
// counted twice) and more than kMaxQueueShards. The error says which entry.
absl::StatusOr<std::vector<std::string>> ParseQueueTargets(absl::string_view value);

// The check ParseQueueTargets makes, for a list built by hand (a config
// struct filled in code): what ParseQueueTargets refuses, and an entry that
// is not trimmed or holds a comma, which it would never give back.
absl::Status CheckQueueTargets(const std::vector<std::string>& targets);

// The `queue` key of [`section`] in `ini`: `queue=a:1,b:2`, and/or one or
// more `queue[]=` lines (each one address or a comma-separated few), in file
// order plain line first: a long list of shards need not fit on one INI line
// (ini_file.h refuses lines over 198 characters). `def` when neither is set.
absl::StatusOr<std::vector<std::string>> ReadQueueTargets(const IniFile& ini, absl::string_view section,
                                                          absl::string_view def);

// The list back as it is written in tern.ini, for logs: "a:1,b:2".
std::string JoinQueueTargets(const std::vector<std::string>& targets);

}  // namespace tern::config
