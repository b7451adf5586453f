// ternctl list | show | explain | qshape | corrupt | hosts: read-only views
// of the queue (Admin.List, Show, Qshape, ListCorrupt, Queue.GetHostFlags),
// as tables or --json, and the few writes that go with them (corrupt purge,
// hosts clear). With several queue shards each asks every shard
// (queue_shards.h; the formats are in README.md).
#include <grpcpp/client_context.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
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
#include "tools/ternctl/queue_shards.h"

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

const std::vector<std::string>& ListHeader() {
  static const auto* header = new std::vector<std::string>{"ID",   "AGE",  "SIZE", "STATE",   "RCPTS",
                                                           "TRIES", "NEXT", "FROM", "DOMAINS", "LAST REPLY"};
  return *header;
}

std::vector<std::string> ListRow(const tern::v1::MessageSummary& m, int64_t now) {
  return {m.message_id(), FormatAge(now - m.arrival_unix_ms()), absl::StrCat(m.size()), m.state(),
          absl::StrCat(m.recipients_pending(), "/", m.recipients()), absl::StrCat(m.max_attempts()),
          m.next_attempt_unix_ms() > 0 ? absl::StrCat("in ", FormatAge(m.next_attempt_unix_ms() - now)) : "-",
          m.mail_from().empty() ? "<>" : Truncate(m.mail_from(), 40), Truncate(absl::StrJoin(m.domains(), ","), 40),
          m.last_reply().empty() ? "-" : Truncate(m.last_reply(), 60)};
}

int RunListOnOneQueue(const GlobalOptions& g, const tern::v1::ListRequest& req, bool json, Io io) {
  tern::v1::ListResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->List(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "list", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
    return 0;
  }
  const int64_t now = NowMs();
  std::vector<std::vector<std::string>> rows = {ListHeader()};
  for (const auto& m : resp.messages()) {
    rows.push_back(ListRow(m, now));
  }
  io.out << FormatTable(rows);
  io.out << resp.messages_size() << (resp.messages_size() == 1 ? " message" : " messages");
  if (!resp.next_cursor().empty()) {
    io.out << "; more with --cursor " << resp.next_cursor();
  }
  io.out << "\n";
  return 0;
}

// Admin.List's page size when none is given, and its most.
constexpr uint32_t kDefaultListLimit = 100;
constexpr uint32_t kMaxListLimit = 10000;

