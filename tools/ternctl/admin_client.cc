#include "tools/ternctl/admin_client.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <algorithm>
#include <chrono>
#include <ostream>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "tern/v1/admin.pb.h"

namespace tern::ternctl {

void SetDeadline(grpc::ClientContext& ctx, const GlobalOptions& globals) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(globals.timeout_seconds));
}

namespace {

bool Unreachable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

void ReportUnreachable(const grpc::Status& status, absl::string_view queue, Io io) {
  io.err << "ternctl: cannot reach the queue at " << queue << ": " << status.error_message()
         << " (is tern-queue running? set the address with --queue HOST:PORT)\n";
}

}  // namespace

int ReportRpcError(const grpc::Status& status, absl::string_view what, const GlobalOptions& globals, Io io) {
  if (Unreachable(status)) {
    ReportUnreachable(status, globals.queue, io);
  } else {
    io.err << "ternctl: " << what << " failed: " << status.error_message() << "\n";
  }
  return 1;
}

int ReportShardError(const grpc::Status& status, absl::string_view what, absl::string_view shard, Io io) {
  if (Unreachable(status)) {
    ReportUnreachable(status, shard, io);
  } else {
    io.err << "ternctl: " << what << " failed on the queue at " << shard << ": " << status.error_message() << "\n";
  }
  return 1;
}

std::string ToJson(const google::protobuf::Message& msg) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, options);
  return out + "\n";
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) {
    return "-";
  }
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string FormatAge(int64_t ms) {
  const int64_t s = std::max<int64_t>(ms, 0) / 1000;
  if (s < 60) {
    return absl::StrCat(s, "s");
  }
  if (s < 3600) {
    return absl::StrCat(s / 60, "m");
  }
  if (s < 86400) {
    return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  }
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text) {
  std::string t(absl::StripAsciiWhitespace(text));
  absl::AsciiStrToLower(&t);
  int64_t unit = 1000;
  if (!t.empty() && !absl::ascii_isdigit(static_cast<unsigned char>(t.back()))) {
    const char u = t.back();
    unit = u == 's' ? 1000 : u == 'm' ? 60000 : u == 'h' ? 3600000 : u == 'd' ? 86400000 : 0;
    t.pop_back();
  }
  int64_t n = 0;
  if (unit == 0 || t.empty() || !absl::SimpleAtoi(t, &n) || n < 0 || n > INT64_MAX / unit) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a duration like 30s, 90m, 4h or 5d"));
  }
  return n * unit;
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) {
        width.push_back(0);
      }
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) {
        line.append(width[i] - row[i].size() + 2, ' ');
      }
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string Truncate(absl::string_view s, size_t n) {
  if (s.size() <= n) {
    return std::string(s);
  }
  return absl::StrCat(s.substr(0, n > 3 ? n - 3 : 0), "...");
}

void AddSelectorOptions(CLI::App* cmd, SelectorOptions* opts, bool with_all) {
  cmd->add_option("ids", opts->ids, "Message ids");
  cmd->add_option("--domain", opts->domain, "Recipient domain (also limits an action to those deliveries)");
  cmd->add_option("--sender", opts->sender, "Sender: user@example.com, @example.com, or <> for the null sender");
  cmd->add_option("--recipient", opts->recipient, "Pending recipient: user@example.com or @example.com");
  cmd->add_option("--state", opts->state, "due, deferred, leased, held or ambiguous")
      ->check(CLI::IsMember({"due", "deferred", "leased", "held", "ambiguous"}));
  cmd->add_option("--older-than", opts->older_than, "Arrived more than this long ago (30s, 90m, 4h, 5d)");
  cmd->add_option("--younger-than", opts->younger_than, "Arrived less than this long ago");
  if (with_all) {
    cmd->add_flag("--all", opts->all, "Every message in the queue");
  }
}

absl::StatusOr<tern::v1::Selector> BuildSelector(const SelectorOptions& opts) {
  tern::v1::Selector sel;
  for (const auto& id : opts.ids) {
    sel.add_message_ids(id);
  }
  sel.set_domain(opts.domain);
  sel.set_sender(opts.sender);
  sel.set_recipient(opts.recipient);
  sel.set_state(opts.state);
  if (!opts.older_than.empty()) {
    auto ms = ParseDurationMs(opts.older_than);
    if (!ms.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--older-than: ", ms.status().message()));
    }
    sel.set_older_than_ms(*ms);
  }
  if (!opts.younger_than.empty()) {
    auto ms = ParseDurationMs(opts.younger_than);
    if (!ms.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--younger-than: ", ms.status().message()));
    }
    sel.set_younger_than_ms(*ms);
  }
  sel.set_all(opts.all);
  return sel;
}

}  // namespace tern::ternctl
