#include "services/ingest/relay_acl.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "lib/common/status_macros.h"

namespace tern::ingest {

std::optional<IpAddress> IpAddress::Parse(absl::string_view text) {
  const std::string s(text);
  IpAddress ip;
  in_addr v4;
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    std::memcpy(ip.bytes.data(), &v4, 4);
    return ip;
  }
  in6_addr v6;
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(&v6, kMappedPrefix, sizeof(kMappedPrefix)) == 0) {
      std::memcpy(ip.bytes.data(), reinterpret_cast<const uint8_t*>(&v6) + 12, 4);
      return ip;
    }
    ip.v6 = true;
    std::memcpy(ip.bytes.data(), &v6, 16);
    return ip;
  }
  return std::nullopt;
}

absl::StatusOr<Cidr> Cidr::Parse(absl::string_view text) {
  const size_t slash = text.find('/');
  const absl::string_view addr = text.substr(0, slash);
  // Parse without the IPv4-mapped folding: "::ffff:0:0/96" is an IPv6 net.
  const std::string s(addr);
  Cidr cidr;
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    std::memcpy(cidr.network.bytes.data(), &v4, 4);
  } else if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    cidr.network.v6 = true;
    std::memcpy(cidr.network.bytes.data(), &v6, 16);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("not an IP address: '", addr, "'"));
  }
  const int max_prefix = cidr.network.v6 ? 128 : 32;
  cidr.prefix = max_prefix;
  if (slash != absl::string_view::npos) {
    const absl::string_view len = text.substr(slash + 1);
    int prefix = -1;
    if (len.empty() || len.size() > 3 || !absl::SimpleAtoi(len, &prefix) || prefix < 0 || prefix > max_prefix ||
        !absl::ascii_isdigit(static_cast<unsigned char>(len[0]))) {
      return absl::InvalidArgumentError(absl::StrCat("bad prefix length '", len, "' (0..", max_prefix, ")"));
    }
    cidr.prefix = prefix;
  }
  // Clear host bits so Contains() can compare whole bytes.
  for (int bit = cidr.prefix; bit < max_prefix; ++bit) {
    cidr.network.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }
  return cidr;
}

bool Cidr::Contains(const IpAddress& ip) const {
  if (ip.v6 != network.v6) {
    return false;
  }
  const int full = prefix / 8;
  if (std::memcmp(ip.bytes.data(), network.bytes.data(), full) != 0) {
    return false;
  }
  const int rest = prefix % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xffu << (8 - rest));
  return (ip.bytes[full] & mask) == network.bytes[full];
}

namespace {

// Calls `entry` with each entry of a one-entry-per-line file (`#` starts a
// comment; blank lines are skipped) and its line number; stops at, and
// returns, the first error.
absl::Status ForEachEntry(absl::string_view text,
                          const std::function<absl::Status(absl::string_view, int)>& entry) {
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) {
      if (absl::Status s = entry(line, line_number); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RelayAcl> RelayAcl::Parse(absl::string_view text, absl::string_view file_name) {
  RelayAcl acl;
  TERN_RETURN_IF_ERROR(ForEachEntry(text, [&](absl::string_view line, int line_number) -> absl::Status {
    auto cidr = Cidr::Parse(line);
    if (!cidr.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_name, ":", line_number, ": bad relay ACL entry: ", cidr.status().message()));
    }
    acl.networks_.push_back(*cidr);
    return absl::OkStatus();
  }));
  return acl;
}

absl::StatusOr<RelayClientCerts> RelayClientCerts::Parse(absl::string_view text, absl::string_view file_name) {
  RelayClientCerts certs;
  TERN_RETURN_IF_ERROR(ForEachEntry(text, [&](absl::string_view line, int line_number) -> absl::Status {
    // `openssl x509 -fingerprint -sha256` prints "sha256 Fingerprint=AB:CD:...".
    if (const size_t eq = line.rfind('='); eq != absl::string_view::npos) {
      line.remove_prefix(eq + 1);
    }
    std::string hex = absl::AsciiStrToLower(absl::StrReplaceAll(line, {{":", ""}}));
    if (hex.size() != 64 || !std::all_of(hex.begin(), hex.end(), absl::ascii_isxdigit)) {
      return absl::InvalidArgumentError(absl::StrCat(file_name, ":", line_number, ": '", line,
                                                      "' is not a SHA-256 fingerprint (64 hex digits, colons allowed)"));
    }
    certs.fingerprints_.insert(std::move(hex));
    return absl::OkStatus();
  }));
  return certs;
}

bool RelayClientCerts::Allows(absl::string_view cert_sha256, absl::string_view pubkey_sha256) const {
  return (!cert_sha256.empty() && fingerprints_.contains(cert_sha256)) ||
         (!pubkey_sha256.empty() && fingerprints_.contains(pubkey_sha256));
}

RelayAcl RelayAcl::Default() {
  RelayAcl acl;
  acl.networks_.push_back(*Cidr::Parse("127.0.0.1/32"));
  acl.networks_.push_back(*Cidr::Parse("::1/128"));
  return acl;
}

bool RelayAcl::Allows(absl::string_view ip) const {
  auto parsed = IpAddress::Parse(ip);
  return parsed.has_value() && Allows(*parsed);
}

bool RelayAcl::Allows(const IpAddress& ip) const {
  for (const Cidr& net : networks_) {
    if (net.Contains(ip)) {
      return true;
    }
  }
  return false;
}

}  // namespace tern::ingest
