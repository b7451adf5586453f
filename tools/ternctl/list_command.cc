// ternctl list | show | explain | qshape | corrupt: read-only views of the
// queue (Admin.List, Show, Qshape, ListCorrupt), as tables or --json.
#include <grpcpp/client_context.h>

#include <fstream>
#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tern/v1/queue.grpc.pb.h"
#include "lib/rpc/reply_summary.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

using rpc::ReplySummary;

std::string NotifyText(uint32_t notify) {
  if (notify == 0) {
    return "";
  }
  std::vector<std::string> parts;
  if (notify & tern::v1::NOTIFY_NEVER) parts.push_back("NEVER");
  if (notify & tern::v1::NOTIFY_SUCCESS) parts.push_back("SUCCESS");
  if (notify & tern::v1::NOTIFY_FAILURE) parts.push_back("FAILURE");
  if (notify & tern::v1::NOTIFY_DELAY) parts.push_back("DELAY");
  return absl::StrCat(" NOTIFY=", absl::StrJoin(parts, ","));
}

const char* KindText(tern::v1::BounceKind k) {
  switch (k) {
    case tern::v1::BOUNCE_KIND_DELAYED:
      return "delayed";
    case tern::v1::BOUNCE_KIND_DELIVERED:
      return "delivered";
    default:
      return "failed";
  }
}

struct ListOptions {
  SelectorOptions sel;
  uint32_t limit = 100;
  std::string cursor;
  bool json = false;
};

int RunList(const GlobalOptions& g, const ListOptions& o, Io io) {
  auto sel = BuildSelector(o.sel);
  if (!sel.ok()) {
    io.err << "ternctl: " << sel.status().message() << "\n";
    return 2;
  }
  tern::v1::ListRequest req;
  *req.mutable_selector() = *sel;
  req.set_limit(o.limit);
  req.set_cursor(o.cursor);
  tern::v1::ListResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->List(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "list", g, io);
  }
  if (o.json) {
    io.out << ToJson(resp);
    return 0;
  }
  const int64_t now = NowMs();
  std::vector<std::vector<std::string>> rows = {
      {"ID", "AGE", "SIZE", "STATE", "RCPTS", "TRIES", "NEXT", "FROM", "DOMAINS", "LAST REPLY"}};
  for (const auto& m : resp.messages()) {
    rows.push_back({m.message_id(), FormatAge(now - m.arrival_unix_ms()), absl::StrCat(m.size()), m.state(),
                    absl::StrCat(m.recipients_pending(), "/", m.recipients()), absl::StrCat(m.max_attempts()),
                    m.next_attempt_unix_ms() > 0 ? absl::StrCat("in ", FormatAge(m.next_attempt_unix_ms() - now))
                                                 : "-",
                    m.mail_from().empty() ? "<>" : Truncate(m.mail_from(), 40),
                    Truncate(absl::StrJoin(m.domains(), ","), 40),
                    m.last_reply().empty() ? "-" : Truncate(m.last_reply(), 60)});
  }
  io.out << FormatTable(rows);
  io.out << resp.messages_size() << (resp.messages_size() == 1 ? " message" : " messages");
  if (!resp.next_cursor().empty()) {
    io.out << "; more with --cursor " << resp.next_cursor();
  }
  io.out << "\n";
  return 0;
}

absl::StatusOr<tern::v1::ShowResponse> FetchShow(const GlobalOptions& g, const std::string& id, grpc::Status* s) {
  tern::v1::ShowRequest req;
  req.set_message_id(id);
  tern::v1::ShowResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  *s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->Show(&ctx, req, &resp);
  return resp;
}

