// File: destinations_command.h
//
// `ternctl destinations [--json]`: destination shaping as it stands
// (Admin.Destinations): per recipient domain or MX site (shaping.ini), how
// many deliveries are out on lease and how many wait for its limits, the
// concurrency configured and in force (lower during a 421 backoff), its
// rate, and for a site how many domains it holds.
//
// Thread-safety: a pure formatting function; the command makes one blocking
// RPC.
#pragma once

#include <cstdint>
#include <string>

#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// One row per destination, then a line per backoff in force (until when,
// and the reply that started it) against `now_unix_ms`.
std::string FormatDestinations(const tern::v1::DestinationsResponse& resp, int64_t now_unix_ms);

void AddDestinationsCommand(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
