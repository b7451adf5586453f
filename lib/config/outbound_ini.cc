#include "lib/config/outbound_ini.h"

#include <array>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"

namespace tern::config {
namespace {

struct LegacyKey {
  const char* key;
  bool boolean;  // can only turn the setting on
};

constexpr std::array<LegacyKey, 6> kLegacyKeys = {{
    {"disabled", true},
    {"enable_tls", true},
    {"temp_fail_intervals", false},
    {"maxTempFailures", false},
    {"concurrency_max", false},
    {"received_header", false},
}};

}  // namespace

absl::StatusOr<IniFile> LoadOutboundIni(const ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(IniFile ini, dir.Ini("outbound.ini"));
  for (const LegacyKey& legacy : kLegacyKeys) {
    const std::string name = absl::StrCat("outbound.", legacy.key);
    TERN_ASSIGN_OR_RETURN(std::optional<std::string> value, dir.Line(name));
    if (!value.has_value()) {
      continue;
    }
    const std::optional<std::string> current = ini.Get("main", legacy.key);
    if (legacy.boolean) {
      const std::optional<bool> on = ParseBool(*value);
      if (!on.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(dir.PathOf(name), ": '", *value,
                                                       "' is not a boolean (true/false, yes/no, on/off, 1/0)"));
      }
      // outbound.ini's own true stands; so does a value it cannot parse,
      // which its reader then reports against outbound.ini.
      const bool ini_says_true = current.has_value() && ParseBool(*current).value_or(true);
      if (*on && !ini_says_true) {
        ini.Set("main", legacy.key, "true", dir.PathOf(name));
      }
      continue;
    }
    if (!current.has_value() || absl::StripAsciiWhitespace(*current).empty()) {
      ini.Set("main", legacy.key, *value, dir.PathOf(name));
    }
  }
  return ini;
}

std::vector<std::string> OutboundIniWatchPaths(const ConfigDir& dir) {
  std::vector<std::string> paths = dir.CandidatePaths("outbound.ini");
  for (const LegacyKey& legacy : kLegacyKeys) {
    for (std::string& path : dir.CandidatePaths(absl::StrCat("outbound.", legacy.key))) {
      paths.push_back(std::move(path));
    }
  }
  return paths;
}

}  // namespace tern::config
