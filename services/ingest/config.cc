#include "services/ingest/config.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"
#include "lib/config/config_watcher.h"
#include "lib/config/outbound_ini.h"
#include "lib/config/queue_targets.h"
#include "lib/net/connection.h"

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

// What one file of config/tls/ holds: its first private key and its first
// certificate (the leaf of its chain), either may be missing.
struct PemFile {
  std::string path;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key{nullptr, EVP_PKEY_free};
  std::unique_ptr<X509, decltype(&X509_free)> leaf{nullptr, X509_free};
};

// Frees what OpenSSL allocated (OPENSSL_free is a macro).
struct OpenSslFree {
  void operator()(void* p) const { OPENSSL_free(p); }
};

// OpenSSL's reason for the last error, and the error queue cleared.
std::string OpenSslError() {
  std::string text = net::TakeOpensslError();
  return text.empty() ? "unknown error" : text;
}

// Reads every PEM block of `path` and keeps its first private key and its
// first certificate (the leaf of its chain); other blocks (DH parameters,
// ...) are skipped. Every certificate and key must decode, as the server
// loads them all. An error names the file.
absl::StatusOr<PemFile> ReadPemFile(const std::string& path) {
  PemFile out;
  out.path = path;
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(path.c_str(), "r"), BIO_free);
  if (bio == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the file (", OpenSslError(), ")"));
  }
  while (true) {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
      const unsigned long err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
        ERR_clear_error();  // no more blocks
        break;
      }
      return absl::InvalidArgumentError(absl::StrCat(path, ": unreadable PEM (", OpenSslError(), ")"));
    }
    std::unique_ptr<char, OpenSslFree> name_owner(name);
    std::unique_ptr<char, OpenSslFree> header_owner(header);
    std::unique_ptr<unsigned char, OpenSslFree> data_owner(data);
    const absl::string_view type(name);
    const unsigned char* der = data;
    if (type == "CERTIFICATE" || type == "X509 CERTIFICATE" || type == "TRUSTED CERTIFICATE") {
      std::unique_ptr<X509, decltype(&X509_free)> cert(
          type == "TRUSTED CERTIFICATE" ? d2i_X509_AUX(nullptr, &der, len) : d2i_X509(nullptr, &der, len),
          X509_free);
      if (cert == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unreadable PEM certificate (", OpenSslError(), ")"));
      }
      if (out.leaf == nullptr) {
        out.leaf = std::move(cert);
      }
    } else if (absl::EndsWith(type, "PRIVATE KEY")) {
      if (type == "ENCRYPTED PRIVATE KEY" || absl::StrContains(header, "ENCRYPTED")) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": an encrypted private key (keys must be stored without a passphrase)"));
      }
      std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(d2i_AutoPrivateKey(nullptr, &der, len),
                                                              EVP_PKEY_free);
      if (key == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unreadable PEM private key (", OpenSslError(), ")"));
      }
      if (out.key == nullptr) {
        out.key = std::move(key);
      }
    }
  }
  if (out.key == nullptr && out.leaf == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no PEM private key or certificate"));
  }
  return out;
}

