#include "tools/ternctl/stats_command.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <ostream>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/common/json_string.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

namespace pb = ::google::protobuf;

struct Label {
  const char* text;
  int indent;
};

// Labels for the fields known when this was written; any other field is
// shown under its own name.
const std::map<std::string, Label>& Labels() {
  static const auto* labels = new std::map<std::string, Label>{
      {"messages", {"messages stored", 0}},
      {"deliveries", {"deliveries pending", 0}},
      {"deliveries_due", {"due now", 1}},
      {"deliveries_leased", {"leased", 1}},
      {"deliveries_deferred", {"deferred", 1}},
      {"deliveries_held", {"held", 1}},
      {"paused", {"delivery paused", 0}},
      {"corrupt_records", {"corrupt records kept", 0}},
      {"ambiguous_total", {"ambiguous", 1}},
      {"bounces", {"bounce jobs pending", 0}},
      {"bounces_leased", {"leased", 1}},
      {"recipients_pending", {"recipients pending", 0}},
      {"oldest_message_unix_ms", {"oldest message", 0}},
      {"enqueued_total", {"enqueued", 1}},
      {"delivered_total", {"delivered", 1}},
      {"deferred_total", {"deferred", 1}},
      {"failed_total", {"failed", 1}},
  };
  return *labels;
}

std::string JsonString(absl::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

// One field's value: numbers as digits, strings and enums quoted (for JSON)
// or bare (for the table).
std::string FieldValue(const pb::Message& msg, const pb::FieldDescriptor* f, bool json) {
  const pb::Reflection* r = msg.GetReflection();
  if (f->is_repeated()) {
    const std::string items = absl::StrCat(r->FieldSize(msg, f), " items");
    return json ? JsonString(items) : items;
  }
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return absl::StrCat(r->GetUInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(r->GetInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(r->GetUInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(r->GetInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return absl::StrCat(r->GetDouble(msg, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return absl::StrCat(r->GetFloat(msg, f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return r->GetBool(msg, f) ? "true" : "false";
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return json ? JsonString(r->GetEnum(msg, f)->name()) : r->GetEnum(msg, f)->name();
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return json ? JsonString(r->GetString(msg, f)) : r->GetString(msg, f);
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return json ? JsonString(r->GetMessage(msg, f).ShortDebugString()) : r->GetMessage(msg, f).ShortDebugString();
  }
  return json ? "null" : "";
}

std::string OldestMessage(int64_t unix_ms, absl::Time now) {
  if (unix_ms <= 0) {
    return "- (queue empty)";
  }
  absl::Time t = absl::FromUnixMillis(unix_ms);
  absl::Duration age = absl::Trunc(now - t, absl::Seconds(1));
  return absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone()), " (",
                      absl::FormatDuration(age < absl::ZeroDuration() ? absl::ZeroDuration() : age), " ago)");
}

}  // namespace

std::string FormatStatsTable(const tern::v1::StatsResponse& stats, absl::Time now) {
  const pb::Descriptor* d = stats.GetDescriptor();
  std::vector<std::pair<std::string, std::string>> rows;
  bool totals_header = false;
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (!totals_header && absl::EndsWith(f->name(), "_total")) {
      rows.emplace_back("since the queue started:", "");
      totals_header = true;
    }
    auto it = Labels().find(f->name());
    std::string label = it == Labels().end() ? f->name() : std::string(it->second.indent * 2, ' ') + it->second.text;
    std::string value = f->name() == "oldest_message_unix_ms"
                            ? OldestMessage(stats.oldest_message_unix_ms(), now)
                            : FieldValue(stats, f, /*json=*/false);
    rows.emplace_back(std::move(label), std::move(value));
  }
  size_t width = 0;
  for (const auto& [label, value] : rows) {
    width = std::max(width, label.size());
  }
  std::string out;
  for (const auto& [label, value] : rows) {
    if (value.empty()) {
      absl::StrAppend(&out, label, "\n");
    } else {
      absl::StrAppend(&out, label, std::string(width - label.size() + 2, ' '), value, "\n");
    }
  }
  return out;
}

std::string FormatStatsJson(const tern::v1::StatsResponse& stats) {
  const pb::Descriptor* d = stats.GetDescriptor();
  std::string out = "{";
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    absl::StrAppend(&out, i ? "," : "", JsonString(f->name()), ":", FieldValue(stats, f, /*json=*/true));
  }
  out += "}\n";
  return out;
}

tern::v1::StatsResponse SumStats(const std::vector<tern::v1::StatsResponse>& shards) {
  tern::v1::StatsResponse sum;
  const pb::Descriptor* d = sum.GetDescriptor();
  const pb::Reflection* r = sum.GetReflection();
  for (const tern::v1::StatsResponse& s : shards) {
    for (int i = 0; i < d->field_count(); ++i) {
      const pb::FieldDescriptor* f = d->field(i);
      if (f->is_repeated()) {
        continue;
      }
      const bool earliest = absl::EndsWith(f->name(), "_unix_ms");
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_UINT64:
          r->SetUInt64(&sum, f, r->GetUInt64(sum, f) + r->GetUInt64(s, f));
          break;
        case pb::FieldDescriptor::CPPTYPE_UINT32:
          r->SetUInt32(&sum, f, r->GetUInt32(sum, f) + r->GetUInt32(s, f));
          break;
        case pb::FieldDescriptor::CPPTYPE_INT32:
          r->SetInt32(&sum, f, r->GetInt32(sum, f) + r->GetInt32(s, f));
          break;
        case pb::FieldDescriptor::CPPTYPE_INT64:
          if (!earliest) {
            r->SetInt64(&sum, f, r->GetInt64(sum, f) + r->GetInt64(s, f));
          } else if (r->GetInt64(s, f) > 0 && (r->GetInt64(sum, f) <= 0 || r->GetInt64(s, f) < r->GetInt64(sum, f))) {
            r->SetInt64(&sum, f, r->GetInt64(s, f));
          }
          break;
        case pb::FieldDescriptor::CPPTYPE_DOUBLE:
          r->SetDouble(&sum, f, r->GetDouble(sum, f) + r->GetDouble(s, f));
          break;
        case pb::FieldDescriptor::CPPTYPE_FLOAT:
          r->SetFloat(&sum, f, r->GetFloat(sum, f) + r->GetFloat(s, f));
          break;
        case pb::FieldDescriptor::CPPTYPE_BOOL:
          r->SetBool(&sum, f, r->GetBool(sum, f) || r->GetBool(s, f));
          break;
        default:  // strings, enums, messages: the first shard's
          if (&s == &shards.front()) {
            if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
              r->SetString(&sum, f, r->GetString(s, f));
            } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
              r->SetEnumValue(&sum, f, r->GetEnumValue(s, f));
            } else if (r->HasField(s, f)) {
              r->MutableMessage(&sum, f)->CopyFrom(r->GetMessage(s, f));
            }
          }
          break;
      }
    }
  }
  return sum;
}

