#include "services/ingest/proxy_protocol.h"

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace tern::ingest {
namespace {

bool ParsePort(absl::string_view text, uint16_t* port) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) {
    return false;
  }
  uint32_t value = 0;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return false;
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

bool IsAddress(absl::string_view text, int family) {
  // inet_pton reads a C string: a NUL would end the address early and let
  // whatever follows it through into src_ip / dst_ip.
  if (text.find('\0') != absl::string_view::npos) {
    return false;
  }
  unsigned char buf[16];
  const std::string s(text);
  return inet_pton(family, s.c_str(), buf) == 1;
}

// The v2 signature: CR LF CR LF NUL CR LF "QUIT" LF.
constexpr absl::string_view kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);

constexpr uint8_t kCommandLocal = 0x0;
constexpr uint8_t kCommandProxy = 0x1;
constexpr uint8_t kFamilyInet = 0x1;
constexpr uint8_t kFamilyInet6 = 0x2;
constexpr uint8_t kFamilyUnix = 0x3;
constexpr uint8_t kTransportStream = 0x1;
constexpr uint8_t kTransportDgram = 0x2;
constexpr uint8_t kTlvCrc32c = 0x03;

uint16_t Load16(const unsigned char* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise table.
// OpenSSL and this Abseil have none; a header is at most 64 KiB and comes
// once per connection, so a table-driven loop is plenty.
uint32_t Crc32c(absl::string_view data) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) {
        c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      }
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (const char ch : data) {
    crc = table[(crc ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (crc >> 8);
  }
  return crc ^ 0xFFFFFFFFu;
}

std::string FormatAddress(int family, const unsigned char* bytes) {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, bytes, text, sizeof(text));
  return text;
}

}  // namespace

absl::StatusOr<size_t> ProxyV2RestSize(absl::string_view fixed) {
  if (fixed.size() != kProxyV2FixedSize || fixed.substr(0, kV2Signature.size()) != kV2Signature) {
    return absl::InvalidArgumentError("not a PROXY v2 signature");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(fixed.data());
  if ((p[12] >> 4) != 0x2) {
    return absl::InvalidArgumentError("PROXY v2 header of another version");
  }
  return Load16(p + 14);
}

absl::StatusOr<ProxyHeader> ParseProxyV2(absl::string_view header) {
  if (header.size() < kProxyV2FixedSize) {
    return absl::InvalidArgumentError("PROXY v2 header too short");
  }
  absl::StatusOr<size_t> rest = ProxyV2RestSize(header.substr(0, kProxyV2FixedSize));
  if (!rest.ok()) {
    return rest.status();
  }
  if (header.size() != kProxyV2FixedSize + *rest) {
    return absl::InvalidArgumentError("PROXY v2 length does not match the header");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(header.data());
  const uint8_t command = p[12] & 0x0F;
  const uint8_t family = p[13] >> 4;
  const uint8_t transport = p[13] & 0x0F;
  if (command != kCommandLocal && command != kCommandProxy) {
    return absl::InvalidArgumentError("PROXY v2 command must be LOCAL or PROXY");
  }
  if (family > kFamilyUnix || transport > kTransportDgram) {
    return absl::InvalidArgumentError("PROXY v2 family or transport unknown");
  }
  size_t addresses = 0;  // octets of the address block for the family
  switch (family) {
    case kFamilyInet:
      addresses = 4 + 4 + 2 + 2;
      break;
    case kFamilyInet6:
      addresses = 16 + 16 + 2 + 2;
      break;
    case kFamilyUnix:
      addresses = 108 + 108;
      break;
    default:
      break;
  }
  if (*rest < addresses) {
    return absl::InvalidArgumentError("PROXY v2 address block too short for its family");
  }
  // TLVs fill the rest exactly (type, 2-octet length, value). The sender's
  // CRC32c covers the whole header with its own value taken as zero.
  const unsigned char* body = p + kProxyV2FixedSize;
  size_t at = addresses;
  while (at < *rest) {
    if (*rest - at < 3) {
      return absl::InvalidArgumentError("PROXY v2 TLV truncated");
    }
    const uint8_t type = body[at];
    const size_t length = Load16(body + at + 1);
    if (*rest - at - 3 < length) {
      return absl::InvalidArgumentError("PROXY v2 TLV overruns the header");
    }
    if (type == kTlvCrc32c) {
      if (length != 4) {
        return absl::InvalidArgumentError("PROXY v2 CRC32c TLV must be 4 octets");
      }
      const size_t value_at = kProxyV2FixedSize + at + 3;
      const uint32_t sent = (uint32_t{p[value_at]} << 24) | (uint32_t{p[value_at + 1]} << 16) |
                            (uint32_t{p[value_at + 2]} << 8) | uint32_t{p[value_at + 3]};
      std::string zeroed(header);
      std::memset(zeroed.data() + value_at, 0, 4);
      if (Crc32c(zeroed) != sent) {
        return absl::InvalidArgumentError("PROXY v2 CRC32c does not match");
      }
    }
    at += 3 + length;
  }
  ProxyHeader out;
  // LOCAL: the proxy speaks for itself (health checks), family ignored.
  // UNSPEC and UNIX name no IP client, and a datagram is no SMTP session
  // to take an address from: the connection's own addresses apply.
  if (command == kCommandLocal || transport != kTransportStream ||
      (family != kFamilyInet && family != kFamilyInet6)) {
    out.protocol = "UNKNOWN";
    return out;
  }
  const int af = family == kFamilyInet ? AF_INET : AF_INET6;
  const size_t ip_size = family == kFamilyInet ? 4 : 16;
  out.protocol = family == kFamilyInet ? "TCP4" : "TCP6";
  out.src_ip = FormatAddress(af, body);
  out.dst_ip = FormatAddress(af, body + ip_size);
  out.src_port = Load16(body + 2 * ip_size);
  out.dst_port = Load16(body + 2 * ip_size + 2);
  return out;
}

absl::StatusOr<ProxyHeader> ParseProxyV1(absl::string_view line) {
  if (line.size() > kProxyV1MaxLine) {
    return absl::InvalidArgumentError("PROXY line too long");
  }
  if (!absl::StartsWith(line, "PROXY ")) {
    return absl::InvalidArgumentError("not a PROXY line");
  }
  ProxyHeader header;
  // Single spaces only: split without skipping empties.
  const std::vector<absl::string_view> words = absl::StrSplit(line, ' ');
  if (words.size() >= 2 && words[1] == "UNKNOWN") {
    // "the receiver must ignore anything presented before the CRLF".
    header.protocol = "UNKNOWN";
    return header;
  }
  if (words.size() != 6) {
    return absl::InvalidArgumentError("PROXY line needs 6 fields");
  }
  int family = 0;
  if (words[1] == "TCP4") {
    family = AF_INET;
  } else if (words[1] == "TCP6") {
    family = AF_INET6;
  } else {
    return absl::InvalidArgumentError("PROXY protocol must be TCP4, TCP6 or UNKNOWN");
  }
  if (!IsAddress(words[2], family) || !IsAddress(words[3], family)) {
    return absl::InvalidArgumentError("bad PROXY address");
  }
  if (!ParsePort(words[4], &header.src_port) || !ParsePort(words[5], &header.dst_port)) {
    return absl::InvalidArgumentError("bad PROXY port");
  }
  header.protocol = std::string(words[1]);
  header.src_ip = std::string(words[2]);
  header.dst_ip = std::string(words[3]);
  return header;
}

}  // namespace tern::ingest
