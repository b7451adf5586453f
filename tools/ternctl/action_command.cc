// ternctl flush | hold | release | delete | bounce | pause | resume: the
// queue's admin actions (Admin.Flush ... Admin.Resume).
//
// delete and bounce print how many messages match and do nothing when more
// than one matches unless --yes is given (the queue enforces this too).
// What delete removes is kept for the queue's delete_undo_window (unless
// --purge): delete prints the undo token, `deleted` lists what is kept and
// `undelete` puts it back (Admin.Undelete, Admin.ListDeleted).
//
// With several queue shards every command goes to every shard: an action
// acts wherever what it selects is kept, and prints the totals and each
// shard's part (RunActionOnShards; the formats are in README.md).
#include <grpcpp/client_context.h>

#include <algorithm>
#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

struct ActionOptions {
  SelectorOptions sel;
  bool yes = false;
  bool purge = false;
  std::string reason;
  bool json = false;
};

using Method = grpc::Status (tern::v1::Admin::Stub::*)(grpc::ClientContext*, const tern::v1::ActionRequest&,
                                                      tern::v1::ActionResponse*);

// The queue refuses an action that selects nothing without --all.
bool SelectsNothing(const tern::v1::Selector& sel) {
  return sel.message_ids().empty() && sel.domain().empty() && sel.sender().empty() && sel.recipient().empty() &&
         sel.state().empty() && sel.older_than_ms() == 0 && sel.younger_than_ms() == 0 && !sel.all();
}

int PrintAction(const std::string& name, const tern::v1::ActionResponse& resp, bool json, Io io) {
  if (json) {
    io.out << ToJson(resp);
    return resp.needs_confirmation() ? 1 : 0;
  }
  io.out << resp.matched() << (resp.matched() == 1 ? " message matches" : " messages match") << "\n";
  if (resp.needs_confirmation()) {
    io.err << "ternctl: nothing done: " << name << " of " << resp.matched()
           << " messages needs --yes (check them with `ternctl list` and the same filters)\n";
    return 1;
  }
  io.out << name << ": " << resp.deliveries_changed()
         << (resp.deliveries_changed() == 1 ? " delivery changed" : " deliveries changed") << "\n";
  if (!resp.undo_token().empty()) {
    io.out << "undo until " << FormatTime(resp.undo_until_unix_ms())
           << ": ternctl undelete --token " << resp.undo_token() << "\n";
  }
  return 0;
}

