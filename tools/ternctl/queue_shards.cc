#include "tools/ternctl/queue_shards.h"

#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/common/json_string.h"
#include "lib/config/queue_targets.h"

namespace tern::ternctl {

void AddQueueOption(CLI::App& app, GlobalOptions& globals) {
  app.add_option("--queue", globals.queue,
                 "The queue's gRPC address, HOST:PORT; or its shards' addresses, comma-separated "
                 "(every command then asks every shard)")
      ->capture_default_str()
      ->check(
          [](const std::string& value) -> std::string {
            absl::StatusOr<std::vector<std::string>> shards = config::ParseQueueTargets(value);
            return shards.ok() ? std::string() : std::string(shards.status().message());
          },
          "HOST:PORT[,HOST:PORT...]", "QUEUE_LIST");
}

absl::StatusOr<std::vector<std::string>> QueueShards(const GlobalOptions& globals) {
  return config::ParseQueueTargets(globals.queue);
}

int ReportBadQueue(const absl::Status& status, Io io) {
  io.err << "ternctl: --queue: " << status.message() << "\n";
  return 2;
}

GlobalOptions OneShard(const GlobalOptions& globals, const std::string& shard) {
  GlobalOptions one = globals;
  one.queue = shard;
  return one;
}

std::string ShardHeader(absl::string_view shard) { return absl::StrCat("== queue ", shard, " ==\n"); }

absl::StatusOr<size_t> FindShard(const std::vector<std::string>& shards, absl::string_view name) {
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i] == name) {
      return i;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", name, "\" is not one of the --queue shards (", absl::StrJoin(shards, ", "), ")"));
}

absl::StatusOr<ShardCursor> ParseShardCursor(absl::string_view text, const std::vector<std::string>& shards) {
  ShardCursor cursor;
  const size_t at = text.find('@');
  if (at == absl::string_view::npos) {
    cursor.after_id = std::string(text);
    return cursor;
  }
  cursor.after_id = std::string(text.substr(0, at));
  if (cursor.after_id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--cursor \"", text, "\" has no message id before the @"));
  }
  absl::StatusOr<size_t> shard = FindShard(shards, text.substr(at + 1));
  if (!shard.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--cursor: ", shard.status().message()));
  }
  cursor.shard = *shard;
  return cursor;
}

std::string FormatShardCursor(absl::string_view id, absl::string_view shard) { return absl::StrCat(id, "@", shard); }

std::string IdBefore(absl::string_view id) {
  std::string before(id);
  if (before.empty()) {
    return before;
  }
  // "abc" -> "abb": only "abb" followed by more sorts between the two. A
  // last byte of 0: "ab\0" -> "ab", with nothing between.
  if (static_cast<unsigned char>(before.back()) == 0) {
    before.pop_back();
  } else {
    before.back() = static_cast<char>(static_cast<unsigned char>(before.back()) - 1);
  }
  return before;
}

absl::StatusOr<std::vector<std::optional<uint64_t>>> ParseWatchFrom(absl::string_view text,
                                                                    const std::vector<std::string>& shards) {
  std::vector<std::optional<uint64_t>> from(shards.size());
  if (text.empty()) {
    return from;
  }
  if (shards.size() == 1) {
    int64_t seq = 0;
    if (!absl::SimpleAtoi(text, &seq)) {
      return absl::InvalidArgumentError(absl::StrCat("--from: \"", text, "\" is not an event sequence number"));
    }
    if (seq >= 0) {
      from[0] = static_cast<uint64_t>(seq);
    }
    return from;
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    const size_t at = part.find('@');
    uint64_t seq = 0;
    if (at == absl::string_view::npos || !absl::SimpleAtoi(part.substr(0, at), &seq)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--from: \"", part, "\": event numbers are per queue shard, so with several shards --from "
                       "takes SEQ@QUEUE (what a watch line starts with), comma-separated, one per shard"));
    }
    absl::StatusOr<size_t> shard = FindShard(shards, part.substr(at + 1));
    if (!shard.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--from: ", shard.status().message()));
    }
    if (from[*shard].has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--from names ", shards[*shard], " twice"));
    }
    from[*shard] = seq;
  }
  return from;
}

std::string JsonWithQueue(absl::string_view object, absl::string_view shard) {
  object = absl::StripSuffix(object, "\n");
  std::string out = "{\"queue\":";
  AppendJsonString(out, shard);
  absl::string_view rest = absl::StripPrefix(object, "{");
  if (rest != "}") {
    out += ",";
  }
  absl::StrAppend(&out, rest);
  return out;
}

std::string JsonWithMember(absl::string_view object, absl::string_view name, absl::string_view value) {
  object = absl::StripSuffix(absl::StripSuffix(object, "\n"), "}");
  std::string out(object);
  if (out != "{") {
    out += ",";
  }
  AppendJsonString(out, name);
  absl::StrAppend(&out, ":", value, "}");
  return out;
}

std::string JsonArray(const std::vector<std::string>& items) {
  return absl::StrCat("[", absl::StrJoin(items, ","), "]");
}

std::string JsonFillArray(absl::string_view object, absl::string_view name, const std::vector<std::string>& items) {
  object = absl::StripSuffix(object, "\n");
  std::string key;
  AppendJsonString(key, name);
  absl::StrAppend(&key, ":[]");
  const size_t pos = object.find(key);
  if (pos == absl::string_view::npos) {
    return JsonWithMember(object, name, JsonArray(items));
  }
  return absl::StrCat(object.substr(0, pos + key.size() - 2), JsonArray(items), object.substr(pos + key.size()));
}

}  // namespace tern::ternctl