// A page of the whole queue: each shard's next `limit` entries from where
// the cursor puts it (ShardCursor in queue_shards.h), merged by (message
// id, shard order), the first `limit` of them shown. Everything at or
// before the last one shown has been shown on some page, so that entry is
// the next cursor.
int RunListOnShards(const GlobalOptions& g, const std::vector<std::string>& shards, const tern::v1::ListRequest& base,
                    bool json, Io io) {
  absl::StatusOr<ShardCursor> cursor = ParseShardCursor(base.cursor(), shards);
  if (!cursor.ok()) {
    io.err << "ternctl: " << cursor.status().message() << "\n";
    return 2;
  }
  const uint32_t limit = base.limit() == 0 ? kDefaultListLimit : std::min(base.limit(), kMaxListLimit);
  auto answers = AskShards<tern::v1::Admin, tern::v1::ListResponse>(
      shards, [&](tern::v1::Admin::Stub& stub, tern::v1::ListResponse& page, size_t i) {
        // A shard after the cursor's continues at its id, not after it.
        const bool at_id = !cursor->after_id.empty() && cursor->shard.has_value() && i > *cursor->shard;
        std::string after = at_id ? IdBefore(cursor->after_id) : cursor->after_id;
        for (;;) {
          tern::v1::ListRequest req = base;
          req.set_limit(limit);
          req.set_cursor(after);
          tern::v1::ListResponse resp;
          grpc::ClientContext ctx;
          SetDeadline(ctx, g);
          grpc::Status s = stub.List(&ctx, req, &resp);
          if (!s.ok()) {
            return s;
          }
          bool dropped = false;
          for (auto& m : *resp.mutable_messages()) {
            if (at_id && m.message_id() < cursor->after_id) {
              dropped = true;  // between IdBefore(id) and id: shown before
              continue;
            }
            *page.add_messages() = std::move(m);
          }
          page.set_next_cursor(resp.next_cursor());
          if (!dropped || resp.next_cursor().empty() || static_cast<uint32_t>(page.messages_size()) >= limit) {
            return grpc::Status::OK;
          }
          after = resp.next_cursor();
        }
      });
  const bool failed = ReportFailedShards(answers, "list", io);
  struct Entry {
    const tern::v1::MessageSummary* m;
    size_t shard;
  };
  std::vector<Entry> entries;
  bool more = false;
  bool any = false;
  for (size_t i = 0; i < answers.size(); ++i) {
    if (!answers[i].status.ok()) {
      continue;
    }
    any = true;
    more = more || !answers[i].resp.next_cursor().empty();
    for (const auto& m : answers[i].resp.messages()) {
      entries.push_back({&m, i});
    }
  }
  if (!any) {
    return 1;
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.m->message_id() != b.m->message_id() ? a.m->message_id() < b.m->message_id() : a.shard < b.shard;
  });
  if (entries.size() > limit) {
    entries.resize(limit);
    more = true;
  }
  // The cursor says where every shard stands, so it may only pass the
  // messages of shards that answered: a shard that failed keeps its
  // messages below the last entry shown, and a cursor past them would skip
  // them for good. So a page missing a shard offers no cursor; the same
  // page asked again once the shard answers shows them.
  const std::string next = more && !failed && !entries.empty()
                               ? FormatShardCursor(entries.back().m->message_id(), shards[entries.back().shard])
                               : "";
  if (json) {
    std::vector<std::string> items;
    for (const Entry& e : entries) {
      items.push_back(JsonWithQueue(ToJson(*e.m), shards[e.shard]));
    }
    tern::v1::ListResponse page;
    page.set_next_cursor(next);
    io.out << JsonFillArray(ToJson(page), "messages", items) << "\n";
    return failed ? 1 : 0;
  }
  const int64_t now = NowMs();
  std::vector<std::vector<std::string>> rows = {{"QUEUE"}};
  rows[0].insert(rows[0].end(), ListHeader().begin(), ListHeader().end());
  for (const Entry& e : entries) {
    std::vector<std::string> row = {shards[e.shard]};
    std::vector<std::string> rest = ListRow(*e.m, now);
    row.insert(row.end(), rest.begin(), rest.end());
    rows.push_back(std::move(row));
  }
  io.out << FormatTable(rows) << entries.size() << (entries.size() == 1 ? " message" : " messages");
  if (!next.empty()) {
    io.out << "; more with --cursor " << next;
  } else if (failed) {
    io.out << "; not every shard answered, so no cursor past this page: list it again when they do";
  }
  io.out << "\n";
  return failed ? 1 : 0;
}

