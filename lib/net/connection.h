// File: connection.h
//
// Connection: one TCP connection, plain or upgraded to TLS in place (STARTTLS)
// or TLS from the start (implicit TLS), with buffered line reading and a
// deadline on every wait. Both the SMTP server (ingest) and the SMTP client
// (deliverer) talk through it, so line limits, timeouts and TLS behave the same
// on both sides.
//
// Every method is a coroutine that must run on the connection's executor; a
// Connection is used by one coroutine at a time: one read or one write in
// progress, never both (they share the deadline timer below). Errors come back as absl::Status, never as exceptions:
//   DeadlineExceeded  - the timeout passed (the socket is then closed, unless
//                       set_close_on_timeout(false): a server still says 421)
//   Cancelled         - Interrupt() stopped a read; the socket stays open
//   Unavailable       - the peer closed or the network failed
//   Internal          - TLS setup failed
//
// Deadlines. Each read and write waits under one timer per connection, armed
// before the wait and left to lapse after it, which cancels the socket's
// operation when it fires. Racing every wait against a timer of its own
// (`op || timer`) cost two spawned coroutines, a parallel group and its
// cancellation state per wait: a quarter of ingest's allocations.
//
// Standards: RFC 5321 §4.5.3.1.4-5 (line lengths), RFC 3207 (STARTTLS: the read
// buffer must be empty when TLS starts, or the peer injected plaintext).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "asio/awaitable.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/ssl.hpp"

namespace tern::net {

using Duration = std::chrono::steady_clock::duration;

// One TLSA record for DANE authentication (RFC 6698 §2.1, RFC 7671): the
// published fields, `data` binary.
struct DaneRecord {
  uint8_t usage = 0;
  uint8_t selector = 0;
  uint8_t matching_type = 0;
  std::string data;
};

struct Line {
  std::string text;   // without the line end
  // True when the line was longer than the limit: `text` holds the first part
  // and the next ReadLine() continues the same line.
  bool partial = false;
  // True when the line ended in a bare LF instead of CRLF.
  bool bare_lf = false;
};

// A Line that points into a Connection's read buffer instead of owning its
// text (Connection::TakeBufferedLineView).
struct LineView {
  absl::string_view text;
  bool partial = false;
  bool bare_lf = false;
};

// True when `host` is an IPv4 or IPv6 address (without brackets), which
// needs no DNS lookup and is not sent as SNI (RFC 6066 §3).
bool IsIpLiteral(const std::string& host);

// tls.ini's minVersion, in Node.js's (so Haraka's) names "TLSv1", "TLSv1.1",
// "TLSv1.2" and "TLSv1.3", as OpenSSL's protocol version (TLS1_2_VERSION,
// ...); nullopt for any other name.
std::optional<int> TlsVersionFromName(absl::string_view name);

// The reason text of OpenSSL's most recent error on this thread ("" when
// there is none), with the thread's error queue cleared, so the next
// failure does not report a stale reason.
std::string TakeOpensslError();

// Prepares a client context for StartTlsClientDane (OpenSSL's
// SSL_CTX_dane_enable). Call once, before the context is shared between
// threads; contexts that never do DANE are unaffected.
absl::Status EnableDane(asio::ssl::context& ctx);

class Connection {
 public:
  explicit Connection(asio::ip::tcp::socket socket);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  asio::ip::tcp::socket& socket() { return socket_; }
  bool tls() const { return tls_ != nullptr; }
  // Cipher and protocol after a handshake, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384":
  // TlsVersion() and TlsCipher() ("" each without TLS).
  std::string TlsDescription() const;
  std::string TlsVersion() const;
  std::string TlsCipher() const;
  // The TLS session's OpenSSL object once a handshake began (also after one
  // that failed), nullptr without TLS: for reading what the handshake
  // learned, e.g. SSL_get_verify_result or SSL_get0_peer_certificate. Do not
  // do I/O on it, nor change its settings.
  SSL* tls_native_handle() const { return tls_ ? tls_->native_handle() : nullptr; }
  // True when the peer presented a certificate that verified (client side).
  bool peer_verified() const { return peer_verified_; }

  // Reads one line of at most `max_len` bytes (without its line end), all of
  // it within `timeout`.
  asio::awaitable<absl::StatusOr<Line>> ReadLine(size_t max_len, Duration timeout);

  // The next line if the buffer already holds it (or holds more than
  // `max_len` bytes of it, which comes back as a partial line); no I/O.
  // Callers that wrap every read in timers try this first: a client's DATA
  // arrives many lines per packet, and most lines need no wait at all.
  std::optional<Line> TakeBufferedLine(size_t max_len);
  // The same without a copy: `text` stays valid until the next read from
  // this connection. For the DATA phase, where every line is copied into the
  // message anyway.
  std::optional<LineView> TakeBufferedLineView(size_t max_len);

  // Reads at most `max_len` raw bytes (at least one): what is buffered
  // first, else what one read from the socket returns. For length-counted
  // data such as BDAT chunks (RFC 3030), where line framing does not apply.
  asio::awaitable<absl::StatusOr<std::string>> ReadBytes(size_t max_len, Duration timeout);

