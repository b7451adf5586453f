#include "lib/hooks/hooks_config.h"

#include <algorithm>
#include <array>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"
#include "lib/config/config_dir.h"
#include "lib/config/ini_file.h"
#include "lib/metrics/metrics.h"

namespace tern::hooks {
namespace {

constexpr std::array<absl::string_view, kHookCount> kNames = {"queue_outbound", "send_email", "get_mx",
                                                             "deferred",       "bounce",     "delivered"};
constexpr uint32_t kAllHooks = (1u << kHookCount) - 1;
constexpr int64_t kMaxTimeoutMs = 600000;

// Haraka's config/plugin_timeout: one line, whole seconds, default 30.
absl::StatusOr<int64_t> PluginTimeoutMs(const config::ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(std::optional<std::string> line, dir.Line("plugin_timeout"));
  if (!line.has_value()) {
    return 30000;
  }
  int64_t seconds = 0;
  if (!absl::SimpleAtoi(*line, &seconds) || seconds < 1 || seconds > kMaxTimeoutMs / 1000) {
    return absl::InvalidArgumentError(absl::StrCat(dir.PathOf("plugin_timeout"), ": '", *line,
                                                   "' is not a number of seconds in [1, 600]"));
  }
  return seconds * 1000;
}

}  // namespace

absl::string_view HookName(Hook hook) { return kNames[static_cast<size_t>(hook)]; }

absl::StatusOr<HooksConfig> LoadHooksConfig(const config::ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini("hooks.ini"));
  for (const std::string& section : ini.Sections()) {
    if (section != "main") {
      return ini.KeyError(section, "", "unknown section (hooks.ini has only [main])");
    }
  }
  for (const std::string& key : ini.Keys("main")) {
    if (key != "address" && key != "hooks" && key != "timeout_ms" && key != "tls" && key != "tls_ca" &&
        key != "tls_server_name") {
      return ini.KeyError("main", key, "unknown key");
    }
  }
  HooksConfig cfg;
  cfg.address = std::string(absl::StripAsciiWhitespace(ini.GetString("main", "address", "")));
  if (ini.Has("main", "hooks")) {
    for (const std::string& item : ini.GetList("main", "hooks")) {
      const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(item));
      if (name.empty()) {
        continue;
      }
      if (name == "*") {
        cfg.enabled = kAllHooks;
        continue;
      }
      bool found = false;
      for (size_t i = 0; i < kNames.size(); ++i) {
        if (kNames[i] == name) {
          cfg.enabled |= 1u << i;
          found = true;
        }
      }
      if (!found) {
        return ini.KeyError("main", "hooks",
                            absl::StrCat("unknown hook '", name,
                                         "' (queue_outbound, send_email, get_mx, deferred, bounce, delivered, *)"));
      }
    }
  } else {
    cfg.enabled = kAllHooks;
  }
  TERN_ASSIGN_OR_RETURN(const int64_t plugin_timeout_ms, PluginTimeoutMs(dir));
  TERN_ASSIGN_OR_RETURN(const int64_t timeout_ms, ini.GetInt("main", "timeout_ms", plugin_timeout_ms));
  if (timeout_ms < 1 || timeout_ms > kMaxTimeoutMs) {
    return ini.KeyError("main", "timeout_ms", absl::StrCat("'", timeout_ms, "' is not in [1, 600000]"));
  }
  cfg.timeout = std::chrono::milliseconds(timeout_ms);
  TERN_ASSIGN_OR_RETURN(cfg.tls, ini.GetBool("main", "tls", false));
  const std::string ca = ini.GetString("main", "tls_ca", "");
  cfg.tls_server_name = ini.GetString("main", "tls_server_name", "");
  if (!cfg.tls && (!ca.empty() || !cfg.tls_server_name.empty())) {
    return ini.KeyError("main", cfg.tls_server_name.empty() ? "tls_ca" : "tls_server_name",
                        "is set but tls=false");
  }
  if (!ca.empty()) {
    TERN_ASSIGN_OR_RETURN(std::optional<std::string> pem, dir.Text(ca));
    if (!pem.has_value()) {
      return ini.KeyError("main", "tls_ca", absl::StrCat("cannot read ", dir.PathOf(ca)));
    }
    cfg.tls_ca_pem = std::move(*pem);
  }
  return cfg;
}

void RecordHookCall(Hook hook, HookResult result) {
  static constexpr std::array<const char*, 3> kResults = {"applied", "continue", "failed"};
  // Registry lookups take a lock; hooks are called per delivery at most, and
  // the counters are cached per (hook, result).
  static std::array<std::array<metrics::Counter*, 3>, kHookCount> counters = [] {
    std::array<std::array<metrics::Counter*, 3>, kHookCount> c{};
    for (size_t h = 0; h < kNames.size(); ++h) {
      for (size_t r = 0; r < kResults.size(); ++r) {
        c[h][r] = &metrics::Registry::Global().GetCounter(
            "tern_hook_calls_total", "Calls of the user's gRPC Hooks service, by hook and what came of them.",
            {{"hook", std::string(kNames[h])}, {"result", kResults[r]}});
      }
    }
    return c;
  }();
  counters[static_cast<size_t>(hook)][static_cast<size_t>(result)]->Inc();
}

void LogHookFailure(Hook hook, absl::string_view id, const absl::Status& status, absl::string_view fallback) {
  RecordHookCall(hook, HookResult::kFailed);
  log::Event(log::Level::kWarn, "hook_failed",
             {{"hook", HookName(hook)}, {"id", id}, {"error", status.ToString()}, {"fallback", fallback}});
}

std::string CleanHookText(absl::string_view text, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  if (out.size() > max_bytes) {
    size_t cut = max_bytes;
    // Back up over UTF-8 continuation bytes so no character is split.
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) {
      --cut;
    }
    out.resize(cut);
  }
  return std::string(absl::StripAsciiWhitespace(out));
}

}  // namespace tern::hooks
