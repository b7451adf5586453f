#include "services/deliverer/https_client.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "asio/co_spawn.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/address/authority.h"
#include "lib/dns/resolver_await.h"
#include "lib/net/connection.h"

namespace tern::deliverer {
namespace {

using asio::experimental::awaitable_operators::operator||;
using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

constexpr size_t kMaxHeaderLine = 8192;
constexpr int kMaxHeaders = 100;
// Interim (1xx) responses skipped before the final one; a server that sends
// more is not answering.
constexpr int kMaxInterim = 10;

// The deadline of the whole exchange, as what is left of it for the next step.
struct Deadline {
  Clock::time_point at;
  net::Duration left() const {
    return std::max<net::Duration>(std::chrono::milliseconds(1), at - Clock::now());
  }
  bool passed() const { return Clock::now() >= at; }
};

// A size for messages: "64 KiB" when a whole number of KiB, else "100 bytes".
std::string SizeText(size_t n) {
  return n >= 1024 && n % 1024 == 0 ? absl::StrCat(n / 1024, " KiB") : absl::StrCat(n, " bytes");
}

// Reads exactly `n` bytes (n <= what the caller allows).
asio::awaitable<absl::StatusOr<std::string>> ReadExactly(net::Connection& conn, size_t n, Deadline deadline) {
  std::string out;
  while (out.size() < n) {
    absl::StatusOr<std::string> part = co_await conn.ReadBytes(n - out.size(), deadline.left());
    if (!part.ok()) {
      co_return part.status();
    }
    out += *part;
  }
  co_return out;
}

// The status line and header fields of one response (RFC 9112 §2.1, §4, §5).
struct Head {
  HttpsResponse response;
  std::optional<size_t> content_length;
  std::string bad_content_length;  // set: a Content-Length that is not a number
  bool chunked = false;
};

asio::awaitable<absl::StatusOr<Head>> ReadHead(net::Connection& conn, Deadline deadline) {
  absl::StatusOr<net::Line> status = co_await conn.ReadLine(kMaxHeaderLine, deadline.left());
  if (!status.ok()) {
    co_return status.status();
  }
  // "HTTP/1.1 200 OK": the version, a three-digit code, an optional reason.
  std::vector<absl::string_view> parts = absl::StrSplit(status->text, absl::MaxSplits(' ', 2));
  int code = 0;
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") || parts[1].size() != 3 ||
      !std::all_of(parts[1].begin(), parts[1].end(), absl::ascii_isdigit) || !absl::SimpleAtoi(parts[1], &code) ||
      code < 100) {
    co_return absl::UnavailableError(absl::StrCat("not an HTTP response: \"", status->text.substr(0, 80), "\""));
  }
  Head head;
  head.response.status = code;
  // The reason phrase ends up in reply texts and logs: printable ASCII only.
  head.response.reason = parts.size() > 2 ? std::string(parts[2].substr(0, 80)) : "";
  for (char& c : head.response.reason) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) {
      c = '?';
    }
  }
  for (int i = 0;; ++i) {
    if (i == kMaxHeaders) {
      co_return absl::UnavailableError("too many HTTP header fields");
    }
    absl::StatusOr<net::Line> line = co_await conn.ReadLine(kMaxHeaderLine, deadline.left());
    if (!line.ok()) {
      co_return line.status();
    }
    if (line->partial) {
      co_return absl::UnavailableError("HTTP header line too long");
    }
    if (line->text.empty()) {
      break;
    }
    const size_t colon = line->text.find(':');
    if (colon == std::string::npos) {
      continue;
    }
    const std::string name = absl::AsciiStrToLower(line->text.substr(0, colon));
    const std::string value = absl::AsciiStrToLower(absl::StripAsciiWhitespace(line->text.substr(colon + 1)));
    if (name == "content-length") {
      size_t n = 0;
      if (absl::SimpleAtoi(value, &n)) {
        head.content_length = n;
        head.bad_content_length.clear();
      } else {
        head.bad_content_length = value;
      }
    } else if (name == "transfer-encoding") {
      head.chunked = absl::StrContains(value, "chunked");
    } else if (name == "content-type") {
      head.response.content_type = value;
    }
  }
  co_return head;
}

