// ternctl watch: the queue's event log as a live stream (Admin.Watch). Each
// line starts with the event's sequence number, the cursor to resume from
// with --from after an interruption.
//
// With several queue shards every shard's stream is followed at once and
// the lines are interleaved as they come (with --no-follow: all of them, in
// time order). Sequence numbers are per shard, so each line starts with
// SEQ@QUEUE and --from takes one SEQ@QUEUE per shard (queue_shards.h).
#include <grpcpp/client_context.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <ostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

struct WatchOptions {
  std::string from;  // SEQ, or SEQ@QUEUE,... with several shards
  bool oldest = false;
  bool no_follow = false;
  bool json = false;
};

// `cursor` is the sequence number, or SEQ@QUEUE.
std::string EventLine(const tern::v1::QueueEvent& ev, absl::string_view cursor) {
  return absl::StrCat(cursor, "  ", FormatTime(ev.at_unix_ms()), "  ", ev.type(), "  ",
                      ev.message_id().empty() ? "-" : ev.message_id(), "  ", ev.job_id().empty() ? "-" : ev.job_id(),
                      "  ", ev.recipients().empty() ? "-" : absl::StrJoin(ev.recipients(), ","), "  ", ev.detail(),
                      "\n");
}

tern::v1::WatchRequest MakeRequest(std::optional<uint64_t> from, const WatchOptions& o) {
  tern::v1::WatchRequest req;
  if (from.has_value()) {
    req.set_after_seq(*from);
  }
  req.set_from_oldest(o.oldest);
  req.set_no_follow(o.no_follow);
  return req;
}

int RunWatchOnOneQueue(const GlobalOptions& g, std::optional<uint64_t> from, const WatchOptions& o, Io io) {
  tern::v1::WatchRequest req = MakeRequest(from, o);
  grpc::ClientContext ctx;
  if (o.no_follow) {
    SetDeadline(ctx, g);  // a bounded dump; a followed stream has no deadline
  }
  auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(g.queue));
  auto reader = stub->Watch(&ctx, req);
  tern::v1::QueueEvent ev;
  bool first = true;
  while (reader->Read(&ev)) {
    if (first && from.has_value() && ev.seq() > *from + 1) {
      io.err << "ternctl: events " << *from + 1 << ".." << ev.seq() - 1
             << " are no longer kept (event_retention); continuing from " << ev.seq() << "\n";
    }
    first = false;
    io.out << (o.json ? ToJson(ev) : EventLine(ev, absl::StrCat(ev.seq())));
    io.out.flush();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) {
    return ReportRpcError(s, "watch", g, io);
  }
  return 0;
}

// One thread per shard reads its stream. Followed, each event is printed
// when it arrives (under `mu`, which keeps lines whole); with --no-follow
// every shard's stored events are gathered and printed in time order.
int RunWatchOnShards(const GlobalOptions& g, const std::vector<std::string>& shards,
                     const std::vector<std::optional<uint64_t>>& from, const WatchOptions& o, Io io) {
  std::mutex mu;
  struct Gathered {
    tern::v1::QueueEvent ev;
    size_t shard;
  };
  std::vector<Gathered> gathered;
  std::vector<bool> failed(shards.size(), false);
  auto print = [&](const tern::v1::QueueEvent& ev, size_t i) {
    io.out << (o.json ? JsonWithQueue(ToJson(ev), shards[i]) + "\n"
                      : EventLine(ev, absl::StrCat(ev.seq(), "@", shards[i])));
  };
  auto follow = [&](size_t i) {
    grpc::ClientContext ctx;
    if (o.no_follow) {
      SetDeadline(ctx, g);
    }
    auto stub = tern::v1::Admin::NewStub(rpc::MakeChannel(shards[i]));
    auto reader = stub->Watch(&ctx, MakeRequest(from[i], o));
    tern::v1::QueueEvent ev;
    bool first = true;
    while (reader->Read(&ev)) {
      std::lock_guard<std::mutex> lock(mu);
      if (first && from[i].has_value() && ev.seq() > *from[i] + 1) {
        io.err << "ternctl: events " << *from[i] + 1 << ".." << ev.seq() - 1 << " of the queue at " << shards[i]
               << " are no longer kept (event_retention); continuing from " << ev.seq() << "\n";
      }
      first = false;
      if (o.no_follow) {
        gathered.push_back({ev, i});
      } else {
        print(ev, i);
        io.out.flush();
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      ReportShardError(s, "watch", shards[i], io);
      failed[i] = true;
    }
  };
  std::vector<std::thread> threads;
  for (size_t i = 0; i < shards.size(); ++i) {
    threads.emplace_back(follow, i);
  }
  for (std::thread& t : threads) {
    t.join();
  }
  std::stable_sort(gathered.begin(), gathered.end(), [](const Gathered& a, const Gathered& b) {
    return a.ev.at_unix_ms() != b.ev.at_unix_ms() ? a.ev.at_unix_ms() < b.ev.at_unix_ms() : a.shard < b.shard;
  });
  for (const Gathered& e : gathered) {
    print(e.ev, e.shard);
  }
  return std::find(failed.begin(), failed.end(), true) != failed.end() ? 1 : 0;
}

int RunWatch(const GlobalOptions& g, const WatchOptions& o, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  absl::StatusOr<std::vector<std::optional<uint64_t>>> from = ParseWatchFrom(o.from, *shards);
  if (!from.ok()) {
    io.err << "ternctl: " << from.status().message() << "\n";
    return 2;
  }
  if (shards->size() == 1) {
    return RunWatchOnOneQueue(OneShard(g, shards->front()), from->front(), o, io);
  }
  return RunWatchOnShards(g, *shards, *from, o, io);
}

}  // namespace

void AddWatchCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto o = std::make_shared<WatchOptions>();
  CLI::App* w = app.add_subcommand("watch", "Stream queue events (resumable: --from SEQ)");
  w->add_option("--from", o->from,
                "Resume after this event sequence number (the first column; with several shards "
                "SEQ@QUEUE,... one per shard)");
  w->add_flag("--oldest", o->oldest, "Start at the oldest event kept");
  w->add_flag("--no-follow", o->no_follow, "Stop after the events already stored");
  w->add_flag("--json", o->json, "One JSON object per event");
  w->callback([&globals, io, &exit_code, o] { exit_code = RunWatch(globals, *o, io); });
}

}  // namespace tern::ternctl
