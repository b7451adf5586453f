#include "lib/config/queue_targets.h"

#include <cstdint>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace tern::config {
namespace {

bool HasSpaceOrControl(absl::string_view text) {
  for (char c : text) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) || absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return true;
    }
  }
  return false;
}

// A target with one of the schemes gRPC's resolvers take ("unix:/path",
// "dns:///host:port"). Only these: an unknown word before a colon is far
// more likely a host with a bad port ("queue:0") than a scheme.
bool IsSchemeTarget(absl::string_view text) {
  for (absl::string_view scheme : {"unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:"}) {
    if (absl::StartsWith(text, scheme)) {
      return text.size() > scheme.size() && !HasSpaceOrControl(text);
    }
  }
  return false;
}

}  // namespace

bool IsHostPort(absl::string_view text, bool allow_zero) {
  size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return false;
  }
  absl::string_view host = text.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') {
    return false;
  }
  if (HasSpaceOrControl(host)) {
    return false;
  }
  uint32_t port = 0;
  absl::string_view port_text = text.substr(colon + 1);
  if (port_text.empty() || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return false;
  }
  return allow_zero || port != 0;
}

absl::StatusOr<std::vector<std::string>> ParseQueueTargets(absl::string_view value) {
  std::vector<std::string> targets;
  absl::flat_hash_set<std::string> seen;
  if (absl::StripAsciiWhitespace(value).empty()) {
    return absl::InvalidArgumentError("no queue address");
  }
  size_t index = 0;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    ++index;
    absl::string_view target = absl::StripAsciiWhitespace(part);
    if (target.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("entry ", index, " is empty"));
    }
    if (!IsHostPort(target, /*allow_zero=*/false) && !IsSchemeTarget(target)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", target, "\" is not host:port, [v6]:port or a gRPC target such as unix:/path"));
    }
    if (!seen.insert(std::string(target)).second) {
      return absl::InvalidArgumentError(absl::StrCat("\"", target, "\" is listed twice"));
    }
    if (targets.size() == kMaxQueueShards) {
      return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxQueueShards, " queue shards"));
    }
    targets.emplace_back(target);
  }
  return targets;
}

absl::Status CheckQueueTargets(const std::vector<std::string>& targets) {
  absl::StatusOr<std::vector<std::string>> parsed = ParseQueueTargets(JoinQueueTargets(targets));
  if (!parsed.ok()) {
    return parsed.status();
  }
  if (*parsed != targets) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", JoinQueueTargets(targets), "\" has an entry with spaces or commas around it"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadQueueTargets(const IniFile& ini, absl::string_view section,
                                                          absl::string_view def) {
  std::vector<std::string> parts;
  size_t plain_items = 0;  // how many of GetList's items the plain line gave
  if (std::optional<std::string> plain = ini.Get(section, "queue")) {
    // Kept whole, so that ParseQueueTargets still sees (and refuses) an
    // empty entry, which GetList would drop.
    parts.push_back(*plain);
    const std::vector<absl::string_view> pieces = absl::StrSplit(*plain, ',', absl::SkipWhitespace());
    plain_items = pieces.size();
  }
  std::vector<std::string> items = ini.GetList(section, "queue");
  for (size_t i = plain_items; i < items.size(); ++i) {
    parts.push_back(items[i]);
  }
  if (parts.empty()) {
    return ParseQueueTargets(def);
  }
  return ParseQueueTargets(absl::StrJoin(parts, ","));
}

std::string JoinQueueTargets(const std::vector<std::string>& targets) { return absl::StrJoin(targets, ","); }

}  // namespace tern::config
