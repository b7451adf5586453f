// File: stats_command.h
//
// `ternctl stats [--json]`: every field of Admin.Stats, as an aligned table
// or as one JSON object keyed by the proto field names. Fields are walked
// through the proto descriptor, so a field added to StatsResponse shows up
// here without a code change (the table then uses its field name as label).
//
// Thread-safety: pure formatting functions; RunStats makes one blocking RPC.
#pragma once

#include <string>

#include "absl/time/time.h"
#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// Human-readable table; `now` is used for the age of the oldest message.
std::string FormatStatsTable(const tern::v1::StatsResponse& stats, absl::Time now);

// {"messages":1,...} with every field, numbers as JSON numbers, one line.
std::string FormatStatsJson(const tern::v1::StatsResponse& stats);

// Calls Admin.Stats on globals.queue with a deadline of
// globals.timeout_seconds and prints the result. Returns the exit code.
int RunStats(const GlobalOptions& globals, bool json, Io io);

}  // namespace tern::ternctl
