#include "lib/config/logging_setup.h"

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"

namespace tern::config {

absl::Status InitLogging(const ConfigDir& dir, absl::string_view service) {
  auto ini = dir.Ini("log.ini");
  if (!ini.ok()) {
    return ini.status();
  }
  auto level = log::ParseLevel(ini->GetString("main", "level", "info"));
  if (!level.ok()) {
    return ini->KeyError("main", "level", level.status().message());
  }
  auto format = log::ParseFormat(ini->GetString("main", "format", "default"));
  if (!format.ok()) {
    return ini->KeyError("main", "format", format.status().message());
  }
  log::Init(service, *level, *format);
  return absl::OkStatus();
}

}  // namespace tern::config