std::string FormatShow(const tern::v1::ShowResponse& m) {
  const int64_t now = m.now_unix_ms();
  const auto& env = m.envelope();
  std::vector<std::vector<std::string>> head = {
      {"message", m.message_id()},
      {"arrived", absl::StrCat(FormatTime(m.arrival_unix_ms()), " (", FormatAge(now - m.arrival_unix_ms()), " ago)")},
      {"from", env.mail_from().empty() ? "<>" : absl::StrCat("<", env.mail_from(), ">")},
      {"size", absl::StrCat(m.size(), " bytes")},
  };
  if (!env.envid().empty()) head.push_back({"envid", env.envid()});
  if (env.requiretls()) head.push_back({"requiretls", "yes (every hop: TLS, a verified peer, REQUIRETLS offered)"});
  if (env.ret() != tern::v1::DSN_RET_UNSPECIFIED) {
    head.push_back({"ret", env.ret() == tern::v1::DSN_RET_FULL ? "FULL" : "HDRS"});
  }
  if (!env.client().ip().empty()) {
    head.push_back({"client", absl::StrCat(env.client().helo(), " [", env.client().ip(), "]",
                                           env.client().auth_user().empty() ? "" : " auth=",
                                           env.client().auth_user(), env.client().tls() ? " tls" : "")});
  }
  if (m.expires_unix_ms() > 0) head.push_back({"expires", FormatTime(m.expires_unix_ms())});
  if (m.paused()) head.push_back({"queue", "PAUSED (no deliveries are leased)"});
  std::string out = FormatTable(head);
  for (const auto& d : m.deliveries()) {
    absl::StrAppend(&out, "\ndelivery ", d.delivery_id(), "  domain ", d.domain(), "  state ", d.state(), "  tries ",
                    d.tries(), "  due ", FormatTime(d.due_unix_ms()), "\n");
    std::vector<std::vector<std::string>> rows = {{"  RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST REPLY"}};
    for (const auto& r : d.recipients()) {
      std::string last = r.has_last_result() ? ReplySummary(r.last_result()) : "-";
      if (r.has_last_result() && !r.last_result().remote_mta().empty()) {
        absl::StrAppend(&last, " (", r.last_result().remote_mta(), ")");
      }
      if (r.ambiguous_count() > 0) {
        absl::StrAppend(&last, " [ambiguous x", r.ambiguous_count(), "]");
      }
      rows.push_back({absl::StrCat("  ", r.spec().address(), NotifyText(r.spec().notify())), r.state(),
                      absl::StrCat(r.attempts()),
                      r.next_attempt_unix_ms() > 0 ? FormatTime(r.next_attempt_unix_ms()) : "-", last});
    }
    absl::StrAppend(&out, FormatTable(rows));
  }
  for (const auto& b : m.bounces()) {
    absl::StrAppend(&out, "\nDSN job ", b.bounce_id(), "  ", KindText(b.kind()), "  for ",
                    absl::StrJoin(b.recipients(), ", "), b.leased() ? "  (out on lease)" : "", "\n");
  }
  absl::StrAppend(&out, "\nheaders:\n");
  for (absl::string_view line : absl::StrSplit(m.headers(), "\r\n")) {
    if (!line.empty()) {
      absl::StrAppend(&out, "  ", line, "\n");
    }
  }
  return out;
}

std::string FormatExplain(const tern::v1::ShowResponse& m) {
  const int64_t now = m.now_unix_ms();
  std::string out = absl::StrCat(m.message_id(), ": arrived ", FormatAge(now - m.arrival_unix_ms()), " ago from ",
                                 m.envelope().mail_from().empty() ? "<>" : m.envelope().mail_from(), "\n");
  if (m.envelope().requiretls()) {
    absl::StrAppend(&out, "  REQUIRETLS (RFC 8689): only a verified TLS peer that offers REQUIRETLS gets it; "
                          "otherwise it bounces (5.7.30)\n");
  }
  if (m.deliveries().empty()) {
    absl::StrAppend(&out, "  every recipient is final; only DSN jobs keep it queued\n");
  }
  for (const auto& d : m.deliveries()) {
    absl::StrAppend(&out, "  ", d.delivery_id(), " (", d.domain(), "): ", d.explanation(), "\n");
    if (!d.lease_holder().empty() || d.lease_deadline_unix_ms() > 0) {
      absl::StrAppend(&out, "    lease: holder ", d.lease_holder().empty() ? "-" : d.lease_holder(), ", deadline ",
                      FormatTime(d.lease_deadline_unix_ms()), ", ", d.tries(), " leases so far\n");
    }
    for (const auto& r : d.recipients()) {
      absl::StrAppend(&out, "    ", r.spec().address(), ": ", r.state(), ", ", r.attempts(),
                      r.attempts() == 1 ? " attempt" : " attempts");
      if (r.has_last_result()) {
        absl::StrAppend(&out, ", last reply '", ReplySummary(r.last_result()), "'");
        if (!r.last_result().remote_mta().empty() || !r.last_result().remote_ip().empty()) {
          absl::StrAppend(&out, " from ", r.last_result().remote_mta(), "[", r.last_result().remote_ip(), "]");
        }
        if (!r.last_result().tls().empty()) {
          absl::StrAppend(&out, " over ", r.last_result().tls());
        }
        absl::StrAppend(&out, " at ", FormatTime(r.last_result().at_unix_ms()));
      }
      if (r.ambiguous_count() > 0) {
        absl::StrAppend(&out, ", AMBIGUOUS ", r.ambiguous_count(), "x (a lease expired after DATA was sent)");
      }
      absl::StrAppend(&out, "\n");
    }
  }
  for (const auto& b : m.bounces()) {
    absl::StrAppend(&out, "  DSN job ", b.bounce_id(), " (", KindText(b.kind()), ") waits for the bouncer",
                    b.leased() ? " (out on lease)" : "", "\n");
  }
  if (m.expires_unix_ms() > 0) {
    absl::StrAppend(&out, "  expires (max_queue_age) at ", FormatTime(m.expires_unix_ms()), "\n");
  }
  return out;
}

