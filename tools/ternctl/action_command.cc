// ternctl flush | hold | release | delete | bounce | pause | resume: the
// queue's admin actions (Admin.Flush ... Admin.Resume).
//
// delete and bounce print how many messages match and do nothing when more
// than one matches unless --yes is given (the queue enforces this too).
// What delete removes is kept for the queue's delete_undo_window (unless
// --purge): delete prints the undo token, `deleted` lists what is kept and
// `undelete` puts it back (Admin.Undelete, Admin.ListDeleted).
#include <grpcpp/client_context.h>

#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"

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

int RunAction(const GlobalOptions& g, const std::string& name, Method method, const ActionOptions& o, Io io) {
  auto sel = BuildSelector(o.sel);
  if (!sel.ok()) {
    io.err << "ternctl: " << sel.status().message() << "\n";
    return 2;
  }
  tern::v1::ActionRequest req;
  *req.mutable_selector() = *sel;
  req.set_confirm(o.yes);
  req.set_reason(o.reason);
  req.set_purge(o.purge);
  tern::v1::ActionResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue));
  grpc::Status s = ((*stub).*method)(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, name, g, io);
  }
  if (o.json) {
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

int RunUndelete(const GlobalOptions& g, const std::string& token, const std::vector<std::string>& ids, bool json,
                Io io) {
  if (token.empty() && ids.empty()) {
    io.err << "ternctl: undelete needs --token TOKEN (printed by delete) or message ids (`ternctl deleted`)\n";
    return 2;
  }
  tern::v1::UndeleteRequest req;
  req.set_token(token);
  for (const std::string& id : ids) {
    req.add_message_ids(id);
  }
  tern::v1::UndeleteResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue))->Undelete(&ctx, req, &resp);
  if (!s.ok()) {
    return ReportRpcError(s, "undelete", g, io);
  }
  if (json) {
    io.out << ToJson(resp);
    return resp.not_restorable() > 0 ? 1 : 0;
  }
  io.out << "undelete: " << resp.restored() << (resp.restored() == 1 ? " message" : " messages") << " back, "
         << resp.deliveries_restored() << (resp.deliveries_restored() == 1 ? " delivery" : " deliveries") << " and "
         << resp.bounces_restored() << (resp.bounces_restored() == 1 ? " DSN job" : " DSN jobs") << "\n";
  if (resp.ambiguous() > 0) {
    io.out << resp.ambiguous() << " of them were being sent when deleted: ambiguous (the queue's ambiguous_policy"
           << " applies; `ternctl list --state held` shows any it held)\n";
  }
  if (resp.not_restorable() > 0) {
    io.err << "ternctl: " << resp.not_restorable()
           << " could not be put back: the message and its body are gone (see `ternctl deleted`)\n";
    return 1;
  }
  return 0;
}

std::string FormatDeleted(const tern::v1::ListDeletedResponse& resp) {
  std::vector<std::vector<std::string>> rows = {{"TOKEN", "MESSAGE", "DELETED", "UNDO UNTIL", "FROM", "RECIPIENTS",
                                                 "REASON"}};
  for (const auto& e : resp.entries()) {
    std::string rcpts = absl::StrJoin(e.recipients(), ",");
    if (e.bounces() > 0) {
      absl::StrAppend(&rcpts, rcpts.empty() ? "" : " ", "+", e.bounces(), e.bounces() == 1 ? " DSN job" : " DSN jobs");
    }
    rows.push_back({e.token(), e.message_id() + (e.whole_message() ? "" : " (part)"), FormatTime(e.deleted_unix_ms()),
                    FormatTime(e.purge_at_unix_ms()), Truncate(e.mail_from().empty() ? "<>" : e.mail_from(), 40),
                    Truncate(rcpts, 60), Truncate(e.reason(), 30)});
  }
  return absl::StrCat(FormatTable(rows), resp.total(), " deleted, can be put back with `ternctl undelete`\n");
}

int RunDeleted(const GlobalOptions& g, const std::string& token, uint32_t limit, bool json, Io io) {
  tern::v1::ListDeletedRequest req;
  req.set_token(token);
  req.set_limit(limit);
  return CallAndPrint(g, &tern::v1::Admin::Stub::ListDeleted, req, "deleted", json, io, FormatDeleted);
}

int RunPause(const GlobalOptions& g, bool pause, Io io) {
  tern::v1::PauseResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue));
  grpc::Status s = pause ? stub->Pause(&ctx, tern::v1::PauseRequest(), &resp)
                         : stub->Resume(&ctx, tern::v1::PauseRequest(), &resp);
  if (!s.ok()) {
    return ReportRpcError(s, pause ? "pause" : "resume", g, io);
  }
  io.out << (resp.paused() ? "delivery paused (mail is still accepted; `ternctl resume` ends it)\n"
                           : "delivery running\n");
  return 0;
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
    c->callback([&globals, io, &exit_code, o, name, method] {
      exit_code = RunAction(globals, name, method, *o, io);
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
