// File: logging_setup.h
//
// Reads Haraka's `log.ini` from a config directory and initialises tern::log.
//   [main]
//   level=info       ; Default: info. data, protocol, debug, info, notice, warn, error, crit, alert, emerg
//   format=default   ; Default: default. default, logfmt or json
// An invalid level or format is a startup error naming the file and key.
//
// A reload (ReloadLogging, which every service calls on SIGHUP and when its
// config watcher sees log.ini change) applies a new level or format at once,
// as Haraka applies an edited log.ini: an operator turns on `debug` to look
// at a problem and back off, without a restart and without losing a session.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"

namespace tern::config {

absl::Status InitLogging(const ConfigDir& dir, absl::string_view service);

// log.ini read again: a changed level or format applies from the next line
// on and is logged (`log_settings_changed`, with the new level and format);
// a file that does not load changes nothing and is logged (`reload_failed`,
// naming the file and key). Nothing is logged when nothing changed.
// True when log.ini loaded (changed or not).
bool ReloadLogging(const ConfigDir& dir, absl::string_view service);

}  // namespace tern::config