int RunList(const GlobalOptions& g, const ListOptions& o, Io io) {
  auto sel = BuildSelector(o.sel);
  if (!sel.ok()) {
    io.err << "ternctl: " << sel.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::ListRequest req;
  *req.mutable_selector() = *sel;
  req.set_limit(o.limit);
  req.set_cursor(o.cursor);
  if (shards->size() > 1) {
    return RunListOnShards(g, *shards, req, o.json, io);
  }
  // A cursor a multi-shard listing printed names the shard; one queue needs
  // only the id.
  const std::string suffix = "@" + shards->front();
  if (absl::EndsWith(o.cursor, suffix) && o.cursor.size() > suffix.size()) {
    req.set_cursor(o.cursor.substr(0, o.cursor.size() - suffix.size()));
  }
  return RunListOnOneQueue(OneShard(g, shards->front()), req, o.json, io);
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
  // The certificate the client presented over TLS (tls.ini requestCert):
  // what relay_clientcerts lists, so an operator can see why it relayed.
  if (const auto& c = env.client(); !c.tls_client_verify().empty() && c.tls_client_verify() != "NO") {
    head.push_back({"client cert", absl::StrCat(c.tls_client_verify() == "OK" ? "verified" : "not verified",
                                                c.tls_client_subject().empty() ? "" : " ", c.tls_client_subject(),
                                                c.tls_client_sha256().empty() ? "" : " sha256=",
                                                c.tls_client_sha256())});
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
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  if (shards->size() == 1) {
    const GlobalOptions one = OneShard(g, shards->front());
    grpc::Status s;
    auto resp = FetchShow(one, id, &s);
    if (!s.ok()) {
      return ReportRpcError(s, explain ? "explain" : "show", one, io);
    }
    io.out << (json ? ToJson(*resp) : explain ? FormatExplain(*resp) : FormatShow(*resp));
    return 0;
  }
  // Ids are unique per shard only: every shard that holds the id shows it.
  tern::v1::ShowRequest req;
  req.set_message_id(id);
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::Show, req);
  const bool failed = ReportFailedShards(answers, explain ? "explain" : "show", io, grpc::StatusCode::NOT_FOUND);
  const auto found = OkAnswers(answers);
  if (found.empty()) {
    // Nowhere: the queue's own "no message ..." as on one queue.
    if (!failed) {
      return ReportRpcError(answers.front().status, explain ? "explain" : "show", g, io);
    }
    if (std::any_of(answers.begin(), answers.end(),
                    [](const auto& a) { return a.status.error_code() == grpc::StatusCode::NOT_FOUND; })) {
      io.err << "ternctl: " << (explain ? "explain" : "show") << ": no message " << id
             << " on the shards that answered\n";
    }
    return 1;
  }
  for (const auto* a : found) {
    if (json) {
      io.out << JsonWithQueue(ToJson(a->resp), a->queue) << "\n";
    } else {
      io.out << ShardHeader(a->queue) << (explain ? FormatExplain(a->resp) : FormatShow(a->resp));
    }
  }
  return failed ? 1 : 0;
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

// How many domains each shard is asked for, so that a domain's rows from
// every shard are summed even when it is not in every shard's --top.
constexpr uint32_t kShardQshapeTop = 10000;

// The shards' qshapes as one: TOTAL and each domain's buckets summed, the
// domains ranked again by total, the first `top` kept.
tern::v1::QshapeResponse MergeQshape(const std::vector<const tern::v1::QshapeResponse*>& shards, uint32_t top) {
  tern::v1::QshapeResponse out;
  if (shards.empty()) {
    return out;
  }
  *out.mutable_bucket_minutes() = shards.front()->bucket_minutes();
  const int n = out.bucket_minutes_size();
  struct Row {
    uint64_t total = 0;
    std::vector<uint64_t> counts;
  };
  auto add = [n](Row& into, const tern::v1::QshapeRow& r) {
    into.counts.resize(n, 0);
    into.total += r.total();
    for (int j = 0; j < n && j < r.counts_size(); ++j) {
      into.counts[j] += r.counts(j);
    }
  };
  Row total;
  std::map<std::string, Row> rows;
  uint32_t domains = 0;
  for (const tern::v1::QshapeResponse* q : shards) {
    domains = std::max(domains, q->domains());
    for (int i = 0; i < q->rows_size(); ++i) {
      add(i == 0 ? total : rows[q->rows(i).domain()], q->rows(i));  // the first row is TOTAL
    }
  }
  std::vector<std::pair<std::string, const Row*>> order;
  for (const auto& [domain, row] : rows) {
    order.emplace_back(domain, &row);
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.second->total > b.second->total; });
  auto put = [&out](const std::string& name, const Row& row) {
    tern::v1::QshapeRow* r = out.add_rows();
    r->set_domain(name);
    r->set_total(row.total);
    for (uint64_t c : row.counts) {
      r->add_counts(c);
    }
  };
  put("TOTAL", total);
  for (size_t i = 0; i < order.size() && i < top; ++i) {
    put(order[i].first, *order[i].second);
  }
  out.set_domains(std::max<uint32_t>(domains, static_cast<uint32_t>(rows.size())));
  return out;
}

int RunQshape(const GlobalOptions& g, bool deferred, uint32_t top, const std::vector<uint32_t>& buckets, bool json,
              Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::QshapeRequest req;
  req.set_deferred_only(deferred);
  req.set_top(top);
  for (uint32_t b : buckets) req.add_bucket_minutes(b);
  if (shards->size() == 1) {
    return CallAndPrint(OneShard(g, shards->front()), &tern::v1::Admin::Stub::Qshape, req, "qshape", json, io,
                        FormatQshape);
  }
  const uint32_t shown = top == 0 ? 20 : top;
  req.set_top(std::max(shown, kShardQshapeTop));
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::Qshape, req);
  const bool failed = ReportFailedShards(answers, "qshape", io);
  std::vector<const tern::v1::QshapeResponse*> each;
  std::vector<std::string> queues_json;
  for (const auto* a : OkAnswers(answers)) {
    each.push_back(&a->resp);
    tern::v1::QshapeResponse trimmed = a->resp;
    if (static_cast<uint32_t>(trimmed.rows_size()) > shown + 1) {
      trimmed.mutable_rows()->DeleteSubrange(shown + 1, trimmed.rows_size() - shown - 1);
    }
    queues_json.push_back(JsonWithQueue(ToJson(trimmed), a->queue));
  }
  if (each.empty()) {
    return 1;
  }
  const tern::v1::QshapeResponse merged = MergeQshape(each, shown);
  io.out << (json ? JsonWithMember(ToJson(merged), "queues", JsonArray(queues_json)) + "\n" : FormatQshape(merged));
  return failed ? 1 : 0;
}

