// File: https_client.h
//
// SendHttps: one HTTP/1.1 request over TLS with a verified certificate, and
// its response. The deliverer's only HTTPS client, used for two things:
//   * MTA-STS (mta_sts.h): GET https://mta-sts.<domain>/.well-known/mta-sts.txt;
//   * TLS reports to an https: rua (delivery_worker.cc): POST of the gzipped
//     JSON report (RFC 8460 §5.3).
// Both want the same transport and the same distrust of the server, so
// there is one implementation:
//   1. The host's addresses: an IPv4 or IPv6 literal is used as it is (no
//      DNS); a name is looked up (A and AAAA), IPv6 addresses tried first.
//      `refuse_address` may veto addresses (local_mx_ok for reports).
//   2. Per address until one answers: TCP connect, then a TLS handshake
//      whose certificate must verify for `host` (a name, or the address
//      itself for a literal) against the context's CAs. A failed connect,
//      handshake or request write moves on to the next address; nothing is
//      sent to a server whose certificate did not verify.
//   3. The request: "<method> <target> HTTP/1.1", Host (with the port when it
//      is not 443, an IPv6 literal in brackets; RFC 9110 §7.2), User-Agent,
//      the caller's header fields, Content-Length when there is a body or
//      the method is POST/PUT, "Connection: close"; then the body as bytes.
//   4. The response from the first address that took the request decides,
//      whatever it is (no other address is tried after it): the status line
//      (interim 1xx responses other than 101 are skipped, RFC 9110 §15.2),
//      the header fields, `check_head` when set, then, when `read_body`,
//      the body: chunked, Content-Length, or up to the server's close; at
//      most `max_body` bytes. Redirects are never followed: a 3xx is a
//      status like any other, for the caller to judge.
// Every step is bounded by one deadline, `timeout` after the call.
// Any HTTP status is data (HttpsResponse::status); an error status means no
// usable response: DNS, no address, connect, TLS, timeout, a malformed or
// oversized response, or `check_head`'s verdict. Errors about one address
// name it as "host[ip]:port".
//
// Thread-safety: SendHttps runs on `executor` (which must be the resolver's
// and the one `done` is called on); the request is the call's own.
//
// Standards: RFC 9110 (HTTP semantics: §7.2 Host, §15.2 1xx), RFC 9112
// (HTTP/1.1 messages: §6.3 body length, §7.1 chunked), RFC 6125 (certificate
// names, via net::Connection), RFC 2818 (HTTP over TLS).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asio/any_io_executor.hpp"
#include "asio/awaitable.hpp"
#include "lib/dns/mx_resolver.h"

namespace asio::ssl {
class context;
}

namespace tern::deliverer {

struct HttpsResponse {
  int status = 0;                // e.g. 200
  std::string reason;            // e.g. "OK" (may be empty)
  std::string content_type;      // lower case as sent, "" without one: "text/plain; charset=utf-8"
  std::string body;              // empty unless the request asked for it
  std::string ip;                // the address that answered
  std::string tls;               // "TLSv1.3 TLS_AES_256_GCM_SHA384"
  bool tls_verified = false;     // the certificate verified for the host (always, for a response)

  // content_type without parameters or spaces: "text/plain".
  std::string MediaType() const;
};

struct HttpsRequest {
  // A DNS name, an IPv4 address, or an IPv6 address without brackets.
  std::string host;
  // Default: 443.
  uint16_t port = 443;
  // Default: GET.
  std::string method = "GET";
  // The request target: path and "?query". Default: "/".
  std::string target = "/";
  // Header fields sent after Host and User-Agent, e.g. {"Accept",
  // "text/plain"}; not Host, Content-Length or Connection, which are the
  // client's. Default: none.
  std::vector<std::pair<std::string, std::string>> headers;
  // Sent as it is (binary is fine). Default: empty.
  std::string body;
  // The whole exchange: DNS, connects, TLS, request, response. Default: 10 s.
  std::chrono::milliseconds timeout{10000};
  // Whether the response body is read; without it the exchange ends after
  // the header fields (a POST that only needs the status). Default: true.
  bool read_body = true;
  // The largest body read; a larger one is an error. Default: 64 KiB.
  size_t max_body = 64 * 1024;
  // Why an address of `host` must not be used, or "" when it may. Unset:
  // every address may. Called on the executor.
  std::function<std::string(const std::string& ip)> refuse_address;
  // Judges the status line and header fields before the body is read: an
  // error ends the exchange and is the result (named after the address).
  // Unset: every response is read. Called on the executor.
  std::function<absl::Status(const HttpsResponse& head)> check_head;
};

// Sends `request` to https://host:port with a certificate verified against
// `tls` (system CAs plus tls.ini's `ca`; null: FailedPrecondition). `done`
// runs once, on `executor`, never inline. `resolver` and `tls` must outlive
// the call.
void SendHttps(asio::any_io_executor executor, dns::MxResolver& resolver, std::shared_ptr<asio::ssl::context> tls,
               HttpsRequest request, absl::AnyInvocable<void(absl::StatusOr<HttpsResponse>)> done);

// SendHttps for a caller that is a coroutine already, on that coroutine's
// executor (which must be the resolver's). An exception inside becomes an
// Internal error, as with SendHttps.
asio::awaitable<absl::StatusOr<HttpsResponse>> AwaitHttps(dns::MxResolver& resolver,
                                                          std::shared_ptr<asio::ssl::context> tls,
                                                          HttpsRequest request);

}  // namespace tern::deliverer
