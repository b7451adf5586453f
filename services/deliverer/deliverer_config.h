// File: deliverer_config.h
//
// DelivererConfig: everything tern-deliverer reads from the config directory,
// loaded once at startup, validated, then passed by const reference.
//
//   tern.ini [deliverer]
//     queue=127.0.0.1:7070        the queue's gRPC address, or every queue shard
//                                 as a comma-separated list (ARCHITECTURE.md
//                                 §8; lib/config/queue_targets.h): host:port,
//                                 [v6]:port or a gRPC target (unix:/path). The
//                                 worker leases from every shard, each getting
//                                 a fair part of concurrency_max, and sends
//                                 all calls about a job (Progress, Report) and
//                                 what it learns meanwhile (host flags, MTA-STS
//                                 policies, TLS report counts) to the shard it
//                                 came from. Every deliverer must list every
//                                 shard: mail on a shard none lists never
//                                 leaves. Default: 127.0.0.1:7070
//     dns_servers=                comma-separated ip, ip:port or [ipv6]:port.
//                                 Default: empty = /etc/resolv.conf
//     mx_port=25                  port for MX hosts from DNS and routes. Default: 25
//     lease_batch=64              most jobs per Lease call. Default: 64
//     call_batch_wait_ms=5        under load, a Lease or Report call waits up
//                                 to this long after the previous one of its
//                                 kind so that it carries more (CallPacer);
//                                 0 = call at once. Default: 5
//     banner_timeout=, ehlo_timeout=, starttls_timeout=, auth_timeout=,
//     mail_timeout=, rcpt_timeout=, data_timeout=, rset_timeout=
//                                 seconds per step. Default: connect_timeout
//     dot_timeout=600             seconds for the body and the reply to the
//                                 final dot. Default: 600
//     pool_timeout=50             seconds an idle connection is kept for
//                                 reuse; 0 disables reuse. Default: 50
//     pool_max_messages=100       messages per connection. Default: 100
//     destination_connections_max=32
//                                 connections open at once (busy or idle) to
//                                 one destination (MX address and port, per
//                                 source address) from this deliverer; more
//                                 deliveries to it wait for one of them, up
//                                 to half of what is left of their lease (at
//                                 least connect_timeout). Below Postfix's
//                                 smtpd_client_connection_count_limit (50),
//                                 which answers 421 beyond it; 0 = no limit
//                                 (as Haraka v3). Default: 32
//     tls_failure_ttl=604800      seconds a host whose TLS handshake failed is
//                                 reached in plain text. Default: 604800 (7 days)
//     host_flags_refresh=30       seconds between GetHostFlags calls. Default: 30
//     unreachable_after=3         sessions in a row that an address refuses or
//                                 drops before its greeting (connect failed,
//                                 no greeting, 421/5xx greeting) after which
//                                 it is suspended; 0 = never. Default: 3
//     unreachable_backoff=60      seconds a suspended address gets no new
//                                 session from any deliverer: its deliveries
//                                 go to the next address or are deferred with
//                                 the last failure. Default: 60
//     mta_sts=true                look up the MTA-STS policy (RFC 8461) of each
//                                 recipient domain delivered to by MX and apply
//                                 it: under "enforce" only the policy's MX hosts,
//                                 with STARTTLS and a verified certificate
//                                 (mta_sts.h). Default: true
//     mta_sts_timeout=10          seconds for one policy fetch over HTTPS,
//                                 and for one TLS report POST to an https:
//                                 rua (delivery_worker.cc). Default: 10
//     mta_sts_port=443            port of https://mta-sts.<domain>/. Default: 443
//     dane=true                   DANE (RFC 7672) for MX delivery: when the MX
//                                 and address lookups were DNSSEC-validated
//                                 (AD from the resolver), look up each MX
//                                 host's TLSA records and, if it has any,
//                                 require STARTTLS with a certificate they
//                                 match (dane.h). Takes precedence over
//                                 MTA-STS for the domain. Default: true
//     chunking=true               send messages with BDAT (RFC 3030) to SMTP
//                                 servers that offer CHUNKING: counted bytes
//                                 as stored, no dot-stuffing; false = always
//                                 DATA (LMTP always uses DATA). Default: true
//     chunking_failure_ttl=604800 seconds an address that offered CHUNKING but
//                                 answered BDAT with 500-504 gets DATA instead
//                                 (every deliverer: a shared host flag); the
//                                 message is retried with DATA at once either
//                                 way; 0 = no flag. Default: 604800 (7 days)
//     dkim_threads=2              threads that make DKIM signatures when
//                                 dkim.ini enables signing, so that an RSA
//                                 signature (about half a millisecond of CPU)
//                                 never holds up the event loop's other
//                                 sessions; 0 = sign on the event loop. No
//                                 threads are started while signing is off.
//                                 Default: 2
//     config_watch_ms=2000        how often dkim.ini, dkim/ and
//                                 dkim.private.key are looked at; a change
//                                 reloads them as SIGHUP does, once they
//                                 have stayed the same for as long again
//                                 (config_watcher.h); 0 = SIGHUP only.
//                                 Default: 2000
//     health_listen=127.0.0.1:7072   Default: 127.0.0.1:7072; empty disables
//     metrics_listen=127.0.0.1:9472  Default: 127.0.0.1:9472; empty disables
//   tern.ini [tlsrpt]
//     enabled=false           SMTP TLS Reporting (RFC 8460): look up each MX
//                             domain's "_smtp._tls" record and, for those that
//                             ask for reports, count TLS sessions and their
//                             failures for the queue's daily reports
//                             (tls_reporting.h; the queue reads the rest of
//                             the section). Default: false
//     flush_seconds=10        seconds between the deliverer's
//                             RecordTlsResults calls. Default: 10
//   outbound.ini [main]
//     concurrency_max=10000   Default: 10000
//     connect_timeout=30      seconds for the TCP connect (and default for
//                             every reply). Default: 30
//     local_mx_ok=false       Default: false
//     inet_prefer=default     default, v4 or v6. Default: default
//     enable_tls=true         opportunistic STARTTLS. Default: true
//   outbound_routes.ini       static routes (static_routes.h). Default: none
//   plugins, smtp_forward.ini Haraka's queue/smtp_forward, when `plugins`
//                             lists it: its smarthost routes (smtp_forward.h),
//                             under outbound_routes.ini's. Default: none
//   tls.ini [outbound]        TLS policy (tls_policy.h). Default: opportunistic,
//                             unverified
//   me                        EHLO name. Default: the host name
//   dkim.ini                  DKIM signing (dkim.h; haraka-plugin-dkim's file)
//     [sign] enabled=false    sign outbound mail. Default: false
//     [sign] headers=         header fields to sign, separated by commas,
//                             colons or semicolons; From is always added.
//                             Default: From, Sender, Reply-To, Subject, Date,
//                             Message-ID, To, Cc, MIME-Version,
//                             List-Unsubscribe, List-Unsubscribe-Post
//     [sign] selector=, domain=
//                             the single-domain fallback key's s= and d=,
//                             used with dkim.private.key when no key
//                             directory fits. Default: none
//     [canon] body=simple     body canonicalization: simple or relaxed
//                             (header fields are always relaxed). Default: simple
//   dkim/<domain>/private, dkim/<domain>/selector
//                             the key (PEM; RSA of 1024 bits or more, or
//                             Ed25519) and selector of <domain> and its
//                             subdomains. Default: none
//   dkim.private.key          the fallback key (PEM). Default: none
//   hooks.ini                 the user's gRPC Hooks server (lib/hooks/hooks_config.h);
//                             the deliverer calls send_email, get_mx, deferred and
//                             delivered. Default: no hooks
//
// Thread-safety: a plain value.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"
#include "lib/hooks/hooks_config.h"
#include "services/deliverer/dkim.h"
#include "services/deliverer/route_planner.h"
#include "services/deliverer/smtp_timeouts.h"
#include "services/deliverer/static_routes.h"
#include "services/deliverer/tls_policy.h"