// Every shard's corrupt records in one table, each with its shard (what
// `corrupt show --shard` takes); --limit applies to the whole table.
int RunCorruptOnShards(const GlobalOptions& g, const std::vector<std::string>& shards,
                       const tern::v1::ListCorruptRequest& req, bool json, Io io) {
  auto answers = AskEveryShard(g, shards, &tern::v1::Admin::Stub::ListCorrupt, req);
  const bool failed = ReportFailedShards(answers, "corrupt", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  const size_t limit = req.limit() == 0 ? kDefaultListLimit : req.limit();
  tern::v1::ListCorruptResponse sum;
  std::vector<std::vector<std::string>> rows = {{"QUEUE", "FROM", "KEY", "SIZE"}};
  std::vector<std::string> items;
  for (const auto* a : ok) {
    sum.set_total(sum.total() + a->resp.total());
    for (const auto& r : a->resp.records()) {
      if (items.size() < limit) {
        rows.push_back({a->queue, r.column_family(), r.key(), absl::StrCat(r.size())});
        items.push_back(JsonWithQueue(ToJson(r), a->queue));
      }
    }
  }
  if (json) {
    io.out << JsonFillArray(ToJson(sum), "records", items) << "\n";
  } else {
    io.out << FormatTable(rows) << sum.total() << " corrupt records kept\n";
  }
  return failed ? 1 : 0;
}

int RunCorrupt(const GlobalOptions& g, uint32_t limit, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::ListCorruptRequest req;
  req.set_limit(limit);
  if (shards->size() > 1) {
    return RunCorruptOnShards(g, *shards, req, json, io);
  }
  const GlobalOptions one = OneShard(g, shards->front());
  tern::v1::ListCorruptResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, one);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(one.queue))->ListCorrupt(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "corrupt", one, io);
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
int WriteCorrupt(const tern::v1::GetCorruptResponse& resp, const std::string& cf, const std::string& key, bool body,
                 const std::string& out_path, Io io) {
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

int RunCorruptShowOnOneQueue(const GlobalOptions& g, const std::string& cf, const std::string& key, bool body,
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
  return WriteCorrupt(resp, cf, key, body, out_path, io);
}

// The shard a command about one corrupt record goes to: the one --shard
// names, or the only one with one shard. Empty without --shard on several.
absl::StatusOr<std::string> RecordShard(const std::vector<std::string>& shards, const std::string& shard) {
  if (!shard.empty()) {
    absl::StatusOr<size_t> i = FindShard(shards, shard);
    if (!i.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--shard: ", i.status().message()));
    }
    return shards[*i];
  }
  return shards.size() == 1 ? shards.front() : std::string();
}

// Asks every shard for the record CF KEY (Admin.GetCorrupt): keys are a
// shard's own, so the one shard that has it is the one meant. Prints why
// there is no such one shard and returns its exit code, or returns 0 with
// `*found` the answer.
int FindCorrupt(const GlobalOptions& g, const std::vector<std::string>& shards, const std::string& cf,
                const std::string& key, absl::string_view what, bool need_all,
                ShardAnswer<tern::v1::GetCorruptResponse>* found, Io io) {
  tern::v1::GetCorruptRequest req;
  req.set_column_family(cf);
  req.set_key(key);
  auto answers = AskEveryShard(g, shards, &tern::v1::Admin::Stub::GetCorrupt, req);
  const bool failed = ReportFailedShards(answers, what, io, grpc::StatusCode::NOT_FOUND);
  const auto holding = OkAnswers(answers);
  if (holding.empty()) {
    if (!failed) {
      return ReportRpcError(answers.front().status, what, g, io);
    }
    if (std::any_of(answers.begin(), answers.end(),
                    [](const auto& a) { return a.status.error_code() == grpc::StatusCode::NOT_FOUND; })) {
      io.err << "ternctl: " << what << ": no corrupt record " << cf << " " << key << " on the shards that answered\n";
    }
    return 1;
  }
  if (holding.size() > 1) {
    std::vector<std::string> names;
    for (const auto* a : holding) {
      names.push_back(a->queue);
    }
    io.err << "ternctl: " << what << ": " << cf << " " << key << " is kept on " << holding.size()
           << " queue shards (" << absl::StrJoin(names, ", ") << "): name one with --shard\n";
    return 2;
  }
  if (failed && need_all) {
    io.err << "ternctl: " << what << ": nothing done: the shards that did not answer may keep " << cf << " " << key
           << " too; name the one meant with --shard " << holding.front()->queue << "\n";
    return 1;
  }
  *found = *holding.front();
  return failed ? 1 : 0;
}

int RunCorruptShow(const GlobalOptions& g, const std::string& cf, const std::string& key, bool body,
                   const std::string& out_path, const std::string& shard, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  absl::StatusOr<std::string> target = RecordShard(*shards, shard);
  if (!target.ok()) {
    io.err << "ternctl: " << target.status().message() << "\n";
    return 2;
  }
  if (!target->empty()) {
    return RunCorruptShowOnOneQueue(OneShard(g, *target), cf, key, body, out_path, io);
  }
  ShardAnswer<tern::v1::GetCorruptResponse> found;
  const int code = FindCorrupt(g, *shards, cf, key, "corrupt show", /*need_all=*/false, &found, io);
  if (found.queue.empty()) {
    return code;
  }
  const int written = WriteCorrupt(found.resp, cf, key, body, out_path, io);
  return written != 0 ? written : code;
}

std::string FormatPurged(const tern::v1::PurgeCorruptResponse& resp) {
  return absl::StrCat("purged ", resp.purged(), " corrupt records and ", resp.bodies_purged(),
                      " bodies they left behind\n");
}

int RunCorruptPurgeOnOneQueue(const GlobalOptions& g, const tern::v1::PurgeCorruptRequest& req, bool json, Io io) {
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
    io.out << FormatPurged(resp);
  }
  return 0;
}