// An action on every shard. Each shard applies it to what it holds (an id
// is acted on where it exists); the totals are printed, then each shard's
// part: "  queue A: 2 messages, 3 deliveries changed" (and a delete's undo
// token: undo tokens are per shard, and undelete asks every shard).
//
// delete and bounce of more than one message need --yes across the whole
// queue, not per shard: without --yes each shard first counts (Admin.List,
// two at most) what matches; when that is more than one in all, nothing is
// done and shards with several matches are asked for their count with the
// action itself, which the queue then refuses (a shard whose count fell to
// one meanwhile acts on that one, as one queue would). A shard that cannot
// count stops the action: it might hold more.
int RunActionOnShards(const GlobalOptions& g, const std::vector<std::string>& shards, const std::string& name,
                      Method method, bool destructive, const tern::v1::ActionRequest& req, bool json, Io io) {
  std::vector<ShardAnswer<tern::v1::ActionResponse>> answers;
  bool needs_yes = false;
  if (destructive && !req.confirm() && !SelectsNothing(req.selector())) {
    tern::v1::ListRequest count;
    *count.mutable_selector() = req.selector();
    count.set_limit(2);
    auto counts = AskEveryShard(g, shards, &tern::v1::Admin::Stub::List, count);
    if (ReportFailedShards(counts, name, io)) {
      if (!OkAnswers(counts).empty()) {
        io.err << "ternctl: nothing done: without --yes, " << name
               << " needs every shard's count of the messages that match\n";
      }
      return 1;
    }
    int matched = 0;
    for (const auto& c : counts) {
      matched += c.resp.messages_size();
    }
    needs_yes = matched > 1;
    if (needs_yes) {
      answers = AskShards<tern::v1::Admin, tern::v1::ActionResponse>(
          shards, [&](tern::v1::Admin::Stub& stub, tern::v1::ActionResponse& resp, size_t i) {
            const tern::v1::ListResponse& c = counts[i].resp;
            if (c.messages_size() < 2) {
              resp.set_matched(c.messages_size());
              for (const auto& m : c.messages()) {
                resp.add_message_ids(m.message_id());
              }
              return grpc::Status::OK;
            }
            grpc::ClientContext ctx;
            SetDeadline(ctx, g);
            return (stub.*method)(&ctx, req, &resp);
          });
    }
  }
  if (!needs_yes) {
    answers = AskEveryShard(g, shards, method, req);
  }
  const bool failed = ReportFailedShards(answers, name, io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  tern::v1::ActionResponse sum;
  sum.set_needs_confirmation(needs_yes);
  std::vector<std::string> queues_json;
  std::string each;
  for (const auto* a : ok) {
    const tern::v1::ActionResponse& r = a->resp;
    sum.set_matched(sum.matched() + r.matched());
    sum.set_deliveries_changed(sum.deliveries_changed() + r.deliveries_changed());
    for (const std::string& id : r.message_ids()) {
      if (sum.message_ids_size() < 100) {
        sum.add_message_ids(id);
      }
    }
    queues_json.push_back(JsonWithQueue(ToJson(r), a->queue));
    absl::StrAppend(&each, "  queue ", a->queue, ": ", r.matched(), r.matched() == 1 ? " message" : " messages");
    if (!needs_yes || r.deliveries_changed() > 0) {
      absl::StrAppend(&each, ", ", r.deliveries_changed(),
                      r.deliveries_changed() == 1 ? " delivery changed" : " deliveries changed");
    }
    if (!r.undo_token().empty()) {
      absl::StrAppend(&each, "; undo until ", FormatTime(r.undo_until_unix_ms()), ": ternctl undelete --token ",
                      r.undo_token());
    }
    absl::StrAppend(&each, "\n");
  }
  if (json) {
    io.out << JsonWithMember(ToJson(sum), "queues", JsonArray(queues_json)) << "\n";
    return needs_yes || failed ? 1 : 0;
  }
  io.out << sum.matched() << (sum.matched() == 1 ? " message matches" : " messages match") << "\n";
  if (needs_yes) {
    io.out << each;
    io.err << "ternctl: nothing done: " << name << " of " << sum.matched()
           << " messages needs --yes (check them with `ternctl list` and the same filters)\n";
    return 1;
  }
  io.out << name << ": " << sum.deliveries_changed()
         << (sum.deliveries_changed() == 1 ? " delivery changed" : " deliveries changed") << "\n"
         << each;
  return failed ? 1 : 0;
}

int RunAction(const GlobalOptions& g, const std::string& name, Method method, bool destructive,
              const ActionOptions& o, Io io) {
  auto sel = BuildSelector(o.sel);
  if (!sel.ok()) {
    io.err << "ternctl: " << sel.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::ActionRequest req;
  *req.mutable_selector() = *sel;
  req.set_confirm(o.yes);
  req.set_reason(o.reason);
  req.set_purge(o.purge);
  if (shards->size() > 1) {
    return RunActionOnShards(g, *shards, name, method, destructive, req, o.json, io);
  }
  const GlobalOptions one = OneShard(g, shards->front());
  tern::v1::ActionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, one);
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(one.queue));
  grpc::Status s = ((*stub).*method)(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, name, one, io);
  }
  return PrintAction(name, resp, o.json, io);
}

std::string FormatUndeleted(const tern::v1::UndeleteResponse& resp) {
  std::string out = absl::StrCat(
      "undelete: ", resp.restored(), resp.restored() == 1 ? " message" : " messages", " back, ",
      resp.deliveries_restored(), resp.deliveries_restored() == 1 ? " delivery" : " deliveries", " and ",
      resp.bounces_restored(), resp.bounces_restored() == 1 ? " DSN job" : " DSN jobs", "\n");
  if (resp.ambiguous() > 0) {
    absl::StrAppend(&out, resp.ambiguous(),
                    " of them were being sent when deleted: ambiguous (the queue's ambiguous_policy"
                    " applies; `ternctl list --state held` shows any it held)\n");
  }
  return out;
}

