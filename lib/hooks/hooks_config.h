// File: hooks_config.h
//
// Where Tern's services find the user's gRPC Hooks server (proto/tern/v1/
// hooks.proto) and which hooks they call: config/hooks.ini, read by ingest
// (queue_outbound), the deliverer (send_email, get_mx, deferred, delivered)
// and the bouncer (bounce).
//
//   [main]
//   address=            ; host:port (or unix:/path) of the Hooks server;
//                       ; empty (the default) = no hooks at all
//   hooks=              ; comma-separated hooks to call: queue_outbound, send_email,
//                       ; get_mx, deferred, bounce, delivered, or * for all six;
//                       ; default: all six when address is set
//   timeout_ms=         ; deadline of each hook call; default: config/plugin_timeout
//                       ; seconds (Haraka's file, default 30), 1 .. 600000
//   tls=false           ; true: the channel uses TLS and verifies the server
//   tls_ca=             ; PEM file of the CA that signs the server's certificate
//                       ; (default: the system's roots)
//   tls_server_name=    ; name the certificate must carry, if not the host of `address`
//
// A hook that times out, fails, is UNIMPLEMENTED or answers something
// invalid changes nothing: the service does what it would without it, logs
// `hook_failed` and counts tern_hook_calls_total{hook,result="failed"}.
//
// Thread-safety: HooksConfig is a value; Record*/Log* are safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::config {
class ConfigDir;
}

namespace tern::hooks {

enum class Hook : uint8_t { kQueueOutbound, kSendEmail, kGetMx, kDeferred, kBounce, kDelivered };
inline constexpr int kHookCount = 6;

// "queue_outbound", "send_email", ... as written in hooks.ini and in logs.
absl::string_view HookName(Hook hook);

struct HooksConfig {
  std::string address;                      // empty = no hooks
  uint32_t enabled = 0;                     // bit (1 << Hook)
  std::chrono::milliseconds timeout{30000};
  bool tls = false;
  std::string tls_ca_pem;                   // empty = system roots
  std::string tls_server_name;

  // Whether the service should call `hook` (an address is set and the hook is listed).
  bool Calls(Hook hook) const {
    return !address.empty() && (enabled & (1u << static_cast<unsigned>(hook))) != 0;
  }
  bool Any() const { return !address.empty() && enabled != 0; }
  bool operator==(const HooksConfig&) const = default;
};

// Reads hooks.ini and plugin_timeout; errors name the file, key and problem.
absl::StatusOr<HooksConfig> LoadHooksConfig(const config::ConfigDir& dir);

// What became of one hook call, for the metric and the log.
enum class HookResult : uint8_t { kApplied, kContinued, kFailed };

// Counts tern_hook_calls_total{hook,result}: "applied" (the answer changed
// what Tern does), "continue" (the hook let Tern go on) or "failed".
void RecordHookCall(Hook hook, HookResult result);

// RecordHookCall(kFailed) and one warn line:
// `hook_failed hook=get_mx id=<id> error="<status>" fallback="<what Tern does instead>"`.
void LogHookFailure(Hook hook, absl::string_view id, const absl::Status& status, absl::string_view fallback);

// Text a hook gave for an SMTP reply or a recorded reason, made safe to put
// on the wire and in logs: control characters (CR, LF, TAB, ...) become
// spaces, outer spaces go, and it is cut to `max_bytes` (at a UTF-8 character
// boundary). A hook cannot inject a second reply line or a log field.
std::string CleanHookText(absl::string_view text, size_t max_bytes = 400);

}  // namespace tern::hooks