int RunCorruptPurge(const GlobalOptions& g, const std::string& cf, const std::string& key, bool all,
                    const std::string& shard, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  absl::StatusOr<std::string> target = RecordShard(*shards, shard);
  if (!target.ok()) {
    io.err << "ternctl: " << target.status().message() << "\n";
    return 2;
  }
  tern::v1::PurgeCorruptRequest req;
  req.set_column_family(cf);
  req.set_key(key);
  req.set_all(all);
  if (!target->empty()) {
    return RunCorruptPurgeOnOneQueue(OneShard(g, *target), req, json, io);
  }
  if (!all && !cf.empty() && !key.empty()) {
    // One record: purged where it is kept, and only if that is one shard.
    ShardAnswer<tern::v1::GetCorruptResponse> found;
    const int code = FindCorrupt(g, *shards, cf, key, "corrupt purge", /*need_all=*/true, &found, io);
    if (found.queue.empty() || code != 0) {
      return code;
    }
    auto purged = AskEveryShard(g, {found.queue}, &tern::v1::Admin::Stub::PurgeCorrupt, req);
    const auto& a = purged.front();
    if (!a.status.ok()) {
      return ReportShardError(a.status, "corrupt purge", a.queue, io);
    }
    io.out << (json ? JsonWithQueue(ToJson(a.resp), a.queue) + "\n"
                    : absl::StrCat("queue ", a.queue, ": ", FormatPurged(a.resp)));
    return 0;
  }
  // --all (or a request the queue refuses, alike on every shard).
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::PurgeCorrupt, req);
  const bool failed = ReportFailedShards(answers, "corrupt purge", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  tern::v1::PurgeCorruptResponse sum;
  std::vector<std::string> queues_json;
  std::string each;
  for (const auto* a : ok) {
    sum.set_purged(sum.purged() + a->resp.purged());
    sum.set_bodies_purged(sum.bodies_purged() + a->resp.bodies_purged());
    queues_json.push_back(JsonWithQueue(ToJson(a->resp), a->queue));
    absl::StrAppend(&each, "  queue ", a->queue, ": ", FormatPurged(a->resp));
  }
  io.out << (json ? JsonWithMember(ToJson(sum), "queues", JsonArray(queues_json)) + "\n" : FormatPurged(sum) + each);
  return failed ? 1 : 0;
}

