// File: log.h
//
// Tern's logger: one line per event, to stderr, in one of Haraka's log.ini
// formats (`default`, `logfmt`, `json`) and at Haraka's levels.
//
//   tern::log::Event(tern::log::Level::kInfo, "delivered",
//                    {{"msg", id}, {"rcpt", rcpt}, {"relay", "mx[1.2.3.4]:25"}});
//
// renders as
//   default: [INFO] [queue] delivered msg=0190... rcpt=a@b relay=mx[1.2.3.4]:25
//   logfmt:  level=INFO service=queue event=delivered msg=0190... rcpt=a@b ...
//   json:    {"level":"INFO","service":"queue","event":"delivered","msg":"0190...",...}
//
// Values are escaped for the format, so remote text (SMTP replies) cannot forge
// fields or lines. Never pass a secret (password, key) as a field.
//
// Thread-safety: every function may be called from any thread after Init().
// This header deliberately does not include spdlog (it is costly to compile).
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::log {

enum class Level { kData, kProtocol, kDebug, kInfo, kNotice, kWarn, kError, kCrit, kAlert, kEmerg };
enum class Format { kDefault, kLogfmt, kJson };

// Parses Haraka's level names (case-insensitive: data, protocol, debug, info,
// notice, warn, error, crit, alert, emerg).
absl::StatusOr<Level> ParseLevel(absl::string_view name);
// Parses `default`, `logfmt` or `json`.
absl::StatusOr<Format> ParseFormat(absl::string_view name);

// Sets the service name shown on every line, the minimum level and the format.
// Default before Init: service "tern", level info, format default.
void Init(absl::string_view service, Level level, Format format);

bool Enabled(Level level);

// What Init set last (or the defaults): for a reload to say what changed.
Level CurrentLevel();
Format CurrentFormat();

using Field = std::pair<absl::string_view, absl::string_view>;

// Logs one event with key=value fields.
void Event(Level level, absl::string_view event, std::initializer_list<Field> fields = {});

// Renders an event line without writing it (used by Event and by tests).
std::string Render(Format format, absl::string_view service, Level level, absl::string_view event,
                   std::initializer_list<Field> fields);

// Free-text shorthands for messages that are not structured events.
void Debug(absl::string_view text);
void Info(absl::string_view text);
void Notice(absl::string_view text);
void Warn(absl::string_view text);
void Error(absl::string_view text);

}  // namespace tern::log
