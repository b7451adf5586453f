#include "lib/config/ini_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ini.h"

namespace tern::config {

std::optional<bool> ParseBool(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t == "true" || t == "yes" || t == "ok" || t == "enabled" || t == "on" || t == "1") {
    return true;
  }
  if (t == "false" || t == "no" || t == "disabled" || t == "off" || t == "0") {
    return false;
  }
  return std::nullopt;
}

int IniFile::Handler(void* user, const char* section_c, const char* key_c, const char* value_c) {
  auto* self = static_cast<IniFile*>(user);
  std::string section = section_c[0] == '\0' ? "main" : section_c;
  auto [it, inserted] = self->sections_.try_emplace(section);
  if (inserted) {
    self->section_order_.push_back(section);
  }
  Section& s = it->second;
  absl::string_view key = key_c;
  if (key.empty()) {
    return 0;  // "=value" is a syntax error
  }
  if (absl::EndsWith(key, "[]")) {
    key.remove_suffix(2);
    auto [lit, linserted] = s.lists.try_emplace(std::string(key));
    if (linserted && !s.values.contains(key)) {
      s.order.emplace_back(key);
    }
    lit->second.emplace_back(value_c);
    return 1;
  }
  if (!s.values.contains(key) && !s.lists.contains(key)) {
    s.order.emplace_back(key);
  }
  s.values[std::string(key)] = value_c;
  return 1;
}

absl::StatusOr<IniFile> IniFile::Parse(absl::string_view text, absl::string_view name) {
  IniFile file;
  file.name_ = std::string(name);
  // Debian's inih reads lines into a buffer of INI_MAX_LINE (200) bytes and
  // silently parses what does not fit as further lines: a long value would
  // be cut and its tail taken for keys of its own (a list of queue shards
  // losing the last ones, say). Such a line is refused instead.
  constexpr size_t kMaxLine = INI_MAX_LINE - 2;  // the newline and the NUL
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.size() > kMaxLine) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ":", line_no, ": line is ", line.size(), " characters long, more than the ", kMaxLine,
          " an INI line may have; split a list into key[]= lines or use shorter names"));
    }
  }
  // inih needs a NUL-terminated buffer.
  const std::string buffer(text);
  const int rc = ini_parse_string(buffer.c_str(), &IniFile::Handler, &file);
  if (rc > 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ":", rc, ": syntax error (expected [section], key=value or a comment)"));
  }
  if (rc < 0) {
    return absl::InternalError(absl::StrCat(name, ": could not parse (inih error ", rc, ")"));
  }
  return file;
}

absl::StatusOr<IniFile> IniFile::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) {
      IniFile empty;
      empty.name_ = path;
      return empty;
    }
    return absl::FailedPreconditionError(absl::StrCat(path, ": cannot read: ", std::strerror(errno)));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

bool IniFile::HasSection(absl::string_view section) const { return sections_.contains(section); }

bool IniFile::Has(absl::string_view section, absl::string_view key) const {
  auto it = sections_.find(section);
  return it != sections_.end() && (it->second.values.contains(key) || it->second.lists.contains(key));
}

std::optional<std::string> IniFile::Get(absl::string_view section, absl::string_view key) const {
  auto it = sections_.find(section);
  if (it == sections_.end()) {
    return std::nullopt;
  }
  auto vit = it->second.values.find(key);
  if (vit == it->second.values.end()) {
    return std::nullopt;
  }
  return vit->second;
}

std::string IniFile::GetString(absl::string_view section, absl::string_view key, absl::string_view def) const {
  auto v = Get(section, key);
  return v ? *v : std::string(def);
}

absl::Status IniFile::KeyError(absl::string_view section, absl::string_view key, absl::string_view what) const {
  if (auto it = origins_.find(absl::StrCat(section, "\n", key)); it != origins_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(it->second, " (read as ", name_, " [", section, "] ", key, "): ", what));
  }
  return absl::InvalidArgumentError(absl::StrCat(name_, ": [", section, "] ", key, ": ", what));
}

void IniFile::Set(absl::string_view section, absl::string_view key, std::string value, std::string origin) {
  auto [it, inserted] = sections_.try_emplace(std::string(section));
  if (inserted) {
    section_order_.emplace_back(section);
  }
  Section& s = it->second;
  if (!s.values.contains(key) && !s.lists.contains(key)) {
    s.order.emplace_back(key);
  }
  s.values[std::string(key)] = std::move(value);
  origins_[absl::StrCat(section, "\n", key)] = std::move(origin);
}

absl::StatusOr<bool> IniFile::GetBool(absl::string_view section, absl::string_view key, bool def) const {
  auto v = Get(section, key);
  if (!v) {
    return def;
  }
  if (auto b = ParseBool(*v)) {
    return *b;
  }
  return KeyError(section, key, absl::StrCat("'", *v, "' is not a boolean (true/false, yes/no, on/off, 1/0)"));
}

absl::StatusOr<int64_t> IniFile::GetInt(absl::string_view section, absl::string_view key, int64_t def) const {
  auto v = Get(section, key);
  if (!v) {
    return def;
  }
  int64_t out = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*v), &out)) {
    return KeyError(section, key, absl::StrCat("'", *v, "' is not an integer"));
  }
  return out;
}

std::vector<std::string> IniFile::GetList(absl::string_view section, absl::string_view key) const {
  std::vector<std::string> out;
  auto it = sections_.find(section);
  if (it == sections_.end()) {
    return out;
  }
  if (auto vit = it->second.values.find(key); vit != it->second.values.end()) {
    for (absl::string_view part : absl::StrSplit(vit->second, ',', absl::SkipWhitespace())) {
      out.emplace_back(absl::StripAsciiWhitespace(part));
    }
  }
  if (auto lit = it->second.lists.find(key); lit != it->second.lists.end()) {
    out.insert(out.end(), lit->second.begin(), lit->second.end());
  }
  return out;
}

std::vector<std::string> IniFile::Keys(absl::string_view section) const {
  auto it = sections_.find(section);
  return it == sections_.end() ? std::vector<std::string>{} : it->second.order;
}

std::vector<std::string> IniFile::Sections() const { return section_order_; }

}  // namespace tern::config
