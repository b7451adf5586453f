// File: connection.h
//
// Connection: one TCP connection, plain or upgraded to TLS in place (STARTTLS)
// or TLS from the start (implicit TLS), with buffered line reading and a
// deadline on every wait. Both the SMTP server (ingest) and the SMTP client
// (deliverer) talk through it, so line limits, timeouts and TLS behave the same
// on both sides.
//
// Every method is a coroutine that must run on the connection's executor; a
// Connection is used by one coroutine at a time (no concurrent reads or
// concurrent writes). Errors come back as absl::Status, never as exceptions:
//   DeadlineExceeded  - the timeout passed (the socket is then closed)
//   Unavailable       - the peer closed or the network failed
//   Internal          - TLS setup failed
//
// Standards: RFC 5321 §4.5.3.1.4-5 (line lengths), RFC 3207 (STARTTLS: the read
// buffer must be empty when TLS starts, or the peer injected plaintext).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "asio/awaitable.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/ssl.hpp"

namespace tern::net {

using Duration = std::chrono::steady_clock::duration;

struct Line {
  std::string text;   // without the line end
  // True when the line was longer than the limit: `text` holds the first part
  // and the next ReadLine() continues the same line.
  bool partial = false;
  // True when the line ended in a bare LF instead of CRLF.
  bool bare_lf = false;
};

class Connection {
 public:
  explicit Connection(asio::ip::tcp::socket socket);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  asio::ip::tcp::socket& socket() { return socket_; }
  bool tls() const { return tls_ != nullptr; }
  // Cipher and protocol after a handshake, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384".
  std::string TlsDescription() const;
  // True when the peer presented a certificate that verified (client side).
  bool peer_verified() const { return peer_verified_; }

  // Reads one line of at most `max_len` bytes (without its line end).
  asio::awaitable<absl::StatusOr<Line>> ReadLine(size_t max_len, Duration timeout);

  // The next line if the buffer already holds it (or holds more than
  // `max_len` bytes of it, which comes back as a partial line); no I/O.
  // Callers that wrap every read in timers try this first: a client's DATA
  // arrives many lines per packet, and most lines need no wait at all.
  std::optional<Line> TakeBufferedLine(size_t max_len);

  // Reads at most `max_len` raw bytes (at least one): what is buffered
  // first, else what one read from the socket returns. For length-counted
  // data such as BDAT chunks (RFC 3030), where line framing does not apply.
  asio::awaitable<absl::StatusOr<std::string>> ReadBytes(size_t max_len, Duration timeout);

  // Writes all of `data`.
  asio::awaitable<absl::Status> Write(absl::string_view data, Duration timeout);

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

  // Closes the socket (a TLS close_notify is attempted first, bounded by `timeout`).
  asio::awaitable<void> Close(Duration timeout);
  // Closes immediately; pending operations complete with an error.
  void Abort();

 private:
  asio::awaitable<absl::StatusOr<size_t>> ReadSome(char* data, size_t size, Duration timeout);
  asio::awaitable<absl::StatusOr<size_t>> ReadMore(Duration timeout);

  asio::ip::tcp::socket socket_;
  std::shared_ptr<asio::ssl::context> tls_context_;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls_;
  bool peer_verified_ = false;
  // Read data is buffer_[start_, end_); the rest of buffer_ is free space.
  std::string buffer_;
  size_t start_ = 0;
  size_t end_ = 0;
};

}  // namespace tern::net