// The body of a response whose head is `head`, at most `max` bytes.
asio::awaitable<absl::StatusOr<std::string>> ReadBody(net::Connection& conn, const Head& head, size_t max,
                                                      Deadline deadline) {
  const std::string too_big = absl::StrCat("the response body is larger than ", SizeText(max));
  std::string body;
  if (head.chunked) {
    for (;;) {
      absl::StatusOr<net::Line> size_line = co_await conn.ReadLine(kMaxHeaderLine, deadline.left());
      if (!size_line.ok()) {
        co_return size_line.status();
      }
      absl::string_view hex = size_line->text;
      hex = hex.substr(0, hex.find(';'));  // chunk extensions
      hex = absl::StripAsciiWhitespace(hex);
      size_t n = 0;
      if (hex.empty() || hex.size() > 8 || !absl::SimpleHexAtoi(hex, &n)) {
        co_return absl::UnavailableError("bad chunk size in the HTTP response");
      }
      if (n == 0) {
        break;  // trailers, if any, are not needed
      }
      if (body.size() + n > max) {
        co_return absl::UnavailableError(too_big);
      }
      absl::StatusOr<std::string> chunk = co_await ReadExactly(conn, n, deadline);
      if (!chunk.ok()) {
        co_return chunk.status();
      }
      body += *chunk;
      absl::StatusOr<net::Line> end = co_await conn.ReadLine(kMaxHeaderLine, deadline.left());
      if (!end.ok()) {
        co_return end.status();
      }
    }
  } else if (!head.bad_content_length.empty()) {
    co_return absl::UnavailableError(absl::StrCat("bad Content-Length \"", head.bad_content_length, "\""));
  } else if (head.content_length.has_value()) {
    if (*head.content_length > max) {
      co_return absl::UnavailableError(too_big);
    }
    absl::StatusOr<std::string> all = co_await ReadExactly(conn, *head.content_length, deadline);
    if (!all.ok()) {
      co_return all.status();
    }
    body = *std::move(all);
  } else {
    // No length: the body ends when the server closes.
    for (;;) {
      absl::StatusOr<std::string> part = co_await conn.ReadBytes(max + 1 - body.size(), deadline.left());
      if (!part.ok()) {
        if (absl::IsUnavailable(part.status())) {
          break;
        }
        co_return part.status();
      }
      body += *part;
      if (body.size() > max) {
        co_return absl::UnavailableError(too_big);
      }
    }
  }
  co_return body;
}

// The response after the request was sent: interim responses skipped, then
// the final one's head, the caller's check, and the body when wanted.
asio::awaitable<absl::StatusOr<HttpsResponse>> ReadResponse(net::Connection& conn, const HttpsRequest& request,
                                                            Deadline deadline) {
  absl::StatusOr<Head> head = absl::UnavailableError("no response");
  for (int interim = 0;; ++interim) {
    head = co_await ReadHead(conn, deadline);
    if (!head.ok()) {
      co_return head.status();
    }
    // RFC 9110 §15.2: a client must accept 1xx responses it did not ask
    // for (e.g. "100 Continue" to a POST); 101 would switch protocols, so it
    // is final (and no 2xx).
    if (head->response.status >= 200 || head->response.status == 101) {
      break;
    }
    if (interim == kMaxInterim) {
      co_return absl::UnavailableError("too many interim (1xx) HTTP responses");
    }
  }
  if (request.check_head) {
    if (absl::Status s = request.check_head(head->response); !s.ok()) {
      co_return s;
    }
  }
  HttpsResponse response = std::move(head->response);
  // RFC 9112 §6.3: no body after HEAD, 204 or 304.
  const bool no_body = request.method == "HEAD" || response.status == 204 || response.status == 304;
  if (request.read_body && !no_body) {
    absl::StatusOr<std::string> body = co_await ReadBody(conn, *head, request.max_body, deadline);
    if (!body.ok()) {
      co_return body.status();
    }
    response.body = *std::move(body);
  }
  co_return response;
}

// Why `request` cannot go on the wire as it is, or "": the host and target
// must be free of controls, spaces and non-ASCII bytes, header fields of CR,
// LF and NUL, so that nothing a URI holds can add a header or a request.
std::string RequestProblem(const HttpsRequest& request) {
  auto token = [](absl::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
    });
  };
  auto field = [](absl::string_view s) { return s.find_first_of(absl::string_view("\r\n\0", 3)) == s.npos; };
  if (!token(request.host) || !token(request.method) || !token(request.target)) {
    return "the host, method or target has a control byte, space or non-ASCII byte, or is empty";
  }
  for (const auto& [name, value] : request.headers) {
    if (!token(name) || !field(value)) {
      return absl::StrCat("header field \"", absl::CHexEscape(name), "\" cannot be sent as it is");
    }
  }
  return "";
}

std::string RequestHead(const HttpsRequest& request) {
  std::string head = absl::StrCat(request.method, " ", request.target, " HTTP/1.1\r\nHost: ",
                                  address::HostAuthority(request.host, request.port, 443),
                                  "\r\nUser-Agent: tern-deliverer\r\n");
  for (const auto& [name, value] : request.headers) {
    absl::StrAppend(&head, name, ": ", value, "\r\n");
  }
  if (!request.body.empty() || request.method == "POST" || request.method == "PUT") {
    absl::StrAppend(&head, "Content-Length: ", request.body.size(), "\r\n");
  }
  // One request per connection: the server's close may end the body.
  absl::StrAppend(&head, "Connection: close\r\n\r\n");
  return head;
}

