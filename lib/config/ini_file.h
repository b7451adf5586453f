// File: ini_file.h
//
// A Haraka-style INI file: `[section]` headers, `key=value` lines, `key[]=v`
// lines that build a list, `;` and `#` comments. Keys before any section
// belong to section `main`, as in Haraka. Section and key names are
// case-sensitive (Haraka's are too); boolean values accept Haraka's words.
//
// Parsing uses inih's C parser (libinih), so line syntax errors are reported
// with their line number. Typed getters return an error that names the file,
// the section, the key and the bad value, so a bad config stops startup with a
// clear message instead of falling back silently.
//
// Thread-safety: immutable after construction; safe to share.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::config {

class IniFile {
 public:
  IniFile() = default;

  // Parses INI text. `name` is used in error messages (usually the file path).
  static absl::StatusOr<IniFile> Parse(absl::string_view text, absl::string_view name);

  // Reads and parses a file. A missing file is not an error: it yields an
  // empty IniFile, so every key takes its default.
  static absl::StatusOr<IniFile> Load(const std::string& path);

  const std::string& name() const { return name_; }
  bool HasSection(absl::string_view section) const;
  bool Has(absl::string_view section, absl::string_view key) const;

  // The raw value, if the key is present.
  std::optional<std::string> Get(absl::string_view section, absl::string_view key) const;
  std::string GetString(absl::string_view section, absl::string_view key, absl::string_view def) const;
  // true/yes/ok/enabled/on/1 and false/no/disabled/off/0 (case-insensitive).
  absl::StatusOr<bool> GetBool(absl::string_view section, absl::string_view key, bool def) const;
  absl::StatusOr<int64_t> GetInt(absl::string_view section, absl::string_view key, int64_t def) const;
  // The values of `key[]=` lines in order (a plain `key=` line counts as one
  // item, and a comma-separated plain value is split on commas).
  std::vector<std::string> GetList(absl::string_view section, absl::string_view key) const;
  // All keys of a section, in file order.
  std::vector<std::string> Keys(absl::string_view section) const;
  std::vector<std::string> Sections() const;

  // An InvalidArgument error naming this file, the key and what is wrong
  // (or, for a value Set() from another file, that file).
  absl::Status KeyError(absl::string_view section, absl::string_view key, absl::string_view what) const;

  // Sets `key` in `section` to `value`, read from the file `origin` (a
  // path): errors about the key then name that file, where the operator
  // has to fix it. For settings that also come from files of their own
  // (Haraka's legacy one-line files, outbound_ini.h).
  void Set(absl::string_view section, absl::string_view key, std::string value, std::string origin);

 private:
  struct Section {
    std::vector<std::string> order;
    std::map<std::string, std::string, std::less<>> values;
    std::map<std::string, std::vector<std::string>, std::less<>> lists;
  };
  static int Handler(void* user, const char* section, const char* key, const char* value);

  std::string name_;
  std::vector<std::string> section_order_;
  std::map<std::string, Section, std::less<>> sections_;
  // Section and key (joined by a newline) -> the file a Set() value came from.
  std::map<std::string, std::string, std::less<>> origins_;
};

// Parses Haraka's boolean words; nullopt if the text is none of them.
std::optional<bool> ParseBool(absl::string_view text);

}  // namespace tern::config