const std::vector<std::string>& HostsHeader() {
  static const auto* header = new std::vector<std::string>{"HOST", "FLAG", "UNTIL", "LEFT", "REASON"};
  return *header;
}

std::vector<std::string> HostRow(const tern::v1::HostFlag& f, int64_t now) {
  // A cleared flag is listed until it would have expired, so deliverers
  // learn of the clearing; it is no longer in force.
  return {f.host(), f.flag(), f.cleared() ? "-" : FormatTime(f.expires_unix_ms()),
          f.cleared() ? "cleared" : FormatAge(f.expires_unix_ms() - now), Truncate(f.reason(), 100)};
}

// The facts deliverers share about remote hosts (Queue.GetHostFlags):
// "broken_tls" addresses reached in plain text, "unreachable" ones that get
// no session until the flag expires. Each shard keeps the flags reported to
// it: with several, one table with the shard of each.
int RunHosts(const GlobalOptions& g, const std::string& flag, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::GetHostFlagsRequest req;
  req.set_flag(flag);
  auto answers = AskShards<tern::v1::Queue, tern::v1::GetHostFlagsResponse>(
      *shards, [&](tern::v1::Queue::Stub& stub, tern::v1::GetHostFlagsResponse& resp, size_t) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, g);
        return stub.GetHostFlags(&ctx, req, &resp);
      });
  const int64_t now = absl::ToUnixMillis(absl::Now());
  if (shards->size() == 1) {
    const auto& a = answers.front();
    if (!a.status.ok()) {
      return ReportRpcError(a.status, "hosts", OneShard(g, a.queue), io);
    }
    if (json) {
      io.out << ToJson(a.resp);
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {HostsHeader()};
    for (const auto& f : a.resp.flags()) {
      rows.push_back(HostRow(f, now));
    }
    io.out << FormatTable(rows) << a.resp.flags_size() << " host flags\n";
    return 0;
  }
  const bool failed = ReportFailedShards(answers, "hosts", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  std::vector<std::vector<std::string>> rows = {{"QUEUE"}};
  rows[0].insert(rows[0].end(), HostsHeader().begin(), HostsHeader().end());
  std::vector<std::string> items;
  for (const auto* a : ok) {
    for (const auto& f : a->resp.flags()) {
      std::vector<std::string> row = {a->queue};
      std::vector<std::string> rest = HostRow(f, now);
      row.insert(row.end(), rest.begin(), rest.end());
      rows.push_back(std::move(row));
      items.push_back(JsonWithQueue(ToJson(f), a->queue));
    }
  }
  if (json) {
    io.out << JsonFillArray(ToJson(tern::v1::GetHostFlagsResponse()), "flags", items) << "\n";
  } else {
    io.out << FormatTable(rows) << items.size() << " host flags\n";
  }
  return failed ? 1 : 0;
}

std::string FormatCleared(const tern::v1::HostFlag& f) {
  return absl::StrCat("cleared ", f.flag(), " on ", f.host(), " (was until ", FormatTime(f.expires_unix_ms()),
                      "); deliverers drop it within their host_flags_refresh\n");
}

// Ends a host's flags early (Admin.ClearHostFlags): the operator fixed the
// MX, or knows better. Exit 1 when the host had no flag in force. With
// several shards, on every shard: each keeps its own.
int RunClearHost(const GlobalOptions& g, const std::string& host, const std::string& flag, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::ClearHostFlagsRequest req;
  req.set_host(host);
  req.set_flag(flag);
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::ClearHostFlags, req);
  if (shards->size() == 1) {
    const auto& a = answers.front();
    if (!a.status.ok()) {
      return ReportRpcError(a.status, "hosts clear", OneShard(g, a.queue), io);
    }
    if (json) {
      io.out << ToJson(a.resp);
    } else {
      for (const auto& f : a.resp.cleared()) {
        io.out << FormatCleared(f);
      }
    }
    if (a.resp.cleared().empty()) {
      io.err << "ternctl: " << host << " has no " << (flag.empty() ? "host flag" : flag) << " in force\n";
      return 1;
    }
    return 0;
  }
  const bool failed = ReportFailedShards(answers, "hosts clear", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  std::vector<std::string> items;
  for (const auto* a : ok) {
    for (const auto& f : a->resp.cleared()) {
      items.push_back(JsonWithQueue(ToJson(f), a->queue));
      if (!json) {
        io.out << "queue " << a->queue << ": " << FormatCleared(f);
      }
    }
  }
  if (json) {
    io.out << JsonFillArray(ToJson(tern::v1::ClearHostFlagsResponse()), "cleared", items) << "\n";
  }
  if (items.empty()) {
    io.err << "ternctl: " << host << " has no " << (flag.empty() ? "host flag" : flag) << " in force"
           << (failed ? " on the shards that answered" : "") << "\n";
    return 1;
  }
  return failed ? 1 : 0;
}

}  // namespace

void AddListCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto list = std::make_shared<ListOptions>();
  CLI::App* l = app.add_subcommand("list", "List queued messages (filters combine with AND)");
  AddSelectorOptions(l, &list->sel, /*with_all=*/false);
  l->add_option("--limit", list->limit, "Messages per page (at most 10000)")->capture_default_str();
  l->add_option("--cursor", list->cursor,
                "Continue after this message id (printed at the end of a page; ID@QUEUE with several shards)");
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
    std::string shard;
  };
  auto show = std::make_shared<CorruptArgs>();
  CLI::App* cshow = cc->add_subcommand("show", "Write one record's raw bytes (or its message's body) out");
  cshow->add_option("cf", show->cf, "Column family, as `ternctl corrupt` lists it (FROM)")->required();
  cshow->add_option("key", show->key, "Key, as `ternctl corrupt` lists it")->required();
  cshow->add_flag("--body", show->body, "The body a quarantined messages record left behind, to send it again");
  cshow->add_option("--out", show->out, "Write to this file instead of stdout");
  cshow->add_option("--shard", show->shard, "The queue shard that keeps it (QUEUE in `ternctl corrupt`)");
  cshow->callback([&globals, io, &exit_code, show] {
    exit_code = RunCorruptShow(globals, show->cf, show->key, show->body, show->out, show->shard, io);
  });
  auto purge = std::make_shared<CorruptArgs>();
  CLI::App* cpurge = cc->add_subcommand("purge", "Delete one record (or --all) and any body it left behind");
  cpurge->add_option("cf", purge->cf, "Column family, as `ternctl corrupt` lists it (FROM)");
  cpurge->add_option("key", purge->key, "Key, as `ternctl corrupt` lists it");
  cpurge->add_flag("--all", purge->all, "Every corrupt record");
  cpurge->add_flag("--json", purge->json, "Print the Admin.PurgeCorrupt answer as JSON");
  cpurge->add_option("--shard", purge->shard, "Only on this queue shard (QUEUE in `ternctl corrupt`)");
  cpurge->callback([&globals, io, &exit_code, purge] {
    exit_code = RunCorruptPurge(globals, purge->cf, purge->key, purge->all, purge->shard, purge->json, io);
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
