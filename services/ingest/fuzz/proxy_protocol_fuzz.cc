// libFuzzer target: the PROXY protocol parsers (proxy_protocol.h) on
// arbitrary bytes: ParseProxyV1 on the input as one line, and the v2 path
// the session takes (ProxyV2RestSize on the first 16 octets, ParseProxyV2
// on the header of that size, and on the whole input). Only hosts listed in
// connection.ini [haproxy] may send a header, but what it returns becomes
// the client address that relay decisions, Received lines and logs trust.
// Checks:
//   * never crashes (ASan, UBSan);
//   * errors are InvalidArgument;
//   * ProxyV2RestSize accepts only the v2 signature with version 2;
//     ParseProxyV2 only a header of exactly the size it announces;
//   * what parses is TCP4, TCP6 or UNKNOWN; UNKNOWN carries no addresses;
//     otherwise both addresses are NUL-free and valid for the protocol's
//     family;
//   * a parsed header written back, as a v1 line and as a v2 header without
//     TLVs, parses again to the same addresses and ports.
#include <arpa/inet.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/common/fuzz_check.h"
#include "services/ingest/proxy_protocol.h"

namespace {

using tern::ingest::ProxyHeader;

constexpr absl::string_view kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);

using tern::fuzz::Check;

int Family(const ProxyHeader& header) { return header.protocol == "TCP4" ? AF_INET : AF_INET6; }

// The address in network byte order (4 or 16 octets), "" if it is not one.
std::string AddressBytes(const std::string& text, int family) {
  unsigned char buf[16];
  if (text.find('\0') != std::string::npos || inet_pton(family, text.c_str(), buf) != 1) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(buf), family == AF_INET ? 4 : 16);
}

void AppendPort(uint16_t port, std::string& out) {
  out.push_back(static_cast<char>(port >> 8));
  out.push_back(static_cast<char>(port & 0xFF));
}

// A v2 PROXY/STREAM header for `header` (TCP4 or TCP6), without TLVs.
std::string WriteV2(const ProxyHeader& header) {
  const int family = Family(header);
  std::string rest = AddressBytes(header.src_ip, family) + AddressBytes(header.dst_ip, family);
  AppendPort(header.src_port, rest);
  AppendPort(header.dst_port, rest);
  std::string out(kV2Signature);
  out.push_back('\x21');                             // version 2, PROXY
  out.push_back(family == AF_INET ? '\x11' : '\x21');  // INET or INET6, STREAM
  AppendPort(static_cast<uint16_t>(rest.size()), out);
  return out + rest;
}

bool SameEndpoints(const ProxyHeader& a, const ProxyHeader& b) {
  const int family = Family(a);
  return a.protocol == b.protocol && AddressBytes(a.src_ip, family) == AddressBytes(b.src_ip, family) &&
         AddressBytes(a.dst_ip, family) == AddressBytes(b.dst_ip, family) && a.src_port == b.src_port &&
         a.dst_port == b.dst_port;
}

// Checks what a parser accepted and that it reads back in both forms.
void CheckHeader(const absl::StatusOr<ProxyHeader>& header) {
  if (!header.ok()) {
    Check(header.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  if (header->unknown()) {
    Check(header->src_ip.empty() && header->dst_ip.empty() && header->src_port == 0 && header->dst_port == 0);
    return;
  }
  Check(header->protocol == "TCP4" || header->protocol == "TCP6");
  const int family = Family(*header);
  Check(!AddressBytes(header->src_ip, family).empty() && !AddressBytes(header->dst_ip, family).empty());
  const std::string line = absl::StrCat("PROXY ", header->protocol, " ", header->src_ip, " ", header->dst_ip, " ",
                                        header->src_port, " ", header->dst_port);
  absl::StatusOr<ProxyHeader> v1 = tern::ingest::ParseProxyV1(line);
  Check(v1.ok() && SameEndpoints(*v1, *header));
  absl::StatusOr<ProxyHeader> v2 = tern::ingest::ParseProxyV2(WriteV2(*header));
  Check(v2.ok() && SameEndpoints(*v2, *header));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);

  absl::StatusOr<ProxyHeader> v1 = tern::ingest::ParseProxyV1(input);
  if (v1.ok()) {
    Check(input.size() <= tern::ingest::kProxyV1MaxLine && absl::StartsWith(input, "PROXY "));
  }
  CheckHeader(v1);

  absl::StatusOr<ProxyHeader> whole = tern::ingest::ParseProxyV2(input);
  if (whole.ok()) {
    Check(tern::ingest::IsProxyV2Start(input[0]));
  }
  CheckHeader(whole);
  if (input.size() < tern::ingest::kProxyV2FixedSize) {
    Check(!whole.ok());
    return 0;
  }
  absl::StatusOr<size_t> rest = tern::ingest::ProxyV2RestSize(input.substr(0, tern::ingest::kProxyV2FixedSize));
  if (!rest.ok()) {
    Check(rest.status().code() == absl::StatusCode::kInvalidArgument && !whole.ok());
    return 0;
  }
  Check(absl::StartsWith(input, kV2Signature) && (data[12] >> 4) == 2 && *rest <= 0xFFFF);
  Check(!whole.ok() || input.size() == tern::ingest::kProxyV2FixedSize + *rest);
  // What the session does: read the announced size, then parse just that.
  if (input.size() >= tern::ingest::kProxyV2FixedSize + *rest) {
    CheckHeader(tern::ingest::ParseProxyV2(input.substr(0, tern::ingest::kProxyV2FixedSize + *rest)));
  }
  return 0;
}
