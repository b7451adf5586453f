// ternctl flush | hold | release | delete | bounce | pause | resume: the
// queue's admin actions (Admin.Flush ... Admin.Resume).
//
// delete and bounce print how many messages match and do nothing when more
// than one matches unless --yes is given (the queue enforces this too).
#include <grpcpp/client_context.h>

#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

struct ActionOptions {
  SelectorOptions sel;
  bool yes = false;
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
  return 0;
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
    c->add_option("--reason", o->reason, "Recorded in the event log (and, for bounce, in the DSN)");
    c->add_flag("--json", o->json, "Print the answer as JSON");
    const std::string name = spec.name;
    const Method method = spec.method;
    c->callback([&globals, io, &exit_code, o, name, method] {
      exit_code = RunAction(globals, name, method, *o, io);
    });
  }
  CLI::App* pause = app.add_subcommand("pause", "Pause leasing deliveries (overrides outbound.ini disabled)");
  pause->callback([&globals, io, &exit_code] { exit_code = RunPause(globals, true, io); });
  CLI::App* resume = app.add_subcommand("resume", "Resume leasing deliveries");
  resume->callback([&globals, io, &exit_code] { exit_code = RunPause(globals, false, io); });
}

}  // namespace tern::ternctl
