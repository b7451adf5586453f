#include "tools/ternctl/tlsrpt_command.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <map>
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
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

int RunList(const GlobalOptions& g, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  if (shards->size() == 1) {
    return CallAndPrint(OneShard(g, shards->front()), &tern::v1::Admin::Stub::ListTlsReports,
                        tern::v1::ListTlsReportsRequest(), "tlsrpt list", json, io, FormatTlsReportsPending);
  }
  auto answers =
      AskEveryShard(g, *shards, &tern::v1::Admin::Stub::ListTlsReports, tern::v1::ListTlsReportsRequest());
  const bool failed = ReportFailedShards(answers, "tlsrpt list", io);
  std::vector<tern::v1::ListTlsReportsResponse> each;
  std::vector<std::string> queues_json;
  size_t reports = 0;
  for (const auto* a : OkAnswers(answers)) {
    each.push_back(a->resp);
    reports += a->resp.pending_size();
    queues_json.push_back(JsonWithQueue(ToJson(a->resp), a->queue));
  }
  if (each.empty()) {
    return 1;
  }
  const tern::v1::ListTlsReportsResponse merged = MergeTlsReportsPending(each);
  io.out << (json ? JsonWithMember(ToJson(merged), "queues", JsonArray(queues_json)) + "\n"
                  : FormatTlsReportsPendingOnShards(merged, reports, each.size()));
  return failed ? 1 : 0;
}

int RunSend(const GlobalOptions& g, bool include_today, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::SendTlsReportsRequest req;
  req.set_include_today(include_today);
  if (shards->size() == 1) {
    return CallAndPrint(OneShard(g, shards->front()), &tern::v1::Admin::Stub::SendTlsReports, req, "tlsrpt send",
                        json, io, FormatTlsReportsSent);
  }
  // Each shard sends its own reports: printed under its name.
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::SendTlsReports, req);
  const bool failed = ReportFailedShards(answers, "tlsrpt send", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  std::vector<std::string> items;
  for (const auto* a : ok) {
    for (const auto& sent : a->resp.sent()) {
      items.push_back(JsonWithQueue(ToJson(sent), a->queue));
    }
    if (!json) {
      io.out << ShardHeader(a->queue) << FormatTlsReportsSent(a->resp);
    }
  }
  if (json) {
    io.out << JsonFillArray(ToJson(tern::v1::SendTlsReportsResponse()), "sent", items) << "\n";
  }
  return failed ? 1 : 0;
}

std::string PendingFooter(size_t reports) {
  return absl::StrCat(reports, reports == 1 ? " report" : " reports",
                      " pending (sent after midnight UTC; `ternctl tlsrpt send` sends the finished days now)\n");
}

std::string PendingTable(const tern::v1::ListTlsReportsResponse& resp) {
  std::vector<std::vector<std::string>> rows = {{"DAY", "DOMAIN", "SUCCESSFUL", "FAILED", "RUA"}};
  for (const auto& p : resp.pending()) {
    rows.push_back({FormatDay(p.day()), p.policy_domain(), absl::StrCat(p.successful()), absl::StrCat(p.failed()),
                    Truncate(absl::StrJoin(p.rua(), " "), 100)});
  }
  return resp.pending().empty() ? "" : FormatTable(rows);
}

}  // namespace

std::string FormatDay(int64_t day) {
  return absl::FormatTime("%Y-%m-%d", absl::FromUnixSeconds(day * 86400), absl::UTCTimeZone());
}

std::string FormatTlsReportsPending(const tern::v1::ListTlsReportsResponse& resp) {
  return PendingTable(resp) + PendingFooter(resp.pending_size());
}

tern::v1::ListTlsReportsResponse MergeTlsReportsPending(const std::vector<tern::v1::ListTlsReportsResponse>& shards) {
  std::map<std::pair<int64_t, std::string>, tern::v1::TlsRptPending> merged;
  for (const auto& shard : shards) {
    for (const auto& p : shard.pending()) {
      tern::v1::TlsRptPending& into = merged[{p.day(), p.policy_domain()}];
      into.set_day(p.day());
      into.set_policy_domain(p.policy_domain());
      into.set_successful(into.successful() + p.successful());
      into.set_failed(into.failed() + p.failed());
      for (const std::string& rua : p.rua()) {
        if (std::find(into.rua().begin(), into.rua().end(), rua) == into.rua().end()) {
          into.add_rua(rua);
        }
      }
    }
  }
  tern::v1::ListTlsReportsResponse out;
  for (auto& [key, p] : merged) {
    *out.add_pending() = std::move(p);
  }
  return out;
}

std::string FormatTlsReportsPendingOnShards(const tern::v1::ListTlsReportsResponse& merged, size_t reports,
                                            size_t shards) {
  return absl::StrCat(PendingTable(merged), reports, reports == 1 ? " report" : " reports", " pending from ", shards,
                      " queue shards, each sending its own (after midnight UTC; `ternctl tlsrpt send` sends the "
                      "finished days now)\n");
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
