#include "services/deliverer/tls_policy.h"

#include <arpa/inet.h>
#include <openssl/ssl.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "asio/ssl/context.hpp"
#include "lib/net/connection.h"
#include "lib/common/status_macros.h"

namespace tern::deliverer {
namespace {

// 4 or 16 bytes of `text`, or false.
bool ParseIp(absl::string_view text, bool* v6, unsigned char* out) {
  const std::string s(text);
  if (inet_pton(AF_INET, s.c_str(), out) == 1) {
    *v6 = false;
    return true;
  }
  if (inet_pton(AF_INET6, s.c_str(), out) == 1) {
    *v6 = true;
    // An IPv4-mapped address compares as IPv4.
    static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(out, kMapped, 12) == 0) {
      std::memmove(out, out + 12, 4);
      *v6 = false;
    }
    return true;
  }
  return false;
}

bool PrefixEqual(const unsigned char* a, const unsigned char* b, int bits) {
  const int full = bits / 8;
  if (std::memcmp(a, b, full) != 0) {
    return false;
  }
  const int rest = bits % 8;
  if (rest == 0) {
    return true;
  }
  const unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

// Haraka's [main] → [outbound] inheritance for one key.
std::optional<std::string> Inherited(const config::IniFile& ini, absl::string_view key) {
  if (auto v = ini.Get("outbound", key)) {
    return v;
  }
  return ini.Get("main", key);
}

std::string Resolve(const config::ConfigDir& dir, const std::string& path) {
  return path.empty() ? path : dir.PathOf(path);
}

}  // namespace

absl::StatusOr<HostMatcher> HostMatcher::Parse(const std::vector<std::string>& entries) {
  HostMatcher m;
  for (const std::string& raw : entries) {
    const std::string entry = absl::AsciiStrToLower(absl::StripAsciiWhitespace(raw));
    if (entry.empty()) {
      continue;
    }
    const size_t slash = entry.find('/');
    Net net;
    if (slash != std::string::npos) {
      int prefix = -1;
      if (!ParseIp(absl::string_view(entry).substr(0, slash), &net.v6, net.bytes) ||
          !absl::SimpleAtoi(absl::string_view(entry).substr(slash + 1), &prefix) || prefix < 0 ||
          prefix > (net.v6 ? 128 : 32)) {
        return absl::InvalidArgumentError(absl::StrCat("bad CIDR block \"", entry, "\""));
      }
      net.prefix = prefix;
      m.nets_.push_back(net);
    } else if (ParseIp(entry, &net.v6, net.bytes)) {
      net.prefix = net.v6 ? 128 : 32;
      m.nets_.push_back(net);
    } else if (absl::StartsWith(entry, ".")) {
      m.suffixes_.push_back(entry);
    } else {
      m.names_.push_back(entry);
    }
  }
  return m;
}

bool HostMatcher::Matches(absl::string_view ip, absl::string_view mx_host, absl::string_view domain) const {
  if (!ip.empty() && !nets_.empty()) {
    bool v6 = false;
    unsigned char bytes[16];
    if (ParseIp(ip, &v6, bytes)) {
      for (const Net& n : nets_) {
        if (n.v6 == v6 && PrefixEqual(n.bytes, bytes, n.prefix)) {
          return true;
        }
      }
    }
  }
  for (absl::string_view name : {mx_host, domain}) {
    if (name.empty()) {
      continue;
    }
    const std::string lower = absl::AsciiStrToLower(absl::StripSuffix(name, "."));
    for (const auto& n : names_) {
      if (lower == n) {
        return true;
      }
    }
    for (const auto& s : suffixes_) {
      if (absl::EndsWith(lower, s)) {
        return true;
      }
    }
  }
  // An exchange written as an IP literal (a static route) matches listed
  // addresses too, as Haraka's exchange "1.2.3.4" does.
  if (!mx_host.empty() && mx_host != ip) {
    bool v6 = false;
    unsigned char bytes[16];
    if (ParseIp(mx_host, &v6, bytes)) {
      for (const Net& n : nets_) {
        if (n.v6 == v6 && PrefixEqual(n.bytes, bytes, n.prefix)) {
          return true;
        }
      }
    }
  }
  return false;
}

const char* TlsModeName(TlsMode mode) {
  switch (mode) {
    case TlsMode::kNone:
      return "none";
    case TlsMode::kOpportunistic:
      return "opportunistic";
    case TlsMode::kRequired:
      return "required";
  }
  return "?";
}

absl::StatusOr<TlsOutboundConfig> TlsOutboundConfig::Load(const config::ConfigDir& dir) {
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini("tls.ini"));
  TlsOutboundConfig c;
  c.ciphers = Inherited(ini, "ciphers").value_or("");
  c.min_version = Inherited(ini, "minVersion").value_or("");
  c.key = Resolve(dir, Inherited(ini, "key").value_or(""));
  c.cert = Resolve(dir, Inherited(ini, "cert").value_or(""));
  c.ca = Resolve(dir, Inherited(ini, "ca").value_or(""));
  const std::string section = ini.Has("outbound", "rejectUnauthorized") ? "outbound" : "main";
  TERN_ASSIGN_OR_RETURN(c.reject_unauthorized, ini.GetBool(section, "rejectUnauthorized", false));
  if (c.key.empty() != c.cert.empty()) {
    return ini.KeyError("outbound", c.key.empty() ? "key" : "cert", "key and cert must be set together");
  }
  if (!c.min_version.empty() && !net::TlsVersionFromName(c.min_version).has_value()) {
    return ini.KeyError("outbound", "minVersion", "must be TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3");
  }
  auto no_tls = HostMatcher::Parse(ini.GetList("outbound", "no_tls_hosts"));
  if (!no_tls.ok()) {
    return ini.KeyError("outbound", "no_tls_hosts", no_tls.status().message());
  }
  c.no_tls_hosts = *std::move(no_tls);
  auto force = HostMatcher::Parse(ini.GetList("outbound", "force_tls_hosts"));
  if (!force.ok()) {
    return ini.KeyError("outbound", "force_tls_hosts", force.status().message());
  }
  c.force_tls_hosts = *std::move(force);
  // Fail at startup, not at the first delivery, when a file is unusable.
  TERN_ASSIGN_OR_RETURN(c.context, c.MakeContext());
  return c;
}

