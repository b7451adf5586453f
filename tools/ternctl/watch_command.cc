// ternctl watch: the queue's event log as a live stream (Admin.Watch). Each
// line starts with the event's sequence number, the cursor to resume from
// with --from after an interruption.
#include <grpcpp/client_context.h>

#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

struct WatchOptions {
  int64_t from = -1;
  bool oldest = false;
  bool no_follow = false;
  bool json = false;
};

int RunWatch(const GlobalOptions& g, const WatchOptions& o, Io io) {
  tern::v1::WatchRequest req;
  if (o.from >= 0) {
    req.set_after_seq(static_cast<uint64_t>(o.from));
  }
  req.set_from_oldest(o.oldest);
  req.set_no_follow(o.no_follow);
  grpc::ClientContext ctx;
  if (o.no_follow) {
    SetDeadline(ctx, g);  // a bounded dump; a followed stream has no deadline
  }
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue));
  auto reader = stub->Watch(&ctx, req);
  tern::v1::QueueEvent ev;
  bool first = true;
  while (reader->Read(&ev)) {
    if (first && o.from >= 0 && ev.seq() > static_cast<uint64_t>(o.from) + 1) {
      io.err << "ternctl: events " << o.from + 1 << ".." << ev.seq() - 1
             << " are no longer kept (event_retention); continuing from " << ev.seq() << "\n";
    }
    first = false;
    if (o.json) {
      io.out << ToJson(ev);
    } else {
      io.out << ev.seq() << "  " << FormatTime(ev.at_unix_ms()) << "  " << ev.type() << "  "
             << (ev.message_id().empty() ? "-" : ev.message_id()) << "  " << (ev.job_id().empty() ? "-" : ev.job_id())
             << "  " << (ev.recipients().empty() ? "-" : absl::StrJoin(ev.recipients(), ",")) << "  " << ev.detail()
             << "\n";
    }
    io.out.flush();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) {
    return ReportRpcError(s, "watch", g, io);
  }
  return 0;
}

}  // namespace

void AddWatchCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto o = std::make_shared<WatchOptions>();
  CLI::App* w = app.add_subcommand("watch", "Stream queue events (resumable: --from SEQ)");
  w->add_option("--from", o->from, "Resume after this event sequence number (the first column)");
  w->add_flag("--oldest", o->oldest, "Start at the oldest event kept");
  w->add_flag("--no-follow", o->no_follow, "Stop after the events already stored");
  w->add_flag("--json", o->json, "One JSON object per event");
  w->callback([&globals, io, &exit_code, o] { exit_code = RunWatch(globals, *o, io); });
}

}  // namespace tern::ternctl
