// File: tlsrpt_command.h
//
// `ternctl tlsrpt list [--json]` and `ternctl tlsrpt send [--include-today]
// [--json]`: the SMTP TLS report counts the queue holds per UTC day and
// policy domain (Admin.ListTlsReports), and queueing their reports now
// instead of after midnight UTC (Admin.SendTlsReports; the queue answers
// FAILED_PRECONDITION while tern.ini [tlsrpt] enabled=false).
//
// Thread-safety: pure formatting functions; the commands make one blocking
// RPC each.
//
// Standards: RFC 8460 (SMTP TLS Reporting).
#pragma once

#include <cstdint>
#include <string>

#include "tern/v1/admin.pb.h"
#include "tools/ternctl/command_group.h"

namespace tern::ternctl {

// "2026-11-22" for a day number (days since 1970-01-01, UTC).
std::string FormatDay(int64_t day);

// One row per (day, domain): sessions that succeeded and failed, and the
// rua; then how many reports are waiting.
std::string FormatTlsReportsPending(const tern::v1::ListTlsReportsResponse& resp);

// One line per report queued (its id and message ids), an indented line per
// rua skipped, a line per domain whose counts were dropped for want of a
// usable mailto: rua; then the totals.
std::string FormatTlsReportsSent(const tern::v1::SendTlsReportsResponse& resp);

// Adds `tlsrpt list` and `tlsrpt send`.
void AddTlsRptCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