int ReportNotRestorable(const tern::v1::UndeleteResponse& resp, Io io) {
  if (resp.not_restorable() > 0) {
    io.err << "ternctl: " << resp.not_restorable()
           << " could not be put back: the message and its body are gone (see `ternctl deleted`)\n";
    return 1;
  }
  return 0;
}

// Undelete on every shard: a token is one shard's, message ids may be on
// any. A shard with nothing that matches (NOT_FOUND) is not an error unless
// no shard has anything.
int RunUndeleteOnShards(const GlobalOptions& g, const std::vector<std::string>& shards,
                        const tern::v1::UndeleteRequest& req, bool json, Io io) {
  auto answers = AskEveryShard(g, shards, &tern::v1::Admin::Stub::Undelete, req);
  const bool failed = ReportFailedShards(answers, "undelete", io, grpc::StatusCode::NOT_FOUND);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return failed ? 1 : ReportRpcError(answers.front().status, "undelete", g, io);
  }
  tern::v1::UndeleteResponse sum;
  std::vector<std::string> queues_json;
  std::string each;
  for (const auto& a : answers) {
    if (!a.status.ok()) {
      if (Answered(a, grpc::StatusCode::NOT_FOUND)) {
        absl::StrAppend(&each, "  queue ", a.queue, ": nothing deleted matches\n");
      }
      continue;
    }
    const tern::v1::UndeleteResponse& r = a.resp;
    sum.set_restored(sum.restored() + r.restored());
    sum.set_deliveries_restored(sum.deliveries_restored() + r.deliveries_restored());
    sum.set_bounces_restored(sum.bounces_restored() + r.bounces_restored());
    sum.set_ambiguous(sum.ambiguous() + r.ambiguous());
    sum.set_not_restorable(sum.not_restorable() + r.not_restorable());
    for (const std::string& id : r.message_ids()) {
      if (sum.message_ids_size() < 100) {
        sum.add_message_ids(id);
      }
    }
    queues_json.push_back(JsonWithQueue(ToJson(r), a.queue));
    absl::StrAppend(&each, "  queue ", a.queue, ": ", r.restored(), r.restored() == 1 ? " message" : " messages",
                    " back", r.not_restorable() > 0 ? absl::StrCat(", ", r.not_restorable(), " not") : "", "\n");
  }
  if (json) {
    io.out << JsonWithMember(ToJson(sum), "queues", JsonArray(queues_json)) << "\n";
    return sum.not_restorable() > 0 || failed ? 1 : 0;
  }
  io.out << FormatUndeleted(sum) << each;
  return ReportNotRestorable(sum, io) != 0 || failed ? 1 : 0;
}

int RunUndelete(const GlobalOptions& g, const std::string& token, const std::vector<std::string>& ids, bool json,
                Io io) {
  if (token.empty() && ids.empty()) {
    io.err << "ternctl: undelete needs --token TOKEN (printed by delete) or message ids (`ternctl deleted`)\n";
    return 2;
  }
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::UndeleteRequest req;
  req.set_token(token);
  for (const std::string& id : ids) {
    req.add_message_ids(id);
  }
  if (shards->size() > 1) {
    return RunUndeleteOnShards(g, *shards, req, json, io);
  }
  const GlobalOptions one = OneShard(g, shards->front());
  tern::v1::UndeleteResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, one);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(one.queue))->Undelete(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "undelete", one, io);
  }
  if (json) {
    io.out << ToJson(resp);
    return resp.not_restorable() > 0 ? 1 : 0;
  }
  io.out << FormatUndeleted(resp);
  return ReportNotRestorable(resp, io);
}

const std::vector<std::string>& DeletedHeader() {
  static const auto* header =
      new std::vector<std::string>{"TOKEN", "MESSAGE", "DELETED", "UNDO UNTIL", "FROM", "RECIPIENTS", "REASON"};
  return *header;
}

