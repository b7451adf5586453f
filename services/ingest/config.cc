#include "services/ingest/config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"
#include "lib/config/queue_targets.h"

namespace tern::ingest {
namespace {

bool IsIpLiteral(const std::string& host, bool v6) {
  unsigned char buf[16];
  return inet_pton(v6 ? AF_INET6 : AF_INET, host.c_str(), buf) == 1;
}

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view item) {
  ListenAddress out;
  absl::string_view port_text;
  if (!item.empty() && item.front() == '[') {
    const size_t close = item.find(']');
    if (close == absl::string_view::npos || close + 1 >= item.size() || item[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "': expected [ipv6]:port"));
    }
    out.host = std::string(item.substr(1, close - 1));
    port_text = item.substr(close + 2);
    if (!IsIpLiteral(out.host, /*v6=*/true)) {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "': not an IPv6 address"));
    }
  } else {
    const size_t colon = item.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "': expected host:port"));
    }
    out.host = std::string(item.substr(0, colon));
    port_text = item.substr(colon + 1);
    if (!IsIpLiteral(out.host, /*v6=*/false)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", item, "': host must be an IPv4 address or [IPv6] address"));
    }
  }
  int port = -1;
  if (port_text.empty() || !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", item, "': bad port"));
  }
  out.port = static_cast<uint16_t>(port);
  return out;
}

}  // namespace

std::string ListenAddress::ToString() const {
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<std::vector<ListenAddress>> ParseListenList(absl::string_view value) {
  std::vector<ListenAddress> out;
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      continue;
    }
    TERN_ASSIGN_OR_RETURN(ListenAddress addr, ParseListenAddress(item));
    out.push_back(std::move(addr));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError("no address to listen on");
  }
  return out;
}

absl::Status IngestConfig::Validate() const {
  if (listen.empty()) {
    return absl::InvalidArgumentError("smtp.ini [main] listen: no address to listen on");
  }
  if (me.empty()) {
    return absl::InvalidArgumentError("me: empty host name");
  }
  if (max_bytes < 1024) {
    return absl::InvalidArgumentError("connection.ini [max] bytes: must be at least 1024");
  }
  // RFC 5321 §4.5.3.1.4: a server must accept command lines of 512 octets.
  if (max_line_length < 510 || max_line_length > 65536) {
    return absl::InvalidArgumentError("connection.ini [max] line_length: must be 510..65536");
  }
  if (max_data_line_length < 78 || max_data_line_length > 65536) {
    return absl::InvalidArgumentError("connection.ini [max] data_line_length: must be 78..65536");
  }
  if (inactivity_timeout.count() <= 0) {
    return absl::InvalidArgumentError("smtp.ini [main] inactivity_timeout: must be positive");
  }
  if (absl::Status s = config::CheckQueueTargets(queues); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [ingest] queue: ", s.message()));
  }
  if (queue_timeout.count() <= 0) {
    return absl::InvalidArgumentError("tern.ini [ingest] queue_timeout_ms: must be positive");
  }
  if (max_recipients == 0) {
    return absl::InvalidArgumentError("connection.ini [max] recipients: must be positive");
  }
  if (tls_key_file.empty() != tls_cert_file.empty()) {
    return absl::InvalidArgumentError("tls.ini [main]: key and cert go together");
  }
  for (const ListenAddress& l : listen) {
    if (l.implicit_tls && !tls_enabled()) {
      return absl::InvalidArgumentError(
          absl::StrCat("smtp.ini listen ", l.ToString(), " is the smtps_port but no TLS certificate is configured"));
    }
  }
  if (tls_min_version != "TLSv1" && tls_min_version != "TLSv1.1" && tls_min_version != "TLSv1.2" &&
      tls_min_version != "TLSv1.3") {
    return absl::InvalidArgumentError("tls.ini [main] minVersion: must be TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3");
  }
  return absl::OkStatus();
}

