// File: config.h
//
// IngestConfig: everything tern-ingest reads from the Haraka-style config
// directory, in one typed struct (STYLE §4.8), loaded once at startup and then
// passed by const reference. A bad value stops startup with an error naming
// the file and the key (or the line, for relay_acl_allow).
//
// Files and keys (defaults in brackets):
//   smtp.ini        [main] listen           [127.0.0.1:2525] comma list of
//                                            host:port, IPv6 as [addr]:port
//                   [main] listen_host/port  Haraka legacy; prepended to listen
//                   [main] inactivity_timeout [300] seconds idle before 421
//   me              the host name for the banner and Received: [hostname]
//   relay_acl_allow one IP/CIDR per line [127.0.0.1/32, ::1/128 if missing]
//   connection.ini  [max] bytes [26214400], line_length [512],
//                   data_line_length [992]
//   tern.ini        [ingest] queue [127.0.0.1:7070], queue_timeout_ms [30000],
//                   health_listen [127.0.0.1:7071], metrics_listen
//                   [127.0.0.1:9471] (empty disables the last two)
//   log.ini         read by config::InitLogging, not here.
//
// Thread-safety: a plain value; immutable once loaded.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"
#include "services/ingest/relay_acl.h"

namespace tern::ingest {

struct ListenAddress {
  std::string host;   // an IP address literal, without brackets
  uint16_t port = 0;  // 0 = any free port (tests)

  // "127.0.0.1:25" or "[::1]:25".
  std::string ToString() const;
};

// Parses Haraka's listen list: "127.0.0.1:25,[::0]:587". Hosts must be IP
// addresses; every entry needs a port.
absl::StatusOr<std::vector<ListenAddress>> ParseListenList(absl::string_view value);

struct IngestConfig {
  // Default: 127.0.0.1:2525.
  std::vector<ListenAddress> listen = {{"127.0.0.1", 2525}};
  // Default: the machine's host name.
  std::string me = "localhost";
  // Default: 127.0.0.1/32 and ::1/128.
  RelayAcl relay_acl = RelayAcl::Default();
  // Largest message (after dot-unstuffing, before our Received:). Default: 26214400.
  uint64_t max_bytes = 26214400;
  // Longest command line, without CRLF. Default: 512.
  size_t max_line_length = 512;
  // Longest DATA line before it is wrapped with CRLF SPACE. Default: 992.
  size_t max_data_line_length = 992;
  // Idle time before the client gets 421 4.4.2. Default: 300 s.
  std::chrono::milliseconds inactivity_timeout{300'000};
  // The queue's gRPC address. Default: 127.0.0.1:7070.
  std::string queue = "127.0.0.1:7070";
  // Longest wait for the queue at any step (header, each chunk, the final
  // durable answer). Default: 30000 ms.
  std::chrono::milliseconds queue_timeout{30'000};
  // Default: 127.0.0.1:7071. Empty disables.
  std::string health_listen = "127.0.0.1:7071";
  // Default: 127.0.0.1:9471. Empty disables.
  std::string metrics_listen = "127.0.0.1:9471";

  // Checks ranges and consistency; the error says which setting is wrong.
  absl::Status Validate() const;
};

// Reads the files listed above from `dir` and validates the result.
absl::StatusOr<IngestConfig> LoadIngestConfig(const config::ConfigDir& dir);

}  // namespace tern::ingest
