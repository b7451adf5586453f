// File: bouncer_config.h
//
// tern-bouncer's configuration, read once at startup from the Haraka-style
// config directory into one struct and validated there, so a bad file or key
// stops the service with a message naming it.
//
//   tern.ini [bouncer]
//     queue=127.0.0.1:7070           ; Default: 127.0.0.1:7070. The queue's gRPC API.
//     health_listen=127.0.0.1:7073   ; Default: 127.0.0.1:7073. Empty disables.
//     metrics_listen=127.0.0.1:9473  ; Default: 127.0.0.1:9473. Empty disables.
//   me                               ; Default: the machine's host name.
//   outbound.bounce_message          ; Default: the built-in copy of
//                                    ; deploy/config/outbound.bounce_message.
//   outbound.bounce_message_delayed  ; Tern addition, for Action: delayed DSNs.
//                                    ; Default: built in.
//   outbound.bounce_message_delivered; Tern addition, for NOTIFY=SUCCESS DSNs.
//                                    ; Default: built in.
//   log.ini                          ; read by config::InitLogging.
//
// Thread-safety: a plain value; share it by const reference.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "lib/dsn/delivery_status.h"

namespace tern::bouncer {

// A template's text and where it came from (a path, or "built-in ..."), the
// latter for error messages and the startup log.
struct TemplateSource {
  std::string text;
  std::string origin;
};

struct BouncerConfig {
  std::string queue = "127.0.0.1:7070";
  std::string health_listen = "127.0.0.1:7073";
  std::string metrics_listen = "127.0.0.1:9473";
  std::string me;
  TemplateSource failed_template;
  TemplateSource delayed_template;
  TemplateSource delivered_template;

  const TemplateSource& TemplateFor(dsn::ReportKind kind) const;

  // Checks the addresses, `me`, and that every template parses.
  absl::Status Validate() const;
};

// Reads the files above from `dir` (missing files take their defaults) and
// validates the result.
absl::StatusOr<BouncerConfig> LoadBouncerConfig(const config::ConfigDir& dir);

// The built-in templates for delay and success notifications.
extern const char kDefaultDelayedMessage[];
extern const char kDefaultDeliveredMessage[];

}  // namespace tern::bouncer