asio::awaitable<absl::StatusOr<HttpsResponse>> Exchange(dns::MxResolver* resolver,
                                                       std::shared_ptr<asio::ssl::context> tls, HttpsRequest request) {
  const Deadline deadline{Clock::now() + request.timeout};
  const std::string& host = request.host;
  if (tls == nullptr) {
    co_return absl::FailedPreconditionError("no TLS client context");
  }
  if (std::string problem = RequestProblem(request); !problem.empty()) {
    co_return absl::InvalidArgumentError(problem);
  }
  std::vector<std::string> ips;
  if (net::IsIpLiteral(host)) {
    ips.push_back(host);  // an address needs no DNS
  } else {
    dns::HostAnswer addresses = co_await dns::AwaitHost(*resolver, host);
    if (addresses.status != dns::LookupStatus::kOk) {
      co_return absl::UnavailableError(addresses.detail.empty() ? absl::StrCat(host, ": not found")
                                                                 : addresses.detail);
    }
    ips = addresses.ipv6;
    ips.insert(ips.end(), addresses.ipv4.begin(), addresses.ipv4.end());
    if (ips.empty()) {
      co_return absl::UnavailableError(absl::StrCat(host, " has no address"));
    }
  }
  std::vector<std::string> refused;
  if (request.refuse_address) {
    std::vector<std::string> allowed;
    for (std::string& ip : ips) {
      if (std::string why = request.refuse_address(ip); !why.empty()) {
        refused.push_back(absl::StrCat(host, "[", ip, "]: ", why));
      } else {
        allowed.push_back(std::move(ip));
      }
    }
    ips = std::move(allowed);
    if (ips.empty()) {
      co_return absl::UnavailableError(absl::StrJoin(refused, "; "));
    }
  }
  auto executor = co_await asio::this_coro::executor;
  const std::string head = RequestHead(request);
  std::string last_error;
  for (const std::string& ip : ips) {
    const std::string where = absl::StrCat(host, "[", ip, "]:", request.port);
    if (deadline.passed()) {
      last_error = absl::StrCat(host, ": timed out");
      break;
    }
    asio::error_code ec;
    const asio::ip::address address = asio::ip::make_address(ip, ec);
    if (ec) {
      last_error = absl::StrCat(where, ": bad address");
      continue;
    }
    asio::ip::tcp::socket socket(executor);
    asio::steady_timer timer(executor, deadline.left());
    auto connected =
        co_await (socket.async_connect({address, request.port}, kNoThrow) || timer.async_wait(kNoThrow));
    if (connected.index() == 1) {
      last_error = absl::StrCat(where, ": connect timed out");
      break;
    }
    if (auto [cec] = std::get<0>(connected); cec) {
      last_error = absl::StrCat(where, ": connect: ", cec.message());
      continue;
    }
    net::Connection conn(std::move(socket));
    // Verified for `host` (a name, or the address of a literal); a failure
    // is final for this address: nothing is sent to an unverified server.
    if (absl::Status s = co_await conn.StartTlsClient(tls, host, true, deadline.left()); !s.ok()) {
      last_error = absl::StrCat(where, ": ", s.message());
      conn.Abort();
      continue;
    }
    if (absl::Status s = co_await conn.Write(head, request.body, deadline.left()); !s.ok()) {
      last_error = absl::StrCat(where, ": ", s.message());
      conn.Abort();
      continue;
    }
    absl::StatusOr<HttpsResponse> response = co_await ReadResponse(conn, request, deadline);
    if (response.ok()) {
      response->ip = ip;
      response->tls = conn.TlsDescription();
      response->tls_verified = conn.peer_verified();
    }
    conn.Abort();  // Connection: close; nothing more is read or written
    if (!response.ok()) {
      // An answer that is not usable is the answer: no other address.
      co_return absl::Status(response.status().code(), absl::StrCat(where, ": ", response.status().message()));
    }
    co_return response;
  }
  if (!refused.empty()) {
    absl::StrAppend(&last_error, "; ", absl::StrJoin(refused, "; "));
  }
  co_return absl::UnavailableError(last_error);
}

}  // namespace

std::string HttpsResponse::MediaType() const {
  return std::string(absl::StripAsciiWhitespace(absl::string_view(content_type).substr(0, content_type.find(';'))));
}

asio::awaitable<absl::StatusOr<HttpsResponse>> AwaitHttps(dns::MxResolver& resolver,
                                                          std::shared_ptr<asio::ssl::context> tls,
                                                          HttpsRequest request) {
  try {
    co_return co_await Exchange(&resolver, std::move(tls), std::move(request));
  } catch (const std::exception&) {
    co_return absl::InternalError("HTTPS request failed unexpectedly");
  }
}

void SendHttps(asio::any_io_executor executor, dns::MxResolver& resolver, std::shared_ptr<asio::ssl::context> tls,
               HttpsRequest request, absl::AnyInvocable<void(absl::StatusOr<HttpsResponse>)> done) {
  asio::co_spawn(executor, AwaitHttps(resolver, std::move(tls), std::move(request)),
                 [done = std::move(done)](std::exception_ptr e, absl::StatusOr<HttpsResponse> response) mutable {
                   if (e) {  // not a std::exception
                     done(absl::InternalError("HTTPS request failed unexpectedly"));
                     return;
                   }
                   done(std::move(response));
                 });
}

}  // namespace tern::deliverer
