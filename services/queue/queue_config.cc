#include "services/queue/queue_config.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/address/mailbox.h"
#include "lib/common/status_macros.h"
#include "lib/config/config_watcher.h"
#include "lib/config/outbound_ini.h"

namespace tern::queue {

absl::Status QueueConfig::Validate() const {
  if (listen.empty()) {
    return absl::InvalidArgumentError("tern.ini: [queue] listen: must not be empty");
  }
  if (core.data_dir.empty()) {
    return absl::InvalidArgumentError("tern.ini: [queue] data_dir: must not be empty");
  }
  if (core.max_lease_seconds < 1 || core.max_lease_seconds > 7 * 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("tern.ini: [queue] max_lease_seconds: ", core.max_lease_seconds, " is not in [1, 604800]"));
  }
  if (core.recovery_lease_grace_seconds < 0 || core.recovery_lease_grace_seconds > 3600) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini: [queue] recovery_lease_grace: ",
                                                   core.recovery_lease_grace_seconds, " is not in [0, 3600]"));
  }
  if (core.idempotency_retention_ms != 0 && core.idempotency_retention_ms < core.max_lease_seconds * 1000) {
    // The bouncer retries a DSN's Enqueue (same key) when its bounce lease
    // runs out; a key gone by then would send the DSN twice.
    return absl::InvalidArgumentError(
        absl::StrCat("tern.ini: [queue] idempotency_retention: ", core.idempotency_retention_ms / 1000,
                     " s is shorter than max_lease_seconds (", core.max_lease_seconds, " s); use 0 to keep forever"));
  }
  if (core.lease_seconds < 1 || core.lease_seconds > core.max_lease_seconds) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini: [queue] lease_seconds: ", core.lease_seconds,
                                                   " is not in [1, max_lease_seconds]"));
  }
  const TlsRptOptions& tlsrpt = core.tlsrpt;
  if (tlsrpt.enabled) {
    if (tlsrpt.from.empty()) {
      return absl::InvalidArgumentError(
          "tern.ini: [tlsrpt] from: required with enabled=true (the address TLS reports are sent from, "
          "e.g. from=tlsrpt@mail.example.com)");
    }
    if (absl::StatusOr<address::Mailbox> m = address::ParseMailbox(tlsrpt.from, /*smtputf8=*/false);
        !m.ok() || m->is_address_literal()) {
      return absl::InvalidArgumentError(absl::StrCat("tern.ini: [tlsrpt] from: '", tlsrpt.from,
                                                     "' is not an address like tlsrpt@mail.example.com"));
    }
    if (!address::IsValidDomain(tlsrpt.submitter, /*smtputf8=*/false)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tern.ini: [tlsrpt] submitter: '", tlsrpt.submitter, "' is not a domain name"));
    }
    if (tlsrpt.organization.empty() || tlsrpt.contact.empty()) {
      return absl::InvalidArgumentError("tern.ini: [tlsrpt] organization and contact must not be empty");
    }
    // RFC 8460 §5.3: TLS-Report-Submitter must be the domain of the
    // contact-info address (a contact that is a URI has none to compare).
    if (absl::StatusOr<address::Mailbox> c = address::ParseMailbox(tlsrpt.contact, /*smtputf8=*/false);
        c.ok() && !absl::EqualsIgnoreCase(c->domain, tlsrpt.submitter)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tern.ini: [tlsrpt] contact: the domain of '", tlsrpt.contact, "' is not the submitter '",
                       tlsrpt.submitter, "' (RFC 8460 §5.3: TLS-Report-Submitter must match contact-info)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text) {
  std::string t(absl::StripAsciiWhitespace(text));
  absl::AsciiStrToLower(&t);
  int64_t unit = 1000;
  if (!t.empty() && !absl::ascii_isdigit(static_cast<unsigned char>(t.back()))) {
    switch (t.back()) {
      case 's':
        unit = 1000;
        break;
      case 'm':
        unit = 60 * 1000;
        break;
      case 'h':
        unit = 3600 * 1000;
        break;
      case 'd':
        unit = 86400 * 1000;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a duration (use s, m, h or d)"));
    }
    t.pop_back();
  }
  int64_t n = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &n) || n < 0 || n > INT64_MAX / unit) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a duration like 30s, 90m, 4h or 5d"));
  }
  return n * unit;
}