// The regular files under `dir` and its subdirectories, sorted by path;
// names starting with "." are skipped at every level (editor files, and the
// "..data" links of a Kubernetes secret volume, whose files appear as links
// beside them). Symbolic links are followed, as far as kMaxDepth.
absl::StatusOr<std::vector<std::string>> ListTlsDirectory(const std::filesystem::path& dir) {
  constexpr int kMaxDepth = 8;
  std::vector<std::string> files;
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(dir, std::filesystem::directory_options::follow_directory_symlink,
                                                   ec);
  for (; !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code entry_ec;
    if (name.empty() || name[0] == '.') {
      if (it->is_directory(entry_ec)) {
        it.disable_recursion_pending();
      }
      continue;
    }
    if (it.depth() >= kMaxDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat(it->path().string(), ": nested too deeply in ", dir.string(), " (a symbolic link loop?)"));
    }
    const bool regular = it->is_regular_file(entry_ec);
    if (entry_ec) {
      // E.g. a symbolic link to a file that is not there.
      return absl::InvalidArgumentError(absl::StrCat(it->path().string(), ": cannot read (", entry_ec.message(), ")"));
    }
    if (regular) {
      files.push_back(it->path().string());
    }
  }
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", dir.string(), ": ", ec.message()));
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Haraka's config/tls/ with its subdirectories. A file with a key and a
// certificate is a bundle (the key must fit its first certificate). A file
// with certificates only is paired with the key that fits its first one,
// from whichever file holds it: Haraka pairs by name (a key file named after
// the certificate's CN, "_" for "*"), which fits the same key in every layout
// it accepts, and fitting needs no naming rule and cannot pair the wrong key.
// Anything unusable stops startup with the file's name: a key no certificate
// takes, a certificate no key fits, a file with neither or broken PEM.
absl::StatusOr<std::vector<TlsCertificateFiles>> LoadTlsDirectory(const std::filesystem::path& dir) {
  std::vector<TlsCertificateFiles> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return out;
  }
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> paths, ListTlsDirectory(dir));
  std::vector<PemFile> files;
  for (const std::string& path : paths) {
    TERN_ASSIGN_OR_RETURN(PemFile file, ReadPemFile(path));
    files.push_back(std::move(file));
  }
  auto fits = [](const PemFile& cert, const PemFile& key) {
    const bool ok = X509_check_private_key(cert.leaf.get(), key.key.get()) == 1;
    ERR_clear_error();
    return ok;
  };
  for (const PemFile& f : files) {
    if (f.leaf != nullptr && f.key != nullptr) {
      if (!fits(f, f)) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.path, ": the private key does not fit the (first) certificate"));
      }
      out.push_back({f.path, f.path});
    }
  }
  for (const PemFile& f : files) {
    if (f.leaf == nullptr) {
      continue;
    }
    if (f.key == nullptr) {
      auto key = std::find_if(files.begin(), files.end(),
                              [&](const PemFile& k) { return k.key != nullptr && fits(f, k); });
      if (key == files.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.path, ": a certificate without its private key (no key in ", dir.string(), " fits it)"));
      }
      out.push_back({f.path, key->path});
    }
  }
  for (const PemFile& f : files) {
    if (f.key != nullptr && f.leaf == nullptr &&
        std::none_of(files.begin(), files.end(),
                     [&](const PemFile& c) { return c.leaf != nullptr && fits(c, f); })) {
      return absl::InvalidArgumentError(
          absl::StrCat(f.path, ": a private key without a certificate (it fits no certificate in ", dir.string(),
                       ")"));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const TlsCertificateFiles& a, const TlsCertificateFiles& b) { return a.cert_file < b.cert_file; });
  return out;
}

