// File: config.h
//
// IngestConfig: everything tern-ingest reads from the Haraka-style config
// directory, in one typed struct (STYLE §4.8), loaded at startup and again on
// SIGHUP or a change of its files (IngestServer::Reload), and passed by const
// reference. A bad value
// stops startup, or a reload, with an error naming the file and the key (or
// the line, for relay_acl_allow).
//
// Files and keys (defaults in brackets):
//   smtp.ini        [main] listen           [127.0.0.1:2525] comma list of
//                                            host:port, IPv6 as [addr]:port
//                   [main] listen_host/port  Haraka legacy; prepended to listen
//                   [main] smtps_port [465]  listen entries on this port are
//                                            implicit TLS (SMTPS)
//                   [main] inactivity_timeout [300] seconds idle before 421
//                   [main] force_shutdown_timeout [30] seconds a transaction
//                                            may take to finish after SIGTERM
//   me              the host name for the banner and Received: [hostname]
//   relay_acl_allow one IP/CIDR per line [127.0.0.1/32, ::1/128 if missing]
//   relay_clientcerts  SHA-256 fingerprints of TLS client certificates (or
//                   of their public keys) whose holders may relay from any
//                   address (relay_acl.h) [none if missing]
//   connection.ini  [max] bytes [26214400], line_length [512],
//                   data_line_length [992], recipients [1000],
//                   connections [20000], connections_per_ip [100]
//                   [headers] add_received [true], clean_auth_results [true],
//                   max_lines [1000], max_received [100]
//                   [haproxy] enabled [true], hosts[] [none]
//   tls.ini         [main] key [tls_key.pem], cert [tls_cert.pem] (relative
//                   to the config dir; TLS is on when both files exist),
//                   minVersion [TLSv1.2], ciphers [OpenSSL's default],
//                   requestCert [true] (ask every TLS client for a
//                   certificate; one without, or with one that does not
//                   verify, still gets in unless its listener requires one),
//                   rejectUnauthorized [false] (require a verified client
//                   certificate on every listener), requireAuthorized[]
//                   [none] (listen ports that require one; Haraka's rule: a
//                   listener requires one when rejectUnauthorized=true or
//                   its port is listed), ca [none: the system's default
//                   trusted CAs] (PEM file of the only CAs client
//                   certificates are verified against, relative to the
//                   config dir)
//   tls/            Haraka's certificate directory [none], read with its
//                   subdirectories (names starting with "." skipped): each
//                   file holds PEM keys and/or certificates. A file with a
//                   key and a certificate chain is a bundle; a certificate
//                   file without a key is paired with the key file (anywhere
//                   in tls/) whose key fits its first certificate
//                   (X509_check_private_key), whatever the file names. Each
//                   certificate is served to clients whose SNI names one of
//                   its names (subjectAltName DNS names, else the CN; "*.x"
//                   matches one label); others get tls.ini's certificate,
//                   or without one the first by certificate file path. A key
//                   that fits no certificate, a certificate no key fits, a
//                   file with neither or with unreadable PEM is an error.
//   auth_flat_file.ini  see auth.h (AUTH is on when [users] has a user)
//   tern.ini        [ingest] queue [127.0.0.1:7070] (one address, or a
//                   comma-separated list of queue shards: each message goes
//                   to one of them, lib/config/queue_targets.h),
//                   queue_timeout_ms [30000],
//                   enqueue_inline_max [262144],
//                   health_listen [127.0.0.1:7071], metrics_listen
//                   [127.0.0.1:9471] (empty disables the last two),
//                   config_watch_ms [2000] (how often the files are looked
//                   at for changes, which reload as SIGHUP does; 0: only
//                   SIGHUP reloads; lib/config/config_watcher.h)
//   outbound.ini    [main] received_header [Tern] (with Haraka's legacy
//                   file outbound.received_header, outbound_ini.h): the
//                   comment after "by <me>" in Received:; `disabled` omits
//                   the header, as add_received=false does
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
#include "services/ingest/auth.h"
#include "services/ingest/relay_acl.h"

namespace tern::ingest {

struct ListenAddress {
  std::string host;   // an IP address literal, without brackets
  uint16_t port = 0;  // 0 = any free port (tests)
  // Implicit TLS (SMTPS): the handshake comes before the banner.
  bool implicit_tls = false;
  // The TLS handshake fails without a client certificate that verifies
  // against tls.ini's `ca` (rejectUnauthorized, or the port is in
  // requireAuthorized[]). Default: false.
  bool require_client_cert = false;

  // "127.0.0.1:25" or "[::1]:25".
  std::string ToString() const;
};

// A certificate chain and the private key that fits its first certificate:
// one PEM bundle (both names the same file) or two files from config/tls/.
struct TlsCertificateFiles {
  std::string cert_file;
  std::string key_file;

