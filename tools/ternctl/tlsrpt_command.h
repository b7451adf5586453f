// File: tlsrpt_command.h
//
// `ternctl tlsrpt list [--json]` and `ternctl tlsrpt send [--include-today]
// [--json]`: the SMTP TLS report counts the queue holds per UTC day and
// policy domain (Admin.ListTlsReports), and queueing their reports now
// instead of after midnight UTC (Admin.SendTlsReports; the queue answers
// FAILED_PRECONDITION while tern.ini [tlsrpt] enabled=false).
//
// With several queue shards, `list` sums each (day, domain)'s counts over
// the shards (each shard still sends a report of its own) and `send` asks
// every shard, printing each shard's reports under its name.
//
// Thread-safety: pure formatting functions; the commands make one blocking
// RPC per shard.
//
// Standards: RFC 8460 (SMTP TLS Reporting).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// "2026-11-22" for a day number (days since 1970-01-01, UTC).
std::string FormatDay(int64_t day);

// One row per (day, domain): sessions that succeeded and failed, and the
// rua; then how many reports are waiting.
std::string FormatTlsReportsPending(const tern::v1::ListTlsReportsResponse& resp);

// The shards' pending counts as one answer: per (day, policy domain), the
// sessions summed and the rua of every shard (each once), ordered by day
// and domain.
tern::v1::ListTlsReportsResponse MergeTlsReportsPending(const std::vector<tern::v1::ListTlsReportsResponse>& shards);

// The merged table of `merged`, then how many reports the `shards` shards
// will send: one per shard, day and domain (`reports`).
std::string FormatTlsReportsPendingOnShards(const tern::v1::ListTlsReportsResponse& merged, size_t reports,
                                            size_t shards);

// One line per report queued (its id and message ids), an indented line per
// rua skipped, a line per domain whose counts were dropped for want of a
// usable mailto: rua; then the totals.
std::string FormatTlsReportsSent(const tern::v1::SendTlsReportsResponse& resp);

// Adds `tlsrpt list` and `tlsrpt send`.
void AddTlsRptCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
