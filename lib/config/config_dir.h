// File: config_dir.h
//
// A Haraka-style config directory (Haraka's `config/`): INI files, one-line
// files such as `me`, list files with one entry per line, and text templates.
// Every service reads what it needs from the same directory; a missing file
// means "use the defaults", a present but broken file is an error that names it.
//
// The path may be a colon-separated list of directories ("/etc/tern-site:/etc/tern"):
// each file is taken from the first directory that has it, so a deployment can
// override a few files (tern.ini, smtp.ini) and share the rest.
//
// Thread-safety: immutable; safe to share.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/config/ini_file.h"

namespace tern::config {

class ConfigDir {
 public:
  explicit ConfigDir(std::string path);

  const std::string& path() const { return path_; }
  // The file `name` in the first directory that has it, or in the first
  // directory when none has it. An absolute `name` is returned as it is (a
  // setting that names a file outside the config directory).
  std::string PathOf(absl::string_view name) const;
  // Every place `name` may be read from, first directory first (a file made
  // in an earlier directory takes over from a later one); an absolute
  // `name` alone. For watching a file for changes (config_watcher.h).
  std::vector<std::string> CandidatePaths(absl::string_view name) const;

  // The parsed INI file `name`, empty if it does not exist.
  absl::StatusOr<IniFile> Ini(absl::string_view name) const;
  // The first line that is not empty or a `#` comment, trimmed; nullopt if the
  // file is missing or has no such line.
  absl::StatusOr<std::optional<std::string>> Line(absl::string_view name) const;
  // Every line that is not empty or a `#` comment, trimmed.
  absl::StatusOr<std::vector<std::string>> Lines(absl::string_view name) const;
  // The whole file as is; nullopt if it does not exist.
  absl::StatusOr<std::optional<std::string>> Text(absl::string_view name) const;

  // `me`: the host name Tern uses in banners, Received: and DSNs. Haraka's
  // default is the machine's host name, which is what this returns when the
  // file is missing.
  absl::StatusOr<std::string> Me() const;

 private:
  std::string path_;
  std::vector<std::string> dirs_;
};

}  // namespace tern::config