// tls.ini's `ca`: a readable file of PEM certificates, at least one.
absl::Status CheckCaFile(const std::string& path) {
  absl::StatusOr<PemFile> file = ReadPemFile(path);
  if (!file.ok()) {
    return file.status();
  }
  if (file->leaf == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no PEM certificate in it"));
  }
  return absl::OkStatus();
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

std::vector<std::string> KeepRestartOnlySettings(const IngestConfig& running, IngestConfig* loaded) {
  config::RestartOnlySettings kept;
  const bool same_addresses =
      std::equal(running.listen.begin(), running.listen.end(), loaded->listen.begin(), loaded->listen.end(),
                 [](const ListenAddress& x, const ListenAddress& y) {
                   return x.host == y.host && x.port == y.port && x.implicit_tls == y.implicit_tls;
                 });
  const bool same_client_certs =
      std::equal(running.listen.begin(), running.listen.end(), loaded->listen.begin(), loaded->listen.end(),
                 [](const ListenAddress& x, const ListenAddress& y) {
                   return x.require_client_cert == y.require_client_cert;
                 });
  kept.Note(!same_addresses, "smtp.ini [main] listen/smtps_port");
  kept.Note(same_addresses && !same_client_certs, "tls.ini [main] rejectUnauthorized/requireAuthorized");
  loaded->listen = running.listen;
  // Those two set ListenAddress::require_client_cert, named above.
  loaded->tls_reject_unauthorized = running.tls_reject_unauthorized;
  loaded->tls_require_authorized = running.tls_require_authorized;
  kept.Keep(running.io_threads, loaded->io_threads, "smtp.ini [main] nodes");
  kept.Keep(running.queues, loaded->queues, "tern.ini [ingest] queue");
  kept.Keep(running.queue_timeout, loaded->queue_timeout, "tern.ini [ingest] queue_timeout_ms");
  kept.Keep(running.health_listen, loaded->health_listen, "tern.ini [ingest] health_listen");
  kept.Keep(running.metrics_listen, loaded->metrics_listen, "tern.ini [ingest] metrics_listen");
  kept.Keep(running.config_watch, loaded->config_watch, "tern.ini [ingest] config_watch_ms");
  // Not read from files (tests set them): kept without a word.
  loaded->proxy_timeout = running.proxy_timeout;
  loaded->thread_busy_interval = running.thread_busy_interval;
  return std::move(kept.names);
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
  if (!net::TlsVersionFromName(tls_min_version).has_value()) {
    return absl::InvalidArgumentError("tls.ini [main] minVersion: must be TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3");
  }
  for (const ListenAddress& l : listen) {
    if (!l.require_client_cert) {
      continue;
    }
    if (!tls_request_cert) {
      return absl::InvalidArgumentError(absl::StrCat("tls.ini [main]: listen ", l.ToString(),
                                                     " requires client certificates but requestCert=false"));
    }
    if (!tls_enabled()) {
      return absl::InvalidArgumentError(absl::StrCat("tls.ini [main]: listen ", l.ToString(),
                                                     " requires client certificates but no TLS certificate is "
                                                     "configured"));
    }
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
  TERN_ASSIGN_OR_RETURN(std::optional<std::string> certs_text, dir.Text("relay_clientcerts"));
  if (certs_text.has_value()) {
    TERN_ASSIGN_OR_RETURN(cfg.relay_clientcerts,
                          RelayClientCerts::Parse(*certs_text, dir.PathOf("relay_clientcerts")));
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
  TERN_ASSIGN_OR_RETURN(config::IniFile outbound, config::LoadOutboundIni(dir));
  if (std::optional<std::string> comment = outbound.Get("main", "received_header")) {
    const absl::string_view text = absl::StripAsciiWhitespace(*comment);
    if (absl::EqualsIgnoreCase(text, "disabled")) {
      cfg.add_received = false;
    } else if (!text.empty()) {
      // It goes into a header comment as it is: what could end the comment
      // or the header, or is not plain ASCII, is refused rather than changed.
      constexpr size_t kMaxComment = 100;
      const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
        return c >= 0x20 && c <= 0x7e && c != '(' && c != ')' && c != '\\';
      });
      if (!plain || text.size() > kMaxComment) {
        return outbound.KeyError("main", "received_header",
                                 absl::StrCat("'", text, "' must be at most ", kMaxComment,
                                              " printable ASCII characters without '(', ')' or '\\'"));
      }
      cfg.received_comment = std::string(text);
    }
  }
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
    // Haraka's config/tls/: bundles and key/certificate files, chosen by SNI.
    TERN_ASSIGN_OR_RETURN(cfg.tls_sni_certificates, LoadTlsDirectory(resolve("tls")));
    cfg.tls_min_version = tls.GetString("main", "minVersion", "TLSv1.2");
    cfg.tls_ciphers = tls.GetString("main", "ciphers", "");

    // Client certificates, with Haraka's defaults and its rule for which
    // listeners require one (tls_socket.js get_rejectUnauthorized).
    TERN_ASSIGN_OR_RETURN(cfg.tls_request_cert, tls.GetBool("main", "requestCert", true));
    TERN_ASSIGN_OR_RETURN(cfg.tls_reject_unauthorized, tls.GetBool("main", "rejectUnauthorized", false));
    for (const std::string& item : tls.GetList("main", "requireAuthorized")) {
      int port = 0;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &port) || port < 1 || port > 65535) {
        return tls.KeyError("main", "requireAuthorized", absl::StrCat("'", item, "' is not a port (1..65535)"));
      }
      cfg.tls_require_authorized.push_back(static_cast<uint16_t>(port));
    }
    if (!cfg.tls_request_cert && (cfg.tls_reject_unauthorized || !cfg.tls_require_authorized.empty())) {
      // Node.js (so Haraka) ignores them then; here that would leave a port
      // open that the file says is closed.
      return tls.KeyError("main", cfg.tls_reject_unauthorized ? "rejectUnauthorized" : "requireAuthorized",
                          "needs requestCert=true (a certificate that is not asked for cannot be required)");
    }
    for (ListenAddress& l : cfg.listen) {
      l.require_client_cert =
          cfg.tls_reject_unauthorized || std::find(cfg.tls_require_authorized.begin(),
                                                   cfg.tls_require_authorized.end(), l.port) !=
                                             cfg.tls_require_authorized.end();
    }
    if (const std::string ca_name = tls.GetString("main", "ca", ""); !ca_name.empty()) {
      const std::string ca = resolve(ca_name);
      if (absl::Status s = CheckCaFile(ca); !s.ok()) {
        return tls.KeyError("main", "ca", s.message());
      }
      cfg.tls_ca_file = ca;
    }
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
  TERN_ASSIGN_OR_RETURN(cfg.config_watch, config::ConfigWatchInterval(tern, "ingest"));

  TERN_RETURN_IF_ERROR(cfg.Validate());
  return cfg;
}

std::vector<std::string> WatchedPaths(const config::ConfigDir& dir, const IngestConfig& config) {
  // tls_key.pem and tls_cert.pem (the defaults) too, so that a key pair
  // added where none was, e.g. to an optional Kubernetes Secret, turns TLS
  // on.
  std::vector<std::string> paths = config::WatchPaths(
      dir, {"smtp.ini", "me", "relay_acl_allow", "relay_clientcerts", "connection.ini", "tls.ini", "tls",
            "tls_key.pem", "tls_cert.pem", "auth_flat_file.ini", "tern.ini", "log.ini", "hooks.ini",
            "plugin_timeout"});
  for (std::string& path : config::OutboundIniWatchPaths(dir)) {
    paths.push_back(std::move(path));
  }
  for (const std::string* file : {&config.tls_key_file, &config.tls_cert_file, &config.tls_ca_file}) {
    if (!file->empty()) {
      paths.push_back(*file);
    }
  }
  return paths;
}

}  // namespace tern::ingest
