#include "tools/ternctl/tlsrpt_command.h"

#include <grpcpp/client_context.h>

#include <memory>
#include <ostream>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

int RunList(const GlobalOptions& g, bool json, Io io) {
  return CallAndPrint(g, &tern::v1::Admin::Stub::ListTlsReports, tern::v1::ListTlsReportsRequest(), "tlsrpt list",
                      json, io, FormatTlsReportsPending);
}

int RunSend(const GlobalOptions& g, bool include_today, bool json, Io io) {
  tern::v1::SendTlsReportsRequest req;
  req.set_include_today(include_today);
  return CallAndPrint(g, &tern::v1::Admin::Stub::SendTlsReports, req, "tlsrpt send", json, io,
                      FormatTlsReportsSent);
}

}  // namespace

std::string FormatDay(int64_t day) {
  return absl::FormatTime("%Y-%m-%d", absl::FromUnixSeconds(day * 86400), absl::UTCTimeZone());
}

std::string FormatTlsReportsPending(const tern::v1::ListTlsReportsResponse& resp) {
  std::vector<std::vector<std::string>> rows = {{"DAY", "DOMAIN", "SUCCESSFUL", "FAILED", "RUA"}};
  for (const auto& p : resp.pending()) {
    rows.push_back({FormatDay(p.day()), p.policy_domain(), absl::StrCat(p.successful()), absl::StrCat(p.failed()),
                    Truncate(absl::StrJoin(p.rua(), " "), 100)});
  }
  std::string out = resp.pending().empty() ? "" : FormatTable(rows);
  absl::StrAppend(&out, resp.pending_size(), resp.pending_size() == 1 ? " report" : " reports",
                  " pending (sent after midnight UTC; `ternctl tlsrpt send` sends the finished days now)\n");
  return out;
}

std::string FormatTlsReportsSent(const tern::v1::SendTlsReportsResponse& resp) {
  std::string out;
  int reports = 0;
  int messages = 0;
  for (const auto& s : resp.sent()) {
    const std::string what = absl::StrCat(FormatDay(s.day()), " ", s.policy_domain());
    if (s.message_ids().empty()) {
      absl::StrAppend(&out, what, ": nothing queued (no usable rua); its counts are deleted\n");
    } else {
      ++reports;
      messages += s.message_ids_size();
      absl::StrAppend(&out, what, ": report ", s.report_id(), " queued as ", absl::StrJoin(s.message_ids(), ", "),
                      "\n");
    }
    for (const std::string& skipped : s.skipped_rua()) {
      absl::StrAppend(&out, "  skipped ", skipped, "\n");
    }
  }
  if (resp.sent().empty()) {
    return "nothing to send\n";
  }
  absl::StrAppend(&out, reports, reports == 1 ? " report, " : " reports, ", messages,
                  messages == 1 ? " message queued\n" : " messages queued\n");
  return out;
}

void AddTlsRptCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  CLI::App* t = app.add_subcommand("tlsrpt", "SMTP TLS reports (RFC 8460): the counts waiting, and sending them now");
  t->require_subcommand(1);

  auto list_json = std::make_shared<bool>(false);
  CLI::App* list = t->add_subcommand("list", "Session counts not reported yet, per UTC day and policy domain");
  list->add_flag("--json", *list_json, "Print the Admin.ListTlsReports answer as JSON");
  list->callback([&globals, io, &exit_code, list_json] { exit_code = RunList(globals, *list_json, io); });

  struct SendOptions {
    bool include_today = false;
    bool json = false;
  };
  auto send_opts = std::make_shared<SendOptions>();
  CLI::App* send = t->add_subcommand(
      "send", "Queue the reports of the finished days now (the queue does this by itself after midnight UTC)");
  send->add_flag("--include-today", send_opts->include_today,
                 "Also today's counts so far (today's later sessions then make a report of their own)");
  send->add_flag("--json", send_opts->json, "Print the Admin.SendTlsReports answer as JSON");
  send->callback([&globals, io, &exit_code, send_opts] {
    exit_code = RunSend(globals, send_opts->include_today, send_opts->json, io);
  });
}

}  // namespace tern::ternctl
