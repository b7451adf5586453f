#include "services/queue/queue_config.h"

#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"

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
  if (core.lease_seconds < 1 || core.lease_seconds > core.max_lease_seconds) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini: [queue] lease_seconds: ", core.lease_seconds,
                                                   " is not in [1, max_lease_seconds]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<QueueConfig> LoadQueueConfig(const config::ConfigDir& dir,
                                            const std::optional<std::string>& data_dir) {
  QueueConfig out;
  TERN_ASSIGN_OR_RETURN(config::IniFile tern, dir.Ini("tern.ini"));
  out.listen = tern.GetString("queue", "listen", out.listen);
  out.metrics_listen = tern.GetString("queue", "metrics_listen", out.metrics_listen);
  out.core.data_dir = data_dir.has_value() ? *data_dir : tern.GetString("queue", "data_dir", out.core.data_dir);
  TERN_ASSIGN_OR_RETURN(out.core.lease_seconds, tern.GetInt("queue", "lease_seconds", out.core.lease_seconds));
  TERN_ASSIGN_OR_RETURN(out.core.max_lease_seconds,
                        tern.GetInt("queue", "max_lease_seconds", out.core.max_lease_seconds));
  TERN_ASSIGN_OR_RETURN(int64_t body_bytes, tern.GetInt("queue", "max_lease_body_bytes",
                                                        static_cast<int64_t>(out.core.max_lease_body_bytes)));
  if (body_bytes < 1) {
    return tern.KeyError("queue", "max_lease_body_bytes", absl::StrCat("'", body_bytes, "' must be at least 1"));
  }
  out.core.max_lease_body_bytes = static_cast<uint64_t>(body_bytes);

  TERN_ASSIGN_OR_RETURN(config::IniFile outbound, dir.Ini("outbound.ini"));
  TERN_ASSIGN_OR_RETURN(out.core.disabled, outbound.GetBool("main", "disabled", false));
  TERN_ASSIGN_OR_RETURN(out.core.always_split, outbound.GetBool("main", "always_split", false));
  TERN_ASSIGN_OR_RETURN(out.core.retry, RetrySchedule::FromOutboundIni(outbound));
  TERN_RETURN_IF_ERROR(out.Validate());
  return out;
}

absl::StatusOr<bool> LoadDisabled(const config::ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(config::IniFile outbound, dir.Ini("outbound.ini"));
  return outbound.GetBool("main", "disabled", false);
}

}  // namespace tern::queue