std::string FormatStatsShards(const std::vector<std::pair<std::string, tern::v1::StatsResponse>>& shards,
                              absl::Time now) {
  std::vector<std::vector<std::string>> rows = {
      {"QUEUE", "MESSAGES", "DELIVERIES", "DUE", "LEASED", "DEFERRED", "HELD", "BOUNCES", "CORRUPT", "PAUSED",
       "OLDEST"}};
  for (const auto& [queue, s] : shards) {
    rows.push_back({queue, absl::StrCat(s.messages()), absl::StrCat(s.deliveries()), absl::StrCat(s.deliveries_due()),
                    absl::StrCat(s.deliveries_leased()), absl::StrCat(s.deliveries_deferred()),
                    absl::StrCat(s.deliveries_held()), absl::StrCat(s.bounces()), absl::StrCat(s.corrupt_records()),
                    s.paused() ? "yes" : "no",
                    s.oldest_message_unix_ms() > 0
                        ? FormatAge(absl::ToUnixMillis(now) - s.oldest_message_unix_ms())
                        : "-"});
  }
  return FormatTable(rows);
}

namespace {

// One queue: its answer as it is, errors as they always were.
int RunStatsOnOneQueue(const GlobalOptions& globals, bool json, Io io) {
  std::unique_ptr<tern::v1::Admin::Stub> stub = tern::v1::Admin::NewStub(rpc::MakeChannel(globals.queue));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(globals.timeout_seconds));
  tern::v1::StatsResponse resp;
  grpc::Status status = stub->Stats(&ctx, tern::v1::StatsRequest(), &resp);
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      io.err << "ternctl: cannot reach the queue at " << globals.queue << ": " << status.error_message()
             << " (is tern-queue running? set the address with --queue HOST:PORT)\n";
    } else {
      io.err << "ternctl: stats failed: the queue at " << globals.queue << " answered code "
             << static_cast<int>(status.error_code()) << ": " << status.error_message() << "\n";
    }
    return 1;
  }
  io.out << (json ? FormatStatsJson(resp) : FormatStatsTable(resp, absl::Now()));
  return 0;
}

}  // namespace

int RunStats(const GlobalOptions& globals, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(globals);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  if (shards->size() == 1) {
    return RunStatsOnOneQueue(OneShard(globals, shards->front()), json, io);
  }
  auto answers = AskEveryShard(globals, *shards, &tern::v1::Admin::Stub::Stats, tern::v1::StatsRequest());
  const bool failed = ReportFailedShards(answers, "stats", io);
  std::vector<tern::v1::StatsResponse> each;
  std::vector<std::pair<std::string, tern::v1::StatsResponse>> named;
  std::vector<std::string> queues_json;
  for (const auto* a : OkAnswers(answers)) {
    each.push_back(a->resp);
    named.emplace_back(a->queue, a->resp);
    queues_json.push_back(JsonWithQueue(FormatStatsJson(a->resp), a->queue));
  }
  if (each.empty()) {
    return 1;
  }
  const tern::v1::StatsResponse sum = SumStats(each);
  if (json) {
    io.out << JsonWithMember(FormatStatsJson(sum), "queues", JsonArray(queues_json)) << "\n";
  } else {
    const absl::Time now = absl::Now();
    io.out << FormatStatsTable(sum, now) << "\n" << FormatStatsShards(named, now);
  }
  return failed ? 1 : 0;
}

void AddStatsCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  CLI::App* stats = app.add_subcommand("stats", "Show the queue's counters (Admin.Stats)");
  auto json = std::make_shared<bool>(false);
  stats->add_flag("--json", *json, "Print one JSON object instead of a table");
  stats->callback([&globals, io, &exit_code, json] { exit_code = RunStats(globals, *json, io); });
}

}  // namespace tern::ternctl