  bool operator==(const TlsCertificateFiles&) const = default;
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
  RelayClientCerts relay_clientcerts;
  // Largest message (after dot-unstuffing, before our Received:). Default: 26214400.
  uint64_t max_bytes = 26214400;
  // Longest command line, without CRLF. Default: 512.
  size_t max_line_length = 512;
  // Longest DATA line before it is wrapped with CRLF SPACE. Default: 992.
  size_t max_data_line_length = 992;
  // Idle time before the client gets 421 4.4.2. Default: 300 s.
  std::chrono::milliseconds inactivity_timeout{300'000};
  // The queue's gRPC address, or one per queue shard. Default:
  // {127.0.0.1:7070}.
  std::vector<std::string> queues = {"127.0.0.1:7070"};
  // Longest wait for the queue at any step (header, each chunk, the final
  // durable answer). Default: 30000 ms.
  std::chrono::milliseconds queue_timeout{30'000};
  // Messages up to this many bytes go to the queue whole once complete, with
  // other sessions' messages in one EnqueueBatch call; larger ones stream to
  // the queue in chunks while they arrive. Default: 262144 (256 KiB).
  uint64_t enqueue_inline_max = 256 * 1024;
  // Threads that run SMTP sessions (smtp.ini [main] nodes: a number, or
  // "cpus" for one per CPU). Default: 1.
  size_t io_threads = 1;
  // Default: 127.0.0.1:7071. Empty disables.
  std::string health_listen = "127.0.0.1:7071";
  // Default: 127.0.0.1:9471. Empty disables.
  std::string metrics_listen = "127.0.0.1:9471";
  // How often the config files are checked for changes, which reload the
  // config as SIGHUP does once they have stayed the same for as long again.
  // 0: no watching. Default: 2000 ms.
  std::chrono::milliseconds config_watch{2'000};

  // Most recipients per transaction; more get 452 4.5.3. Default: 1000.
  size_t max_recipients = 1000;
  // Sessions open at once, overall and per client IP; more get 421 4.7.0.
  // Default: 20000 and 100. 0 = no limit.
  size_t max_connections = 20000;
  size_t max_connections_per_ip = 100;
  // Header policy (Haraka's connection.ini [headers]).
  bool add_received = true;         // default true; false also for received_header=disabled
  // The comment after "by <me>" in Received: (outbound.ini received_header,
  // which in Haraka is the comment of the Received: its outbound adds).
  // Default: "Tern".
  std::string received_comment = "Tern";
  bool clean_auth_results = true;   // default true
  size_t max_header_lines = 1000;   // default 1000
  size_t max_received = 100;        // default 100; more: 554 5.4.6 loop
  // How long transactions in flight may take to finish after SIGTERM.
  // Default: 30 s (Haraka's force_shutdown_timeout).
  std::chrono::milliseconds shutdown_timeout{30'000};

  // TLS (STARTTLS and SMTPS). Both empty: no TLS. Default: tls_key.pem and
  // tls_cert.pem when both exist.
  std::string tls_key_file;
  std::string tls_cert_file;
  // TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3. Default: TLSv1.2.
  std::string tls_min_version = "TLSv1.2";
  // Default: empty, OpenSSL's default list.
  std::string tls_ciphers;
  // The certificates of config/tls/ (see above), sorted by cert_file.
  // Default: none.
  std::vector<TlsCertificateFiles> tls_sni_certificates;
  bool tls_enabled() const { return !tls_cert_file.empty() || !tls_sni_certificates.empty(); }
  // Client certificates (tls.ini [main] requestCert): the handshake asks
  // for one (a CertificateRequest), and its verification shows in the
  // Received: header as verify=OK|FAIL|NO. Default: true (Haraka's).
  bool tls_request_cert = true;
  // tls.ini [main] rejectUnauthorized and requireAuthorized[], as read;
  // they set ListenAddress::require_client_cert. Default: false, none.
  bool tls_reject_unauthorized = false;
  std::vector<uint16_t> tls_require_authorized;
  // tls.ini [main] ca: the PEM file of the CAs client certificates are
  // verified against, and whose names the CertificateRequest lists. Empty:
  // the system's default trusted CAs (SSL_CTX_set_default_verify_paths).
  // Default: empty.
  std::string tls_ca_file;

  AuthConfig auth;

  // PROXY protocol v1 (connection.ini [haproxy]). Default: enabled, no hosts.
  bool haproxy_enabled = true;
  std::vector<Cidr> haproxy_hosts;
  // How long a listed proxy may take to send its PROXY line (Haraka: 30 s,
  // not configurable; tests shorten it).
  std::chrono::milliseconds proxy_timeout{30'000};
  // How often each session thread measures how busy it was
  // (tern_ingest_session_thread_busy_percent). 5 s, not configurable; tests
  // shorten it.
  std::chrono::milliseconds thread_busy_interval{5'000};

  // Checks ranges and consistency; the error says which setting is wrong.
  absl::Status Validate() const;
};

// For a reload: sets in `loaded` every setting only a restart applies (what
// the listeners, session threads, queue client, health and metrics servers
// were built from) to its `running` value, so the new config describes the
// server as it runs, and returns those that differed, named by file and key,
// e.g. "smtp.ini [main] listen/smtps_port". Empty when a reload can apply
// all of `loaded`.
std::vector<std::string> KeepRestartOnlySettings(const IngestConfig& running, IngestConfig* loaded);

// Reads the files listed above from `dir` and validates the result.
absl::StatusOr<IngestConfig> LoadIngestConfig(const config::ConfigDir& dir);

// What a change should reload (tern.ini config_watch_ms): every place the
// files above are read from, the tls/ directory, and the key, certificate
// and CA files `config` names wherever they are.
std::vector<std::string> WatchedPaths(const config::ConfigDir& dir, const IngestConfig& config);

}  // namespace tern::ingest
