#include "lib/config/config_dir.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tern::config {

ConfigDir::ConfigDir(std::string path) : path_(std::move(path)) {
  for (absl::string_view dir : absl::StrSplit(path_, ':', absl::SkipEmpty())) {
    dirs_.emplace_back(dir);
  }
  if (dirs_.empty()) {
    dirs_.emplace_back(".");
  }
}

std::string ConfigDir::PathOf(absl::string_view name) const {
  if (absl::StartsWith(name, "/")) {
    return std::string(name);
  }
  for (const std::string& dir : dirs_) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (::access(candidate.c_str(), F_OK) == 0) {
      return candidate;
    }
  }
  return absl::StrCat(dirs_.front(), "/", name);
}

std::vector<std::string> ConfigDir::CandidatePaths(absl::string_view name) const {
  if (absl::StartsWith(name, "/")) {
    return {std::string(name)};
  }
  std::vector<std::string> paths;
  paths.reserve(dirs_.size());
  for (const std::string& dir : dirs_) {
    paths.push_back(absl::StrCat(dir, "/", name));
  }
  return paths;
}

absl::StatusOr<IniFile> ConfigDir::Ini(absl::string_view name) const { return IniFile::Load(PathOf(name)); }

absl::StatusOr<std::optional<std::string>> ConfigDir::Text(absl::string_view name) const {
  const std::string path = PathOf(name);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) {
      return std::optional<std::string>();
    }
    return absl::FailedPreconditionError(absl::StrCat(path, ": cannot read: ", std::strerror(errno)));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::optional<std::string>(ss.str());
}

absl::StatusOr<std::vector<std::string>> ConfigDir::Lines(absl::string_view name) const {
  auto text = Text(name);
  if (!text.ok()) {
    return text.status();
  }
  std::vector<std::string> out;
  if (!text->has_value()) {
    return out;
  }
  for (absl::string_view line : absl::StrSplit(**text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') {
      continue;
    }
    out.emplace_back(line);
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> ConfigDir::Line(absl::string_view name) const {
  auto lines = Lines(name);
  if (!lines.ok()) {
    return lines.status();
  }
  if (lines->empty()) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>(lines->front());
}

absl::StatusOr<std::string> ConfigDir::Me() const {
  auto me = Line("me");
  if (!me.ok()) {
    return me.status();
  }
  if (me->has_value()) {
    return **me;
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    return std::string("localhost");
  }
  return std::string(host);
}

}  // namespace tern::config
