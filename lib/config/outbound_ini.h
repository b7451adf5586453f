// File: outbound_ini.h
//
// Haraka's outbound.ini as every Tern service reads it: the file, with
// Haraka's legacy one-line files folded in. Before outbound.ini, Haraka read
// its outbound settings from files of their own (`config/outbound.disabled`
// holding `1`, `config/outbound.concurrency_max` holding `500`, ...), and it
// still reads six of them (outbound/config.js, "legacy config file support"),
// so a Haraka config directory carried over from an older install may hold
// its settings there and nowhere else:
//
//   outbound.disabled, outbound.enable_tls         booleans
//   outbound.temp_fail_intervals, outbound.maxTempFailures,
//   outbound.concurrency_max, outbound.received_header
//
// How they combine with outbound.ini, as in Haraka: a legacy file can only
// turn `disabled` and `enable_tls` on (Haraka takes it when outbound.ini's
// value is false, which for these two is also what an unset key reads as);
// the other four are taken from the legacy file only when outbound.ini does
// not set the key, or sets it empty. One difference: Haraka also takes the
// legacy file (or its default of 13) over `maxTempFailures=0`, a value its
// falsy test cannot tell from "unset"; Tern keeps the 0 that outbound.ini
// says.
//
// A legacy file's value is its first line that is not empty or a `#`
// comment, trimmed. A boolean that is none of Haraka's words is an error
// naming the file; so is any later error about a value it gave (IniFile::Set
// records where the value came from), so the operator is sent to the file
// that holds it.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "lib/config/ini_file.h"

namespace tern::config {

// outbound.ini (empty if missing) with the legacy files folded into [main].
absl::StatusOr<IniFile> LoadOutboundIni(const ConfigDir& dir);

// Every place LoadOutboundIni may read from (outbound.ini and the legacy
// files, ConfigDir::CandidatePaths), for a config watcher.
std::vector<std::string> OutboundIniWatchPaths(const ConfigDir& dir);

}  // namespace tern::config