namespace tern::deliverer {

struct DelivererConfig {
  // The queue shards, in the order written; never empty once validated.
  std::vector<std::string> queues = {"127.0.0.1:7070"};
  std::vector<std::string> dns_servers;
  uint16_t mx_port = 25;
  uint32_t lease_batch = 64;
  std::chrono::milliseconds call_batch_wait{5};
  std::chrono::seconds dot_timeout{600};
  std::string health_listen = "127.0.0.1:7072";
  std::string metrics_listen = "127.0.0.1:9472";
  SmtpTimeouts timeouts;  // connect = connect_timeout, final_dot = dot_timeout
  std::chrono::seconds pool_timeout{50};
  uint32_t pool_max_messages = 100;
  uint32_t destination_connections_max = 32;
  std::chrono::seconds tls_failure_ttl{604800};
  std::chrono::seconds host_flags_refresh{30};
  uint32_t unreachable_after = 3;
  std::chrono::seconds unreachable_backoff{60};
  bool mta_sts = true;
  std::chrono::milliseconds mta_sts_timeout{10000};
  uint16_t mta_sts_port = 443;
  bool dane = true;
  bool chunking = true;
  std::chrono::seconds chunking_failure_ttl{604800};
  uint32_t dkim_threads = 2;
  // How often the DKIM files are checked for changes (0: never). Default: 2 s.
  std::chrono::milliseconds config_watch{2'000};
  // tern.ini [tlsrpt] enabled and flush_seconds.
  bool tlsrpt = false;
  std::chrono::seconds tlsrpt_flush{10};

  uint32_t concurrency_max = 10000;
  std::chrono::seconds connect_timeout{30};
  bool local_mx_ok = false;
  InetPrefer inet_prefer = InetPrefer::kDefault;
  bool enable_tls = true;

  // outbound_routes.ini's, then smtp_forward.ini's for the domains (or `*`)
  // the first has no route for.
  StaticRoutes routes;
  // smtp_forward.ini's routes by sender (domain_selector=mail_from): used
  // for a recipient domain outbound_routes.ini has no section of its own
  // for, before `routes`' `*`.
  StaticRoutes sender_routes;
  // The routes (domains, `*`, and "from:" plus each sender section) that
  // came from smtp_forward.ini, for the startup log.
  std::vector<std::string> smtp_forward_routes;

  // The static route of a delivery to `domain` from `mail_from`: the
  // recipient domain's own outbound_routes.ini section, else a sender
  // route, else `routes`' (its section or `*`); null when none applies.
  const StaticRoute* RouteFor(absl::string_view domain, absl::string_view mail_from) const;
  TlsOutboundConfig tls;
  // The TLS client context of each route with a client certificate of its
  // own (tls_cert), by section name: built by Load, which so refuses a
  // certificate that cannot be loaded. A config built by hand has none.
  std::map<std::string, std::shared_ptr<asio::ssl::context>, std::less<>> route_tls;
  hooks::HooksConfig hooks;
  // dkim.ini and the DKIM keys; signing is off unless dkim.enabled.
  DkimConfig dkim;

  std::string me;

  // Reads tern.ini, outbound.ini, outbound_routes.ini, tls.ini, hooks.ini,
  // dkim.ini (with the DKIM keys) and me from
  // `dir`; errors name the file and key.
  static absl::StatusOr<DelivererConfig> Load(const config::ConfigDir& dir);

  absl::Status Validate() const;
};

// What the deliverer applies only at a start: the queue shards, DNS
// servers, mx_port, lease_batch, call_batch_wait, the health and metrics
// listeners, the connection pool's limits, unreachable_after, mta_sts and
// mta_sts_port, dkim_threads, config_watch_ms, [tlsrpt], hooks.ini and me.
// Sets them in `loaded` to the running values, which makes it what a
// reload runs with (DeliveryWorker::Reload applies everything else), and
// returns those that differed, named by where they are written
// ("tern.ini [deliverer] queue", "hooks.ini", ...).
std::vector<std::string> KeepRestartOnlySettings(const DelivererConfig& running, DelivererConfig* loaded);

}  // namespace tern::deliverer