std::vector<std::string> DeletedRow(const tern::v1::DeletedEntry& e) {
  std::string rcpts = absl::StrJoin(e.recipients(), ",");
  if (e.bounces() > 0) {
    absl::StrAppend(&rcpts, rcpts.empty() ? "" : " ", "+", e.bounces(), e.bounces() == 1 ? " DSN job" : " DSN jobs");
  }
  return {e.token(), e.message_id() + (e.whole_message() ? "" : " (part)"), FormatTime(e.deleted_unix_ms()),
          FormatTime(e.purge_at_unix_ms()), Truncate(e.mail_from().empty() ? "<>" : e.mail_from(), 40),
          Truncate(rcpts, 60), Truncate(e.reason(), 30)};
}

std::string FormatDeleted(const tern::v1::ListDeletedResponse& resp) {
  std::vector<std::vector<std::string>> rows = {DeletedHeader()};
  for (const auto& e : resp.entries()) {
    rows.push_back(DeletedRow(e));
  }
  return absl::StrCat(FormatTable(rows), resp.total(), " deleted, can be put back with `ternctl undelete`\n");
}

// Every shard's deletes in one table, oldest first, each with its shard;
// --limit applies to the whole table.
int RunDeletedOnShards(const GlobalOptions& g, const std::vector<std::string>& shards,
                       const tern::v1::ListDeletedRequest& req, bool json, Io io) {
  auto answers = AskEveryShard(g, shards, &tern::v1::Admin::Stub::ListDeleted, req);
  const bool failed = ReportFailedShards(answers, "deleted", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  struct Entry {
    const tern::v1::DeletedEntry* e;
    const std::string* queue;
  };
  std::vector<Entry> entries;
  tern::v1::ListDeletedResponse sum;
  for (const auto* a : ok) {
    sum.set_total(sum.total() + a->resp.total());
    for (const auto& e : a->resp.entries()) {
      entries.push_back({&e, &a->queue});
    }
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.e->deleted_unix_ms() < b.e->deleted_unix_ms();
  });
  const size_t limit = req.limit() == 0 ? 100 : req.limit();
  if (entries.size() > limit) {
    entries.resize(limit);
  }
  if (json) {
    std::vector<std::string> items;
    for (const Entry& e : entries) {
      items.push_back(JsonWithQueue(ToJson(*e.e), *e.queue));
    }
    io.out << JsonFillArray(ToJson(sum), "entries", items) << "\n";
    return failed ? 1 : 0;
  }
  std::vector<std::vector<std::string>> rows = {{"QUEUE"}};
  rows[0].insert(rows[0].end(), DeletedHeader().begin(), DeletedHeader().end());
  for (const Entry& e : entries) {
    std::vector<std::string> row = {*e.queue};
    std::vector<std::string> rest = DeletedRow(*e.e);
    row.insert(row.end(), rest.begin(), rest.end());
    rows.push_back(std::move(row));
  }
  io.out << FormatTable(rows) << sum.total() << " deleted, can be put back with `ternctl undelete`\n";
  return failed ? 1 : 0;
}

int RunDeleted(const GlobalOptions& g, const std::string& token, uint32_t limit, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  tern::v1::ListDeletedRequest req;
  req.set_token(token);
  req.set_limit(limit);
  if (shards->size() > 1) {
    return RunDeletedOnShards(g, *shards, req, json, io);
  }
  return CallAndPrint(OneShard(g, shards->front()), &tern::v1::Admin::Stub::ListDeleted, req, "deleted", json, io,
                      FormatDeleted);
}

const char* PauseText(const tern::v1::PauseResponse& resp) {
  return resp.paused() ? "delivery paused (mail is still accepted; `ternctl resume` ends it)\n"
                       : "delivery running\n";
}

