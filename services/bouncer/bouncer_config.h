// File: bouncer_config.h
//
// tern-bouncer's configuration, read once at startup from the Haraka-style
// config directory into one struct and validated there, so a bad file or key
// stops the service with a message naming it.
//
//   tern.ini [bouncer]
//     queue=127.0.0.1:7070           ; Default: 127.0.0.1:7070. The queue's gRPC
//                                    ; address, or a comma-separated list of
//                                    ; every queue shard (ARCHITECTURE.md §8,
//                                    ; lib/config/queue_targets.h): one worker
//                                    ; per shard leases that shard's bounce
//                                    ; jobs and queues their DSNs back to it.
//     health_listen=127.0.0.1:7073   ; Default: 127.0.0.1:7073. Empty disables.
//     metrics_listen=127.0.0.1:9473  ; Default: 127.0.0.1:9473. Empty disables.
//     config_watch_ms=2000           ; how often the templates, me and
//                                    ; tern.ini are looked at; a change
//                                    ; reloads as SIGHUP does. 0: SIGHUP
//                                    ; only. Default: 2000
//     max_original_bytes=1048576     ; Default: 1048576. RET=FULL attaches the
//                                    ; whole original up to this size, else
//                                    ; its headers (text/rfc822-headers).
//     double_bounce_recipient=       ; Default: empty (none). Gets a DSN copy
//                                    ; of every double bounce.
//     suppress_sender_domains[]=     ; Default: none. See suppression.h.
//     suppress_status[]=             ; Default: none. See suppression.h.
//   me                               ; Default: the machine's host name.
//   outbound.bounce_message          ; Default: the built-in copy of
//                                    ; deploy/config/outbound.bounce_message.
//   outbound.bounce_message_delayed  ; Tern addition, for Action: delayed DSNs.
//                                    ; Default: built-in copy of the deploy file.
//   outbound.bounce_message_delivered; Tern addition, for NOTIFY=SUCCESS DSNs.
//                                    ; Default: built-in copy of the deploy file.
//   outbound.bounce_message_html     ; Optional HTML alternative of failed
//   outbound.bounce_message_delayed_html   DSNs (and of the other kinds).
//   outbound.bounce_message_delivered_html ; Default: absent = text only.
//   outbound.bounce_message_image    ; Optional inline image (a MIME part) for
//                                    ; the HTML. Default: absent.
//   log.ini                          ; read by config::InitLogging.
//
// Thread-safety: a plain value; share it by const reference.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "lib/dsn/delivery_status.h"
#include "lib/dsn/dsn_renderer.h"
#include "services/bouncer/suppression.h"

namespace tern::bouncer {

// A template's text and where it came from (a path, or "built-in ..."), the
// latter for error messages and the startup log.
struct TemplateSource {
  std::string text;
  std::string origin;
};

struct BouncerConfig {
  // The queue shards, in the order tern.ini lists them (shard index = place
  // here). Never empty; no target twice.
  std::vector<std::string> queues = {"127.0.0.1:7070"};
  std::string health_listen = "127.0.0.1:7073";
  std::string metrics_listen = "127.0.0.1:9473";
  // How often the templates, me and tern.ini are looked at for changes,
  // which reload them as SIGHUP does (0: SIGHUP only). Default: 2000 ms.
  std::chrono::milliseconds config_watch{2'000};
  int64_t max_original_bytes = 1024 * 1024;
  std::string double_bounce_recipient;  // empty: no copies
  std::vector<std::string> suppress_sender_domains;
  std::vector<std::string> suppress_status;
  std::string me;
  TemplateSource failed_template;
  TemplateSource delayed_template;
  TemplateSource delivered_template;
  std::optional<TemplateSource> failed_html;
  std::optional<TemplateSource> delayed_html;
  std::optional<TemplateSource> delivered_html;
  std::optional<TemplateSource> image;

  const TemplateSource& TemplateFor(dsn::ReportKind kind) const;
  const std::optional<TemplateSource>& HtmlFor(dsn::ReportKind kind) const;

  // The parsed templates a renderer for `kind` uses (the image only when
  // that kind has an HTML template with content).
  absl::StatusOr<dsn::DsnTemplates> TemplatesFor(dsn::ReportKind kind) const;

  // The suppression rules, parsed.
  absl::StatusOr<SuppressionRules> Suppression() const;

  // Checks the queue shards (as ParseQueueTargets would), the listen
  // addresses, `me`, sizes, the suppression rules and that every
  // template parses.
  absl::Status Validate() const;
};

// Reads the files above from `dir` (missing files take their defaults) and
// validates the result.
absl::StatusOr<BouncerConfig> LoadBouncerConfig(const config::ConfigDir& dir);

}  // namespace tern::bouncer