  // The next octet without consuming it: what is buffered, else what one
  // read from the socket returns. For a protocol whose first octet says how
  // the rest is framed (PROXY v1 is a line, v2 is binary).
  asio::awaitable<absl::StatusOr<char>> PeekByte(Duration timeout);

  // Writes all of `data`.
  asio::awaitable<absl::Status> Write(absl::string_view data, Duration timeout);
  // Writes all of `head`, then all of `tail`, in one gather write: a command
  // and the message text behind it go out without copying the text.
  asio::awaitable<absl::Status> Write(absl::string_view head, absl::string_view tail, Duration timeout);

  // Bytes already read from the socket but not yet consumed by ReadLine. Per
  // RFC 3207 a server must see none when it says 220 to STARTTLS, and a client
  // none after the 220 (otherwise a man in the middle injected commands).
  size_t buffered() const { return end_ - start_; }

  // TLS handshake as a server, then all I/O goes through TLS.
  asio::awaitable<absl::Status> StartTlsServer(std::shared_ptr<asio::ssl::context> ctx, Duration timeout);
  // TLS handshake as a client with SNI `sni` (skipped when empty or an IP
  // literal). If `verify_host` is true the certificate chain and the name are
  // checked and a failure is an error; otherwise the result is only recorded.
  asio::awaitable<absl::Status> StartTlsClient(std::shared_ptr<asio::ssl::context> ctx, std::string sni,
                                               bool verify_host, Duration timeout);
  // TLS handshake as a client authenticated by DANE (RFC 7672 §3.1) with
  // OpenSSL's DANE verifier: the chain must match one of `tlsa` (DANE-TA(2)
  // or DANE-EE(3); other usages are the caller's to drop), the Web PKI
  // plays no part, and names are checked against `host` for DANE-TA only
  // (a DANE-EE key is bound by DNS, not by the names in its certificate).
  // `host` is also the SNI. `also_name`, when set, is another name DANE-TA
  // accepts: the MX host name when `host` is its CNAME-expanded name (RFC
  // 7672 §2.2.2, §3.2.2). InvalidArgument when no record is usable by
  // OpenSSL (bad length for its matching type, unknown selector), Internal
  // with the verifier's reason when the peer does not match. `ctx` must have
  // been through EnableDane() before it was shared.
  asio::awaitable<absl::Status> StartTlsClientDane(std::shared_ptr<asio::ssl::context> ctx, std::string host,
                                                   std::vector<DaneRecord> tlsa, Duration timeout,
                                                   std::string also_name = "");
  // After StartTlsClientDane: the matched record, e.g. "3 1 1 at depth 0".
  const std::string& dane_match() const { return dane_match_; }
  // After a client handshake: OpenSSL's X509_V_ERR_* code of what the
  // certificate check found (e.g. an expired certificate), also when the
  // handshake went on because verification was not required; 0 when the
  // certificate verified or the handshake failed for another reason. TLS
  // reports (RFC 8460) tell the receiving domain which kind of failure it
  // was, and what an MTA-STS policy in testing mode would have refused.
  long tls_verify_error() const { return tls_verify_error_; }

  // Closes the socket (a TLS close_notify is attempted first, bounded by `timeout`).
  asio::awaitable<void> Close(Duration timeout);
  // Closes immediately; pending operations complete with an error.
  void Abort();

  // Stops the read in progress, which then returns Cancelled; the socket
  // stays open. Nothing happens when no read is waiting (a write in progress
  // is never cut short).
  // Call it on the connection's executor (e.g. a server shutting down wakes
  // idle sessions with it).
  void Interrupt();

  // Whether a read or write that times out closes the socket. Default: true.
  void set_close_on_timeout(bool close) { close_on_timeout_ = close; }

 private:
  struct Watchdog;
  enum class Stop { kNone, kTimeout, kInterrupt };

  asio::awaitable<absl::StatusOr<size_t>> ReadSome(char* data, size_t size, Duration timeout);
  asio::awaitable<absl::StatusOr<size_t>> ReadMore(Duration timeout);
  // The client side of the TLS handshake on tls_, bounded by `timeout`:
  // asio::error::timed_out (the socket then closed) when it ran out.
  asio::awaitable<asio::error_code> ClientHandshake(Duration timeout);
  void Arm(Duration timeout, bool reading);
  Stop Disarm();
  absl::Status Stopped(Stop stop, absl::string_view what);

  asio::ip::tcp::socket socket_;
  std::shared_ptr<asio::ssl::context> tls_context_;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls_;
  bool peer_verified_ = false;
  std::string dane_match_;
  long tls_verify_error_ = 0;
  bool close_on_timeout_ = true;
  std::shared_ptr<Watchdog> watchdog_;
  // Read data is buffer_[start_, end_) of capacity_ bytes. Not a std::string:
  // growing one zero-fills it, a 16 KiB memset per connection.
  std::unique_ptr<char[]> buffer_;
  size_t capacity_ = 0;
  size_t start_ = 0;
  size_t end_ = 0;
};

}  // namespace tern::net
