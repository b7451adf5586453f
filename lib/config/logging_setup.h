// File: logging_setup.h
//
// Reads Haraka's `log.ini` from a config directory and initialises tern::log.
//   [main]
//   level=info       ; Default: info. data, protocol, debug, info, notice, warn, error, crit, alert, emerg
//   format=default   ; Default: default. default, logfmt or json
// An invalid level or format is a startup error naming the file and key.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"

namespace tern::config {

absl::Status InitLogging(const ConfigDir& dir, absl::string_view service);

}  // namespace tern::config