absl::StatusOr<QueueConfig> LoadQueueConfig(const config::ConfigDir& dir,
                                            const std::optional<std::string>& data_dir) {
  QueueConfig out;
  TERN_ASSIGN_OR_RETURN(config::IniFile tern, dir.Ini("tern.ini"));
  out.listen = tern.GetString("queue", "listen", out.listen);
  out.metrics_listen = tern.GetString("queue", "metrics_listen", out.metrics_listen);
  out.core.data_dir = data_dir.has_value() ? *data_dir : tern.GetString("queue", "data_dir", out.core.data_dir);
  TERN_ASSIGN_OR_RETURN(out.core.lease_seconds, tern.GetInt("queue", "lease_seconds", out.core.lease_seconds));
  {
    TERN_ASSIGN_OR_RETURN(int64_t min_free, tern.GetInt("queue", "min_free_bytes",
                                                        static_cast<int64_t>(out.core.min_free_bytes)));
    if (min_free < 0) {
      return tern.KeyError("queue", "min_free_bytes", "must not be negative");
    }
    out.core.min_free_bytes = static_cast<uint64_t>(min_free);
  }
  {
    TERN_ASSIGN_OR_RETURN(int64_t prefill, tern.GetInt("queue", "wal_prefill_bytes",
                                                       static_cast<int64_t>(out.core.wal_prefill_bytes)));
    if (prefill < 0) {
      return tern.KeyError("queue", "wal_prefill_bytes", "must not be negative");
    }
    out.core.wal_prefill_bytes = static_cast<uint64_t>(prefill);
  }
  TERN_ASSIGN_OR_RETURN(out.core.recovery_lease_grace_seconds,
                        tern.GetInt("queue", "recovery_lease_grace", out.core.recovery_lease_grace_seconds));
  TERN_ASSIGN_OR_RETURN(out.core.max_lease_seconds,
                        tern.GetInt("queue", "max_lease_seconds", out.core.max_lease_seconds));
  TERN_ASSIGN_OR_RETURN(int64_t body_bytes, tern.GetInt("queue", "max_lease_body_bytes",
                                                        static_cast<int64_t>(out.core.max_lease_body_bytes)));
  if (body_bytes < 1) {
    return tern.KeyError("queue", "max_lease_body_bytes", absl::StrCat("'", body_bytes, "' must be at least 1"));
  }
  out.core.max_lease_body_bytes = static_cast<uint64_t>(body_bytes);
  {
    TERN_ASSIGN_OR_RETURN(int64_t limit, tern.GetInt("queue", "destination_concurrency_max", 0));
    if (limit < 0 || limit > 1000000) {
      return tern.KeyError("queue", "destination_concurrency_max",
                           absl::StrCat("'", limit, "' is not in [0, 1000000] (0 = no limit)"));
    }
    // shaping.ini refines it per domain and adds rates; missing = none.
    TERN_ASSIGN_OR_RETURN(config::IniFile shaping, dir.Ini("shaping.ini"));
    TERN_ASSIGN_OR_RETURN(out.core.shaping, DestinationShaping::Load(shaping, static_cast<uint32_t>(limit)));
  }

  const std::string policy = absl::AsciiStrToLower(tern.GetString("queue", "ambiguous_policy", "redeliver"));
  if (policy == "redeliver") {
    out.core.ambiguous_policy = AmbiguousPolicy::kRedeliver;
  } else if (policy == "hold") {
    out.core.ambiguous_policy = AmbiguousPolicy::kHold;
  } else {
    return tern.KeyError("queue", "ambiguous_policy", absl::StrCat("'", policy, "' is not redeliver or hold"));
  }
  auto duration = [&tern](const char* key, const char* def) -> absl::StatusOr<int64_t> {
    auto ms = ParseDurationMs(tern.GetString("queue", key, def));
    if (!ms.ok()) {
      return tern.KeyError("queue", key, ms.status().message());
    }
    return *ms;
  };
  TERN_ASSIGN_OR_RETURN(out.core.max_queue_age_ms, duration("max_queue_age", "0"));
  TERN_ASSIGN_OR_RETURN(out.core.event_retention_ms, duration("event_retention", "24h"));
  TERN_ASSIGN_OR_RETURN(out.core.idempotency_retention_ms, duration("idempotency_retention", "7d"));
  TERN_ASSIGN_OR_RETURN(out.core.delete_undo_window_ms, duration("delete_undo_window", "1h"));
  TERN_ASSIGN_OR_RETURN(int64_t count, tern.GetInt("queue", "event_retention_count", 1000000));
  if (count < 0) {
    return tern.KeyError("queue", "event_retention_count", "must not be negative");
  }
  out.core.event_retention_count = static_cast<uint64_t>(count);
  TERN_ASSIGN_OR_RETURN(out.config_watch, config::ConfigWatchInterval(tern, "queue"));
  for (const std::string& item : tern.GetList("queue", "delay_warning")) {
    if (absl::StripAsciiWhitespace(item).empty()) {
      continue;
    }
    auto ms = ParseDurationMs(item);
    if (!ms.ok()) {
      return tern.KeyError("queue", "delay_warning", ms.status().message());
    }
    if (*ms <= 0) {
      return tern.KeyError("queue", "delay_warning", absl::StrCat("'", item, "' must be more than 0"));
    }
    out.core.delay_warning_ms.push_back(*ms);
  }
  std::sort(out.core.delay_warning_ms.begin(), out.core.delay_warning_ms.end());
  out.core.delay_warning_ms.erase(std::unique(out.core.delay_warning_ms.begin(), out.core.delay_warning_ms.end()),
                                  out.core.delay_warning_ms.end());

  {
    TlsRptOptions& t = out.core.tlsrpt;
    TERN_ASSIGN_OR_RETURN(t.enabled, tern.GetBool("tlsrpt", "enabled", t.enabled));
    t.from = std::string(absl::StripAsciiWhitespace(tern.GetString("tlsrpt", "from", "")));
    // The defaults follow `from`; an unusable `from` is Validate()'s to report.
    const size_t at = t.from.rfind('@');
    const std::string from_domain = at == std::string::npos ? "" : absl::AsciiStrToLower(t.from.substr(at + 1));
    // An empty value ("organization=") is the default too.
    auto get = [&tern](const char* key, const std::string& def) {
      std::string v(absl::StripAsciiWhitespace(tern.GetString("tlsrpt", key, "")));
      return v.empty() ? def : v;
    };
    t.organization = get("organization", from_domain);
    t.contact = get("contact", t.from);
    t.submitter = absl::AsciiStrToLower(get("submitter", from_domain));
  }

  TERN_ASSIGN_OR_RETURN(config::IniFile outbound, config::LoadOutboundIni(dir));
  TERN_ASSIGN_OR_RETURN(out.core.disabled, outbound.GetBool("main", "disabled", false));
  TERN_ASSIGN_OR_RETURN(out.core.always_split, outbound.GetBool("main", "always_split", false));
  TERN_ASSIGN_OR_RETURN(out.core.retry, RetrySchedule::FromOutboundIni(outbound));
  TERN_RETURN_IF_ERROR(out.Validate());
  return out;
}