// Pause and resume are each shard's own: with several, every shard's answer
// on a line of its own, "queue A: delivery paused (...)".
int RunPause(const GlobalOptions& g, bool pause, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  auto answers = AskShards<tern::v1::Admin, tern::v1::PauseResponse>(
      *shards, [&](tern::v1::Admin::Stub& stub, tern::v1::PauseResponse& resp, size_t) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, g);
        return pause ? stub.Pause(&ctx, tern::v1::PauseRequest(), &resp)
                     : stub.Resume(&ctx, tern::v1::PauseRequest(), &resp);
      });
  if (shards->size() == 1) {
    const auto& a = answers.front();
    if (!a.status.ok()) {
      return ReportRpcError(a.status, pause ? "pause" : "resume", OneShard(g, a.queue), io);
    }
    io.out << PauseText(a.resp);
    return 0;
  }
  const bool failed = ReportFailedShards(answers, pause ? "pause" : "resume", io);
  for (const auto* a : OkAnswers(answers)) {
    io.out << "queue " << a->queue << ": " << PauseText(a->resp);
  }
  return failed ? 1 : 0;
}

}  // namespace

void AddActionCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  struct Spec {
    const char* name;
    const char* help;
    Method method;
    bool destructive;
  };
  static const Spec kSpecs[] = {
      {"flush", "Make waiting deliveries due now (no selector: --all)", &tern::v1::Admin::Stub::Flush, false},
      {"hold", "Hold deliveries: never leased until released", &tern::v1::Admin::Stub::Hold, false},
      {"release", "Release held deliveries: due now", &tern::v1::Admin::Stub::Release, false},
      {"delete", "Drop messages silently (no DSN)", &tern::v1::Admin::Stub::Delete, true},
      {"bounce", "Fail pending recipients with 5.0.0 and send DSNs", &tern::v1::Admin::Stub::Bounce, true},
  };
  for (const Spec& spec : kSpecs) {
    auto o = std::make_shared<ActionOptions>();
    CLI::App* c = app.add_subcommand(spec.name, spec.help);
    AddSelectorOptions(c, &o->sel, /*with_all=*/true);
    if (spec.destructive) {
      c->add_flag("--yes,-y", o->yes, "Go ahead when more than one message matches");
    }
    if (std::string(spec.name) == "delete") {
      c->add_flag("--purge", o->purge, "Final at once: no undo window (frees the disk now)");
    }
    c->add_option("--reason", o->reason, "Recorded in the event log (and, for bounce, in the DSN)");
    c->add_flag("--json", o->json, "Print the answer as JSON");
    const std::string name = spec.name;
    const Method method = spec.method;
    const bool destructive = spec.destructive;
    c->callback([&globals, io, &exit_code, o, name, method, destructive] {
      exit_code = RunAction(globals, name, method, destructive, *o, io);
    });
  }
  auto utoken = std::make_shared<std::string>();
  auto uids = std::make_shared<std::vector<std::string>>();
  auto ujson = std::make_shared<bool>(false);
  CLI::App* undelete = app.add_subcommand("undelete", "Put back what a delete removed, while its undo window lasts");
  undelete->add_option("--token", *utoken, "Everything one delete removed (the token it printed)");
  undelete->add_option("ids", *uids, "Or what any delete removed of these messages");
  undelete->add_flag("--json", *ujson, "Print the answer as JSON");
  undelete->callback([&globals, io, &exit_code, utoken, uids, ujson] {
    exit_code = RunUndelete(globals, *utoken, *uids, *ujson, io);
  });
  auto dtoken = std::make_shared<std::string>();
  auto dlimit = std::make_shared<uint32_t>(100);
  auto djson = std::make_shared<bool>(false);
  CLI::App* deleted = app.add_subcommand("deleted", "Deleted messages that undelete can still put back");
  deleted->add_option("--token", *dtoken, "Only one delete's");
  deleted->add_option("--limit", *dlimit, "Most rows to show")->capture_default_str();
  deleted->add_flag("--json", *djson, "Print the answer as JSON");
  deleted->callback([&globals, io, &exit_code, dtoken, dlimit, djson] {
    exit_code = RunDeleted(globals, *dtoken, *dlimit, *djson, io);
  });
  CLI::App* pause = app.add_subcommand("pause", "Pause leasing deliveries (overrides outbound.ini disabled)");
  pause->callback([&globals, io, &exit_code] { exit_code = RunPause(globals, true, io); });
  CLI::App* resume = app.add_subcommand("resume", "Resume leasing deliveries");
  resume->callback([&globals, io, &exit_code] { exit_code = RunPause(globals, false, io); });
}

}  // namespace tern::ternctl