int RunShow(const GlobalOptions& g, const std::string& id, bool json, bool explain, Io io) {
  grpc::Status s;
  auto resp = FetchShow(g, id, &s);
  if (!s.ok()) {
    return ReportRpcError(s, explain ? "explain" : "show", g, io);
  }
  io.out << (json ? ToJson(*resp) : explain ? FormatExplain(*resp) : FormatShow(*resp));
  return 0;
}

// Postfix's qshape labels each column by its upper bound, the last with "+".
std::string FormatQshape(const tern::v1::QshapeResponse& q) {
  std::vector<std::string> header = {"", "T"};
  const int n = q.bucket_minutes_size();
  for (int i = 0; i < n; ++i) {
    header.push_back(i + 1 < n ? absl::StrCat(q.bucket_minutes(i + 1)) : absl::StrCat(q.bucket_minutes(i), "+"));
  }
  std::vector<std::vector<std::string>> rows = {header};
  for (const auto& r : q.rows()) {
    std::vector<std::string> row = {r.domain(), absl::StrCat(r.total())};
    for (uint64_t c : r.counts()) {
      row.push_back(absl::StrCat(c));
    }
    rows.push_back(std::move(row));
  }
  // Right-align numbers like qshape does.
  std::vector<size_t> width(header.size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line = row[0] + std::string(width[0] - row[0].size(), ' ');
    for (size_t i = 1; i < row.size(); ++i) {
      absl::StrAppend(&line, " ", std::string(width[i] - row[i].size() + 1, ' '), row[i]);
    }
    absl::StrAppend(&out, line, "\n");
  }
  if (q.domains() + 1 > static_cast<uint32_t>(q.rows_size())) {
    absl::StrAppend(&out, "(", q.domains() - (q.rows_size() - 1), " more domains; see --top)\n");
  }
  return out;
}

int RunQshape(const GlobalOptions& g, bool deferred, uint32_t top, const std::vector<uint32_t>& buckets, bool json,
              Io io) {
  tern::v1::QshapeRequest req;
  req.set_deferred_only(deferred);
  req.set_top(top);
  for (uint32_t b : buckets) req.add_bucket_minutes(b);
  return CallAndPrint(g, &tern::v1::Admin::Stub::Qshape, req, "qshape", json, io, FormatQshape);
}