std::vector<std::string> RestartOnlyChanges(const QueueConfig& running, const QueueConfig& loaded) {
  config::RestartOnlySettings changed;
  const CoreOptions& a = running.core;
  const CoreOptions& b = loaded.core;
  changed.Note(running.listen != loaded.listen, "tern.ini [queue] listen");
  changed.Note(a.data_dir != b.data_dir, "tern.ini [queue] data_dir");
  changed.Note(running.metrics_listen != loaded.metrics_listen, "tern.ini [queue] metrics_listen");
  changed.Note(a.wal_prefill_bytes != b.wal_prefill_bytes, "tern.ini [queue] wal_prefill_bytes");
  changed.Note(a.recovery_lease_grace_seconds != b.recovery_lease_grace_seconds,
               "tern.ini [queue] recovery_lease_grace");
  changed.Note(running.config_watch != loaded.config_watch, "tern.ini [queue] config_watch_ms");
  const TlsRptOptions& t = a.tlsrpt;
  const TlsRptOptions& u = b.tlsrpt;
  changed.Note(t.enabled != u.enabled || t.from != u.from || t.organization != u.organization ||
                   t.contact != u.contact || t.submitter != u.submitter,
               "tern.ini [tlsrpt]");
  return std::move(changed.names);
}

std::vector<std::string> QueueConfigPaths(const config::ConfigDir& dir) {
  std::vector<std::string> paths = config::WatchPaths(dir, {"tern.ini", "shaping.ini", "log.ini"});
  for (std::string& path : config::OutboundIniWatchPaths(dir)) {
    paths.push_back(std::move(path));
  }
  return paths;
}

}  // namespace tern::queue
