// File: deliverer_config.h
//
// DelivererConfig: everything tern-deliverer reads from the config directory,
// loaded once at startup, validated, then passed by const reference.
//
//   tern.ini [deliverer]
//     queue=127.0.0.1:7070        the queue's gRPC address. Default: 127.0.0.1:7070
//     dns_servers=                comma-separated ip, ip:port or [ipv6]:port.
//                                 Default: empty = /etc/resolv.conf
//     mx_port=25                  port for MX hosts from DNS. Default: 25
//     lease_batch=64              most jobs per Lease call. Default: 64
//     dot_timeout=600             seconds for the body and the reply to the
//                                 final dot. Default: 600
//     health_listen=127.0.0.1:7072   Default: 127.0.0.1:7072; empty disables
//     metrics_listen=127.0.0.1:9472  Default: 127.0.0.1:9472; empty disables
//   outbound.ini [main]
//     concurrency_max=10000   Default: 10000
//     connect_timeout=30      seconds, for the connect and each reply. Default: 30
//     local_mx_ok=false       Default: false
//     inet_prefer=default     default, v4 or v6. Default: default
//     enable_tls=true         opportunistic STARTTLS. Default: true
//   me                        EHLO name. Default: the host name
//
// Thread-safety: a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "services/deliverer/route_planner.h"

namespace tern::deliverer {

struct DelivererConfig {
  std::string queue = "127.0.0.1:7070";
  std::vector<std::string> dns_servers;
  uint16_t mx_port = 25;
  uint32_t lease_batch = 64;
  std::chrono::seconds dot_timeout{600};
  std::string health_listen = "127.0.0.1:7072";
  std::string metrics_listen = "127.0.0.1:9472";

  uint32_t concurrency_max = 10000;
  std::chrono::seconds connect_timeout{30};
  bool local_mx_ok = false;
  InetPrefer inet_prefer = InetPrefer::kDefault;
  bool enable_tls = true;

  std::string me;

  // Reads tern.ini, outbound.ini and me from `dir`; errors name the file and key.
  static absl::StatusOr<DelivererConfig> Load(const config::ConfigDir& dir);

  absl::Status Validate() const;
};

}  // namespace tern::deliverer
