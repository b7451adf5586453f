// File: admin_client.h
//
// What the ternctl command groups share: a stub for the queue's Admin API
// with ternctl's deadline, one way to report a failed call, proto-to-JSON,
// time and duration formatting, plain-text tables, and the selector options
// (--domain, --sender, ...) that list and the actions take.
//
// Thread-safety: single-threaded CLI helpers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tools/ternctl/command_group.h"

namespace google::protobuf {
class Message;
}
namespace grpc {
class ClientContext;
class Status;
}  // namespace grpc
namespace CLI {
class App;
}
namespace tern::v1 {
class Selector;
}

namespace tern::ternctl {

// Sets the deadline of `ctx` from --timeout.
void SetDeadline(grpc::ClientContext& ctx, const GlobalOptions& globals);

// Prints why `what` failed to io.err (unreachable queue, or the queue's
// answer) and returns the exit code 1.
int ReportRpcError(const grpc::Status& status, absl::string_view what, const GlobalOptions& globals, Io io);
// The same for one of several queue shards: names `shard` in either case.
int ReportShardError(const grpc::Status& status, absl::string_view what, absl::string_view shard, Io io);

// One line of JSON with the proto field names; every field, defaults too.
std::string ToJson(const google::protobuf::Message& msg);

// "2026-11-21T10:00:00Z"; "-" for 0.
std::string FormatTime(int64_t unix_ms);
// A short age/duration: "45s", "12m", "3h05m", "2d04h"; negative as 0s.
std::string FormatAge(int64_t ms);
// "30s", "90m", "4h", "5d" or plain seconds.
absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text);

// Aligned columns separated by two spaces; the last column is not padded.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);

// Cuts `s` to at most `n` characters, marking the cut with "...".
std::string Truncate(absl::string_view s, size_t n);

// The selector flags, filled by CLI11 and turned into a Selector.
struct SelectorOptions {
  std::vector<std::string> ids;
  std::string domain;
  std::string sender;
  std::string recipient;
  std::string state;
  std::string older_than;
  std::string younger_than;
  bool all = false;
};
// Adds --domain, --sender, --recipient, --state, --older-than, --younger-than
// (and, with `with_all`, --all) and positional message ids to `cmd`.
void AddSelectorOptions(CLI::App* cmd, SelectorOptions* opts, bool with_all);
absl::StatusOr<tern::v1::Selector> BuildSelector(const SelectorOptions& opts);

// Adds the list/show/explain/qshape/corrupt/hosts commands (list_command.cc).
void AddListCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);
// Adds flush/hold/release/delete/bounce/pause/resume (action_command.cc).
void AddActionCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);
// Adds watch (watch_command.cc).
void AddWatchCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);
// Adds health (health_command.cc).
void AddHealthCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code);

}  // namespace tern::ternctl
