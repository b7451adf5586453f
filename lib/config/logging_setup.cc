#include "lib/config/logging_setup.h"

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"

namespace tern::config {

namespace {

struct LogSettings {
  log::Level level;
  log::Format format;
  std::string level_text;  // as log.ini spells them, for the log line
  std::string format_text;
};

absl::StatusOr<LogSettings> ReadLogIni(const ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(IniFile ini, dir.Ini("log.ini"));
  LogSettings out;
  out.level_text = ini.GetString("main", "level", "info");
  out.format_text = ini.GetString("main", "format", "default");
  auto level = log::ParseLevel(out.level_text);
  if (!level.ok()) {
    return ini.KeyError("main", "level", level.status().message());
  }
  auto format = log::ParseFormat(out.format_text);
  if (!format.ok()) {
    return ini.KeyError("main", "format", format.status().message());
  }
  out.level = *level;
  out.format = *format;
  return out;
}

}  // namespace

absl::Status InitLogging(const ConfigDir& dir, absl::string_view service) {
  TERN_ASSIGN_OR_RETURN(LogSettings settings, ReadLogIni(dir));
  log::Init(service, settings.level, settings.format);
  return absl::OkStatus();
}

bool ReloadLogging(const ConfigDir& dir, absl::string_view service) {
  absl::StatusOr<LogSettings> settings = ReadLogIni(dir);
  if (!settings.ok()) {
    log::Event(log::Level::kError, "reload_failed",
               {{"error", settings.status().message()},
                {"effect", "logging keeps its level and format; a restart with this file would fail"}});
    return false;
  }
  if (settings->level == log::CurrentLevel() && settings->format == log::CurrentFormat()) {
    return true;
  }
  // After the change, so the line is in the new format (and, like every
  // notice, not written when the new level is above notice).
  log::Init(service, settings->level, settings->format);
  log::Event(log::Level::kNotice, "log_settings_changed",
             {{"file", "log.ini"}, {"level", settings->level_text}, {"format", settings->format_text}});
  return true;
}

}  // namespace tern::config
