// File: destinations_command.h
//
// `ternctl destinations [--json]`: destination shaping as it stands
// (Admin.Destinations): per recipient domain or MX site (shaping.ini), how
// many deliveries are out on lease and how many wait for its limits, the
// concurrency configured and in force (lower during a 421 backoff), its
// rate, and for a site how many domains it holds.
//
// Each queue shard shapes its own deliveries (its own leases, limits and
// backoffs), so with several shards the table has a QUEUE column and a row
// per shard and destination, busiest first.
//
// Thread-safety: pure formatting functions; the command makes one blocking
// RPC per shard.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// One row per destination, then a line per backoff in force (until when,
// and the reply that started it) against `now_unix_ms`.
std::string FormatDestinations(const tern::v1::DestinationsResponse& resp, int64_t now_unix_ms);

// Every shard's destinations in one table, QUEUE first, ordered by
// deliveries out and waiting; backoff lines name the shard.
std::string FormatDestinationsOnShards(
    const std::vector<std::pair<std::string, tern::v1::DestinationsResponse>>& shards, int64_t now_unix_ms);

void AddDestinationsCommand(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
