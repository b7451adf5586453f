#include "lib/config/haraka_plugins.h"

#include <algorithm>
#include <array>
#include <string_view>

#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"

namespace tern::config {
namespace {

// Plugins whose job Tern does natively, reading the files they read. Each
// is named as Haraka's `plugins` file names it; npm plugins may also be
// written with their "haraka-plugin-" package prefix.
constexpr std::array<std::string_view, 9> kHandled = {
    "relay",                // relay_acl_allow: ingest's relay ACL
    "auth/flat_file",       // auth_flat_file.ini: ingest's AUTH
    "tls",                  // tls.ini, tls/: STARTTLS and SMTPS
    "dkim",                 // haraka-plugin-dkim's dkim.ini: the deliverer signs
    "dkim_sign",            // Haraka 2's dkim_sign.ini: the deliverer signs
    "queue/smtp_forward",   // smtp_forward.ini: the deliverer's routes
    "smtp_forward",
    "max_unrecognized_commands",  // ingest ends a session after repeated errors
    "process_title",        // nothing to do: metrics and ternctl stats say more
};

}  // namespace

HarakaPlugins ClassifyHarakaPlugins(const std::vector<std::string>& lines) {
  HarakaPlugins out;
  for (const std::string& line : lines) {
    const absl::string_view name = absl::StripAsciiWhitespace(line);
    if (name.empty()) {
      continue;
    }
    absl::string_view bare = name;
    absl::ConsumePrefix(&bare, "haraka-plugin-");
    if (std::find(kHandled.begin(), kHandled.end(), std::string_view(bare.data(), bare.size())) != kHandled.end()) {
      out.handled.emplace_back(name);
    } else {
      out.not_run.emplace_back(name);
    }
  }
  return out;
}

absl::StatusOr<HarakaPlugins> ReadHarakaPlugins(const ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> lines, dir.Lines("plugins"));
  return ClassifyHarakaPlugins(lines);
}

absl::StatusOr<bool> HarakaPluginListed(const ConfigDir& dir, std::initializer_list<absl::string_view> names) {
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> lines, dir.Lines("plugins"));
  for (const std::string& line : lines) {
    if (std::find(names.begin(), names.end(), line) != names.end()) {
      return true;
    }
  }
  return false;
}

}  // namespace tern::config
