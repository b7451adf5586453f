// File: queue_shards.h
//
// ternctl across queue shards. Past one machine the queue is sharded
// (ARCHITECTURE.md §8): each shard is a queue service with its own RocksDB
// and Admin API, and message ids are unique per shard only. --queue names
// one queue or a comma-separated list of shards (lib/config/queue_targets.h),
// and every command asks every shard. What the commands share for that and
// can do without gRPC lives here: the shard list, the position a paged
// `list` resumes from on every shard (ShardCursor), where `watch --from`
// resumes each shard's event stream, the shard --shard names, and naming a
// shard in a queue's JSON answer. The calls themselves are in admin_call.h;
// the output formats are described in tools/ternctl/README.md.
//
// With one shard every command prints exactly what it printed before shards
// existed: only with several do shard names, cursors of the form ID@QUEUE
// and "queue" JSON members appear.
//
// Thread-safety: pure functions, except AddQueueOption (CLI set-up).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tools/ternctl/command_group.h"

namespace CLI {
class App;
}

namespace tern::ternctl {

// Adds --queue to `app`, filling globals.queue: one address or a
// comma-separated list of shards; a list ParseQueueTargets refuses is a CLI
// validation error.
void AddQueueOption(CLI::App& app, GlobalOptions& globals);

// globals.queue as a list of shards (one for a single queue), in the order
// given: that order breaks ties between equal message ids in `list`.
absl::StatusOr<std::vector<std::string>> QueueShards(const GlobalOptions& globals);

// Prints a --queue the commands cannot use (only reachable when a caller
// bypasses AddQueueOption, as tests do) and returns the usage exit code 2.
int ReportBadQueue(const absl::Status& status, Io io);

// `globals` aimed at one shard: what the single-queue code paths take.
GlobalOptions OneShard(const GlobalOptions& globals, const std::string& shard);

// "== queue SHARD ==\n": starts one shard's part of a multi-line answer
// (show, explain, tlsrpt send).
std::string ShardHeader(absl::string_view shard);

// The index of `name` in `shards`, or an error naming the shards (--shard).
absl::StatusOr<size_t> FindShard(const std::vector<std::string>& shards, absl::string_view name);

// Where a paged `list` over several shards resumes.
//
// The shards' listings are merged in (message id, shard order) order, ids
// being time-ordered; a page is the first --limit entries of that merge. So
// one point of the merged order says where every shard stands: the last
// entry shown, written as the cursor "ID@QUEUE". A shard at or before QUEUE
// in --queue's order continues after ID; a shard after it continues at ID
// (it may hold the same id: unique per shard only), which Admin.List, whose
// cursor means "after", is asked as "after IdBefore(ID)" with anything below
// ID dropped. A bare ID (a single queue's cursor) continues after ID on every
// shard. Paging needs the same --queue list on every page.
struct ShardCursor {
  std::string after_id;  // empty: from the start
  // Index in the shard list of the shard whose entry was shown last;
  // nullopt: every shard continues after after_id.
  std::optional<size_t> shard;
};

// Parses --cursor against the shard list: "", "ID" or "ID@QUEUE" with QUEUE
// one of `shards`.
absl::StatusOr<ShardCursor> ParseShardCursor(absl::string_view text, const std::vector<std::string>& shards);

// "ID@QUEUE".
std::string FormatShardCursor(absl::string_view id, absl::string_view shard);

// A string that sorts just before `id`, with nothing but longer strings
// (never a message id of the same length) between it and `id`.
std::string IdBefore(absl::string_view id);

// Parses `watch --from` for `shards`. One shard: "SEQ", the number a watch
// line starts with (negative: none, as before). Several: a comma-separated
// list of "SEQ@QUEUE", what a multi-shard watch line starts with; shards not
// named start where they would without --from. The result has one entry per
// shard.
absl::StatusOr<std::vector<std::optional<uint64_t>>> ParseWatchFrom(absl::string_view text,
                                                                    const std::vector<std::string>& shards);

// JSON with shard names. `object` is one JSON object as ToJson writes it; a
// trailing newline is dropped and none is added.
//
// `object` with "queue":"SHARD" as its first member.
std::string JsonWithQueue(absl::string_view object, absl::string_view shard);
// `object` with "name":value (raw JSON) as its last member.
std::string JsonWithMember(absl::string_view object, absl::string_view name, absl::string_view value);
// "[a,b,...]" of raw JSON items.
std::string JsonArray(const std::vector<std::string>& items);
// `object`, whose member "name" is an empty array (ToJson prints an empty
// repeated field as []), with `items` (raw JSON) in that array.
std::string JsonFillArray(absl::string_view object, absl::string_view name, const std::vector<std::string>& items);

}  // namespace tern::ternctl
