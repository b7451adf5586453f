// File: haraka_plugins.h
//
// Haraka's `config/plugins` list, read by a Tern service started on a Haraka
// config directory to say at startup which of the plugins it does the work
// of itself and which it does not run at all. Tern runs no JavaScript: a
// plugin it has no equivalent for (spamassassin, dnsbl, ...) would
// otherwise be dropped without a word, and mail Haraka refused or changed
// would go through as it is. Its work can be done by a Hooks server
// (README, "Hooks").
//
// Thread-safety: pure functions.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"

namespace tern::config {

struct HarakaPlugins {
  // Listed plugins whose work Tern does from the same config files (relay,
  // tls, auth/flat_file, dkim, queue/smtp_forward, ...), as listed.
  std::vector<std::string> handled;
  // Listed plugins Tern does not run, as listed.
  std::vector<std::string> not_run;
};

// Sorts the plugins `lines` names (the file's lines without comments).
HarakaPlugins ClassifyHarakaPlugins(const std::vector<std::string>& lines);

// Reads `plugins` from `dir` (none: both lists empty).
absl::StatusOr<HarakaPlugins> ReadHarakaPlugins(const ConfigDir& dir);

// Whether `plugins` in `dir` lists one of `names` (as written there), i.e.
// whether Haraka would use that plugin's config file. No file: false.
absl::StatusOr<bool> HarakaPluginListed(const ConfigDir& dir, std::initializer_list<absl::string_view> names);

}  // namespace tern::config