absl::StatusOr<std::shared_ptr<asio::ssl::context>> TlsOutboundConfig::MakeContextWithClientCert(
    const std::string& client_cert, const std::string& client_key, const std::string& where) const {
  return BuildContext(client_cert, client_key, absl::StrCat(where, " tls_cert"), absl::StrCat(where, " tls_key"));
}

absl::StatusOr<std::shared_ptr<asio::ssl::context>> TlsOutboundConfig::MakeContext() const {
  return BuildContext(cert, key, "tls.ini cert", "tls.ini key");
}

absl::StatusOr<std::shared_ptr<asio::ssl::context>> TlsOutboundConfig::BuildContext(
    const std::string& client_cert, const std::string& client_key, const std::string& cert_name,
    const std::string& key_name) const {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX* native = ctx->native_handle();
  SSL_CTX_set_options(native, SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_COMPRESSION);
  asio::error_code ec;
  ctx->set_default_verify_paths(ec);
  if (!ca.empty()) {
    ctx->load_verify_file(ca, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("tls.ini ca: cannot load ", ca, ": ", ec.message()));
    }
  }
  if (!client_cert.empty()) {
    ctx->use_certificate_chain_file(client_cert, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(cert_name, ": cannot load ", client_cert, ": ", ec.message()));
    }
    ctx->use_private_key_file(client_key, asio::ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(key_name, ": cannot load ", client_key, ": ", ec.message()));
    }
  }
  if (!ciphers.empty() && SSL_CTX_set_cipher_list(native, ciphers.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tls.ini ciphers: no usable cipher in \"", ciphers, "\""));
  }
  if (!min_version.empty()) {
    SSL_CTX_set_min_proto_version(native, net::TlsVersionFromName(min_version).value_or(TLS1_2_VERSION));
  }
  // Every session may need DANE (RFC 7672); the context is shared once built.
  if (absl::Status s = net::EnableDane(*ctx); !s.ok()) {
    return s;
  }
  return ctx;
}

TlsDecision TlsOutboundConfig::Decide(bool enable_tls, RouteTls route_tls, bool broken_tls, absl::string_view ip,
                                      absl::string_view mx_host, absl::string_view domain) const {
  TlsDecision d;
  if (route_tls == RouteTls::kRequired || route_tls == RouteTls::kImplicit) {
    // Implicit TLS has no plain-text fallback by its nature; both verify.
    d.mode = TlsMode::kRequired;
    d.verify = true;
    d.why = route_tls == RouteTls::kImplicit ? "route tls=implicit" : "route tls=required";
    return d;
  }
  if (force_tls_hosts.Matches(ip, mx_host, domain)) {
    d.mode = TlsMode::kRequired;
    d.verify = true;
    d.why = "force_tls_hosts";
    return d;
  }
  d.verify = reject_unauthorized;
  if (!enable_tls) {
    d.mode = TlsMode::kNone;
    d.why = "enable_tls=false";
  } else if (route_tls == RouteTls::kNone) {
    d.mode = TlsMode::kNone;
    d.why = "route tls=none";
  } else if (no_tls_hosts.Matches(ip, mx_host, domain)) {
    d.mode = TlsMode::kNone;
    d.why = "no_tls_hosts";
  } else if (broken_tls) {
    d.mode = TlsMode::kNone;
    d.why = "broken_tls";
  } else {
    d.mode = TlsMode::kOpportunistic;
  }
  return d;
}

}  // namespace tern::deliverer