absl::StatusOr<IngestConfig> LoadIngestConfig(const config::ConfigDir& dir) {
  IngestConfig cfg;

  TERN_ASSIGN_OR_RETURN(config::IniFile smtp, dir.Ini("smtp.ini"));
  std::string listen = smtp.GetString("main", "listen", "127.0.0.1:2525");
  // Haraka's legacy listen_host/port: an extra address in front of `listen`.
  if (smtp.Has("main", "listen_host") || smtp.Has("main", "port")) {
    TERN_ASSIGN_OR_RETURN(int64_t port, smtp.GetInt("main", "port", 25));
    std::string host = smtp.GetString("main", "listen_host", "0.0.0.0");
    if (host.find(':') != std::string::npos && host.front() != '[') {
      host = absl::StrCat("[", host, "]");
    }
    listen = absl::StrCat(host, ":", port, ",", listen);
  }
  auto parsed_listen = ParseListenList(listen);
  if (!parsed_listen.ok()) {
    return smtp.KeyError("main", "listen", parsed_listen.status().message());
  }
  cfg.listen = *std::move(parsed_listen);
  TERN_ASSIGN_OR_RETURN(int64_t inactivity, smtp.GetInt("main", "inactivity_timeout", 300));
  if (inactivity <= 0 || inactivity > 86400) {
    return smtp.KeyError("main", "inactivity_timeout", "must be 1..86400 seconds");
  }
  cfg.inactivity_timeout = std::chrono::seconds(inactivity);
  // Haraka forks `nodes` worker processes; Tern runs that many session
  // threads in one process. One is the default, as in Haraka: in the 2 KB
  // bench on two cores a second thread gave no more messages per second and
  // cost ~12 % more CPU per message. More pay off when one thread is busy
  // all the time (tern_ingest_session_thread_busy_percent): many cores, TLS
  // handshakes, hashed AUTH passwords.
  const std::string nodes = smtp.GetString("main", "nodes", "1");
  if (nodes == "cpus") {
    cfg.io_threads = std::max(1u, std::thread::hardware_concurrency());
  } else {
    TERN_ASSIGN_OR_RETURN(int64_t n, smtp.GetInt("main", "nodes", 1));
    if (n < 1 || n > 256) {
      return smtp.KeyError("main", "nodes", "must be 1..256 or cpus");
    }
    cfg.io_threads = static_cast<size_t>(n);
  }
  TERN_ASSIGN_OR_RETURN(int64_t smtps_port, smtp.GetInt("main", "smtps_port", 465));
  if (smtps_port < 0 || smtps_port > 65535) {
    return smtp.KeyError("main", "smtps_port", "must be 0..65535");
  }
  for (ListenAddress& l : cfg.listen) {
    l.implicit_tls = smtps_port != 0 && l.port == smtps_port;
  }
  TERN_ASSIGN_OR_RETURN(int64_t force_shutdown, smtp.GetInt("main", "force_shutdown_timeout", 30));
  if (force_shutdown < 0 || force_shutdown > 3600) {
    return smtp.KeyError("main", "force_shutdown_timeout", "must be 0..3600 seconds");
  }
  cfg.shutdown_timeout = std::chrono::seconds(force_shutdown);

  TERN_ASSIGN_OR_RETURN(cfg.me, dir.Me());

  TERN_ASSIGN_OR_RETURN(std::optional<std::string> acl_text, dir.Text("relay_acl_allow"));
  if (acl_text.has_value()) {
    TERN_ASSIGN_OR_RETURN(cfg.relay_acl, RelayAcl::Parse(*acl_text, dir.PathOf("relay_acl_allow")));
  }

  TERN_ASSIGN_OR_RETURN(config::IniFile conn, dir.Ini("connection.ini"));
  TERN_ASSIGN_OR_RETURN(int64_t bytes, conn.GetInt("max", "bytes", 26214400));
  if (bytes < 1024) {
    return conn.KeyError("max", "bytes", "must be at least 1024");
  }
  cfg.max_bytes = static_cast<uint64_t>(bytes);
  TERN_ASSIGN_OR_RETURN(int64_t line_length, conn.GetInt("max", "line_length", 512));
  if (line_length < 510 || line_length > 65536) {
    return conn.KeyError("max", "line_length", "must be 510..65536 (RFC 5321 needs 512 with CRLF)");
  }
  cfg.max_line_length = static_cast<size_t>(line_length);
  TERN_ASSIGN_OR_RETURN(int64_t data_line_length, conn.GetInt("max", "data_line_length", 992));
  if (data_line_length < 78 || data_line_length > 65536) {
    return conn.KeyError("max", "data_line_length", "must be 78..65536");
  }
  cfg.max_data_line_length = static_cast<size_t>(data_line_length);
  TERN_ASSIGN_OR_RETURN(int64_t recipients, conn.GetInt("max", "recipients", 1000));
  if (recipients < 1 || recipients > 100000) {
    return conn.KeyError("max", "recipients", "must be 1..100000");
  }
  cfg.max_recipients = static_cast<size_t>(recipients);
  TERN_ASSIGN_OR_RETURN(int64_t connections, conn.GetInt("max", "connections", 20000));
  TERN_ASSIGN_OR_RETURN(int64_t per_ip, conn.GetInt("max", "connections_per_ip", 100));
  if (connections < 0 || per_ip < 0) {
    return conn.KeyError("max", connections < 0 ? "connections" : "connections_per_ip", "must be 0 or more");
  }
  cfg.max_connections = static_cast<size_t>(connections);
  cfg.max_connections_per_ip = static_cast<size_t>(per_ip);
  TERN_ASSIGN_OR_RETURN(cfg.add_received, conn.GetBool("headers", "add_received", true));
  TERN_ASSIGN_OR_RETURN(cfg.clean_auth_results, conn.GetBool("headers", "clean_auth_results", true));
  TERN_ASSIGN_OR_RETURN(int64_t max_lines, conn.GetInt("headers", "max_lines", 1000));
  if (max_lines < 10 || max_lines > 100000) {
    return conn.KeyError("headers", "max_lines", "must be 10..100000");
  }
  cfg.max_header_lines = static_cast<size_t>(max_lines);
  TERN_ASSIGN_OR_RETURN(int64_t max_received, conn.GetInt("headers", "max_received", 100));
  if (max_received < 1 || max_received > 10000) {
    return conn.KeyError("headers", "max_received", "must be 1..10000");
  }
  cfg.max_received = static_cast<size_t>(max_received);
  TERN_ASSIGN_OR_RETURN(cfg.haproxy_enabled, conn.GetBool("haproxy", "enabled", true));
  for (const std::string& host : conn.GetList("haproxy", "hosts")) {
    auto cidr = Cidr::Parse(host);
    if (!cidr.ok()) {
      return conn.KeyError("haproxy", "hosts", cidr.status().message());
    }
    cfg.haproxy_hosts.push_back(*cidr);
  }

  TERN_ASSIGN_OR_RETURN(config::IniFile tls, dir.Ini("tls.ini"));
  {
    const bool explicit_files = tls.Has("main", "key") || tls.Has("main", "cert");
    auto resolve = [&dir](const std::string& name) {
      return dir.PathOf(name);
    };
    const std::string key = resolve(tls.GetString("main", "key", "tls_key.pem"));
    const std::string cert = resolve(tls.GetString("main", "cert", "tls_cert.pem"));
    const bool have_key = ::access(key.c_str(), R_OK) == 0;
    const bool have_cert = ::access(cert.c_str(), R_OK) == 0;
    if (have_key && have_cert) {
      cfg.tls_key_file = key;
      cfg.tls_cert_file = cert;
    } else if (explicit_files || have_key || have_cert) {
      return tls.KeyError("main", have_key ? "cert" : "key",
                          absl::StrCat("cannot read ", have_key ? cert : key, " (TLS needs both key and cert)"));
    }
    // Haraka's config/tls/: one PEM bundle per file, chosen by SNI.
    const std::filesystem::path tls_dir = resolve("tls");
    std::error_code ec;
    if (std::filesystem::is_directory(tls_dir, ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(tls_dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (!name.empty() && name[0] != '.' && entry.is_regular_file(ec)) {
          cfg.tls_sni_bundles.push_back(entry.path().string());
        }
      }
      if (ec) {
        return absl::InvalidArgumentError(absl::StrCat("cannot read ", tls_dir.string(), ": ", ec.message()));
      }
      std::sort(cfg.tls_sni_bundles.begin(), cfg.tls_sni_bundles.end());
    }
    cfg.tls_min_version = tls.GetString("main", "minVersion", "TLSv1.2");
    cfg.tls_ciphers = tls.GetString("main", "ciphers", "");
  }

  TERN_ASSIGN_OR_RETURN(config::IniFile auth_ini, dir.Ini("auth_flat_file.ini"));
  TERN_ASSIGN_OR_RETURN(cfg.auth, LoadAuthConfig(auth_ini));

  TERN_ASSIGN_OR_RETURN(config::IniFile tern, dir.Ini("tern.ini"));
  absl::StatusOr<std::vector<std::string>> queues =
      config::ReadQueueTargets(tern, "ingest", "127.0.0.1:7070");
  if (!queues.ok()) {
    return tern.KeyError("ingest", "queue", queues.status().message());
  }
  cfg.queues = *std::move(queues);
  TERN_ASSIGN_OR_RETURN(int64_t queue_timeout_ms, tern.GetInt("ingest", "queue_timeout_ms", 30000));
  if (queue_timeout_ms <= 0) {
    return tern.KeyError("ingest", "queue_timeout_ms", "must be positive");
  }
  cfg.queue_timeout = std::chrono::milliseconds(queue_timeout_ms);
  TERN_ASSIGN_OR_RETURN(int64_t inline_max, tern.GetInt("ingest", "enqueue_inline_max", 256 * 1024));
  if (inline_max < 0 || inline_max > (64 << 20)) {
    return tern.KeyError("ingest", "enqueue_inline_max", "must be between 0 and 67108864 bytes");
  }
  cfg.enqueue_inline_max = static_cast<uint64_t>(inline_max);
  cfg.health_listen = tern.GetString("ingest", "health_listen", "127.0.0.1:7071");
  cfg.metrics_listen = tern.GetString("ingest", "metrics_listen", "127.0.0.1:9471");

  TERN_RETURN_IF_ERROR(cfg.Validate());
  return cfg;
}

}  // namespace tern::ingest
