// File: command_group.h
//
// What every ternctl command group shares: the global options and the
// signature a group uses to add its subcommands. Each group lives in its own
// file (stats_command.cc, ...) and is added to the app in main.cc, so a new
// group is one new file plus one line there.
//
// A command's callback stores its process exit code in `exit_code`: 0 on
// success, 1 when the queue is unreachable or refuses the request.
//
// Thread-safety: single-threaded CLI.
#pragma once

#include <iosfwd>
#include <string>

namespace CLI {
class App;
}

namespace tern::ternctl {

struct GlobalOptions {
  // The queue's gRPC API (Queue + Admin): one address, or the shards of a
  // sharded queue comma-separated (queue_shards.h). Default: 127.0.0.1:7070,
  // the default of tern.ini [queue] listen.
  std::string queue = "127.0.0.1:7070";
  // How long any one call may take before ternctl gives up.
  int timeout_seconds = 5;
};

// Where commands write: tests pass string streams.
struct Io {
  std::ostream& out;
  std::ostream& err;
};

// Adds the `stats` subcommand (queue counters from Admin.Stats).
void AddStatsCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
