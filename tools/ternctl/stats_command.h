// File: stats_command.h
//
// `ternctl stats [--json]`: every field of Admin.Stats, as an aligned table
// or as one JSON object keyed by the proto field names. Fields are walked
// through the proto descriptor, so a field added to StatsResponse shows up
// here without a code change (the table then uses its field name as label).
//
// With several queue shards the table is their sum (SumStats), followed by
// one row per shard; --json prints the sum with a "queues" member holding
// each shard's object, named by its "queue" member.
//
// Thread-safety: pure formatting functions; RunStats makes one blocking RPC
// per shard.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// Human-readable table; `now` is used for the age of the oldest message.
std::string FormatStatsTable(const tern::v1::StatsResponse& stats, absl::Time now);

// {"messages":1,...} with every field, numbers as JSON numbers, one line.
std::string FormatStatsJson(const tern::v1::StatsResponse& stats);

// The queue as a whole: counters summed, the oldest message the oldest of
// any shard (fields ending in _unix_ms: the earliest set), `paused` when
// any shard is paused.
tern::v1::StatsResponse SumStats(const std::vector<tern::v1::StatsResponse>& shards);

// One row per shard: its address, the main counters, paused, and the age of
// its oldest message against `now`.
std::string FormatStatsShards(const std::vector<std::pair<std::string, tern::v1::StatsResponse>>& shards,
                              absl::Time now);

// Calls Admin.Stats on every shard of globals.queue with a deadline of
// globals.timeout_seconds and prints the result. Returns the exit code.
int RunStats(const GlobalOptions& globals, bool json, Io io);

}  // namespace tern::ternctl