int RunCorrupt(const GlobalOptions& g, uint32_t limit, bool json, Io io) {
  tern::v1::ListCorruptRequest req;
  req.set_limit(limit);
  tern::v1::ListCorruptResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->ListCorrupt(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "corrupt", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {{"FROM", "KEY", "SIZE"}};
  for (const auto& r : resp.records()) {
    rows.push_back({r.column_family(), r.key(), absl::StrCat(r.size())});
  }
  io.out << FormatTable(rows) << resp.total() << " corrupt records kept\n";
  return 0;
}

// One quarantined record, byte for byte (or, with `body`, the body its
// message left behind), to stdout or `out_path`: bytes, not text, so a
// message salvaged this way can be sent again as it was queued.
int RunCorruptShow(const GlobalOptions& g, const std::string& cf, const std::string& key, bool body,
                   const std::string& out_path, Io io) {
  tern::v1::GetCorruptRequest req;
  req.set_column_family(cf);
  req.set_key(key);
  tern::v1::GetCorruptResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->GetCorrupt(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "corrupt show", g, io);
  }
  if (body && !resp.has_body()) {
    io.err << "ternctl: no body is stored for " << cf << " " << key
           << (cf == "messages" ? "" : " (only a quarantined messages record can leave one)") << "\n";
    return 1;
  }
  const std::string& bytes = body ? resp.body() : resp.value();
  if (out_path.empty()) {
    io.out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return 0;
  }
  std::ofstream file(out_path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  file.close();
  if (!file) {
    io.err << "ternctl: cannot write " << out_path << "\n";
    return 1;
  }
  io.err << "wrote " << bytes.size() << " bytes to " << out_path << "\n";
  return 0;
}

int RunCorruptPurge(const GlobalOptions& g, const std::string& cf, const std::string& key, bool all, bool json,
                    Io io) {
  tern::v1::PurgeCorruptRequest req;
  req.set_column_family(cf);
  req.set_key(key);
  req.set_all(all);
  tern::v1::PurgeCorruptResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->PurgeCorrupt(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "corrupt purge", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
  } else {
    io.out << "purged " << resp.purged() << " corrupt records and " << resp.bodies_purged()
           << " bodies they left behind\n";
  }
  return 0;
}

// The facts deliverers share about remote hosts (Queue.GetHostFlags):
// "broken_tls" addresses reached in plain text, "unreachable" ones that get
// no session until the flag expires.
int RunHosts(const GlobalOptions& g, const std::string& flag, bool json, Io io) {
  tern::v1::GetHostFlagsRequest req;
  req.set_flag(flag);
  tern::v1::GetHostFlagsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Queue::NewStub(rpc::MakeChannel(g.queue))->GetHostFlags(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "hosts", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
    return 0;
  }
  const int64_t now = absl::ToUnixMillis(absl::Now());
  std::vector<std::vector<std::string>> rows = {{"HOST", "FLAG", "UNTIL", "LEFT", "REASON"}};
  for (const auto& f : resp.flags()) {
    // A cleared flag is listed until it would have expired, so deliverers
    // learn of the clearing; it is no longer in force.
    rows.push_back({f.host(), f.flag(), f.cleared() ? "-" : FormatTime(f.expires_unix_ms()),
                    f.cleared() ? "cleared" : FormatAge(f.expires_unix_ms() - now), Truncate(f.reason(), 100)});
  }
  io.out << FormatTable(rows) << resp.flags_size() << " host flags\n";
  return 0;
}

// Ends a host's flags early (Admin.ClearHostFlags): the operator fixed the
// MX, or knows better. Exit 1 when the host had no flag in force.
int RunClearHost(const GlobalOptions& g, const std::string& host, const std::string& flag, bool json, Io io) {
  tern::v1::ClearHostFlagsRequest req;
  req.set_host(host);
  req.set_flag(flag);
  tern::v1::ClearHostFlagsResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->ClearHostFlags(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "hosts clear", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
  } else {
    for (const auto& f : resp.cleared()) {
      io.out << "cleared " << f.flag() << " on " << f.host() << " (was until " << FormatTime(f.expires_unix_ms())
             << "); deliverers drop it within their host_flags_refresh\n";
    }
  }
  if (resp.cleared().empty()) {
    io.err << "ternctl: " << host << " has no " << (flag.empty() ? "host flag" : flag) << " in force\n";
    return 1;
  }
  return 0;
}

}  // namespace

void AddListCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto list = std::make_shared<ListOptions>();
  CLI::App* l = app.add_subcommand("list", "List queued messages (filters combine with AND)");
  AddSelectorOptions(l, &list->sel, /*with_all=*/false);
  l->add_option("--limit", list->limit, "Messages per page (at most 10000)")->capture_default_str();
  l->add_option("--cursor", list->cursor, "Continue after this message id (printed at the end of a page)");
  l->add_flag("--json", list->json, "Print the Admin.List answer as JSON");
  l->callback([&globals, io, &exit_code, list] { exit_code = RunList(globals, *list, io); });

  for (const bool explain : {false, true}) {
    auto id = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    CLI::App* c = app.add_subcommand(explain ? "explain" : "show",
                                     explain ? "Why is this message still queued?"
                                             : "Envelope, recipients, attempts, replies and headers of a message");
    c->add_option("id", *id, "Message id")->required();
    c->add_flag("--json", *json, "Print the Admin.Show answer as JSON");
    c->callback([&globals, io, &exit_code, id, json, explain] {
      exit_code = RunShow(globals, *id, *json, explain, io);
    });
  }

  struct QshapeOptions {
    bool deferred = false;
    uint32_t top = 20;
    std::vector<uint32_t> buckets;
    bool json = false;
  };
  auto q = std::make_shared<QshapeOptions>();
  CLI::App* qs = app.add_subcommand("qshape", "Messages per recipient domain by age (like Postfix's qshape)");
  qs->add_flag("--deferred", q->deferred, "Only deliveries waiting for a retry");
  qs->add_option("--top", q->top, "Domains to show")->capture_default_str();
  qs->add_option("--buckets", q->buckets, "Bucket lower bounds in minutes (default 0 5 10 20 ... 1280)");
  qs->add_flag("--json", q->json, "Print the Admin.Qshape answer as JSON");
  qs->callback([&globals, io, &exit_code, q] {
    exit_code = RunQshape(globals, q->deferred, q->top, q->buckets, q->json, io);
  });

  auto climit = std::make_shared<uint32_t>(100);
  auto cjson = std::make_shared<bool>(false);
  CLI::App* cc = app.add_subcommand("corrupt", "Records that failed to parse and were moved aside");
  cc->add_option("--limit", *climit, "Records to show")->capture_default_str();
  cc->add_flag("--json", *cjson, "Print JSON");
  struct CorruptArgs {
    std::string cf;
    std::string key;
    bool body = false;
    std::string out;
    bool all = false;
    bool json = false;
  };
  auto show = std::make_shared<CorruptArgs>();
  CLI::App* cshow = cc->add_subcommand("show", "Write one record's raw bytes (or its message's body) out");
  cshow->add_option("cf", show->cf, "Column family, as `ternctl corrupt` lists it (FROM)")->required();
  cshow->add_option("key", show->key, "Key, as `ternctl corrupt` lists it")->required();
  cshow->add_flag("--body", show->body, "The body a quarantined messages record left behind, to send it again");
  cshow->add_option("--out", show->out, "Write to this file instead of stdout");
  cshow->callback([&globals, io, &exit_code, show] {
    exit_code = RunCorruptShow(globals, show->cf, show->key, show->body, show->out, io);
  });
  auto purge = std::make_shared<CorruptArgs>();
  CLI::App* cpurge = cc->add_subcommand("purge", "Delete one record (or --all) and any body it left behind");
  cpurge->add_option("cf", purge->cf, "Column family, as `ternctl corrupt` lists it (FROM)");
  cpurge->add_option("key", purge->key, "Key, as `ternctl corrupt` lists it");
  cpurge->add_flag("--all", purge->all, "Every corrupt record");
  cpurge->add_flag("--json", purge->json, "Print the Admin.PurgeCorrupt answer as JSON");
  cpurge->callback([&globals, io, &exit_code, purge] {
    exit_code = RunCorruptPurge(globals, purge->cf, purge->key, purge->all, purge->json, io);
  });
  cc->callback([&globals, io, &exit_code, climit, cjson, cshow, cpurge] {
    if (!cshow->parsed() && !cpurge->parsed()) {
      exit_code = RunCorrupt(globals, *climit, *cjson, io);
    }
  });

  auto hflag = std::make_shared<std::string>();
  auto hjson = std::make_shared<bool>(false);
  CLI::App* hc = app.add_subcommand("hosts", "Facts deliverers share about MX addresses: broken_tls, unreachable");
  hc->add_option("--flag", *hflag, "Only this flag (broken_tls, unreachable); default all");
  hc->add_flag("--json", *hjson, "Print the Queue.GetHostFlags answer as JSON");
  auto chost = std::make_shared<std::string>();
  auto cflag = std::make_shared<std::string>();
  auto cjson2 = std::make_shared<bool>(false);
  CLI::App* clr = hc->add_subcommand("clear", "End a host's flags now (every deliverer follows within its refresh)");
  clr->add_option("host", *chost, "The host as `ternctl hosts` shows it")->required();
  clr->add_option("--flag", *cflag, "Only this flag; default every flag of the host");
  clr->add_flag("--json", *cjson2, "Print the Admin.ClearHostFlags answer as JSON");
  clr->callback([&globals, io, &exit_code, chost, cflag, cjson2] {
    exit_code = RunClearHost(globals, *chost, *cflag, *cjson2, io);
  });
  hc->callback([&globals, io, &exit_code, hflag, hjson, clr] {
    if (!clr->parsed()) {
      exit_code = RunHosts(globals, *hflag, *hjson, io);
    }
  });
}

}  // namespace tern::ternctl
