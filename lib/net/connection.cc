#include "lib/net/connection.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/redirect_error.hpp"
#include "asio/steady_timer.hpp"
#include "asio/use_awaitable.hpp"
#include "asio/write.hpp"

namespace tern::net {
namespace {

using asio::experimental::awaitable_operators::operator||;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);
constexpr size_t kReadChunk = 16 * 1024;

absl::Status FromError(const asio::error_code& ec, absl::string_view what) {
  if (ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
      ec == asio::ssl::error::stream_truncated) {
    return absl::UnavailableError(absl::StrCat(what, ": connection closed by peer"));
  }
  return absl::UnavailableError(absl::StrCat(what, ": ", ec.message()));
}

// A failed client handshake, with the verifier's reason when the
// certificate was what failed ("certificate verify failed: hostname
// mismatch") rather than OpenSSL's bare "certificate verify failed".
absl::Status HandshakeError(SSL* ssl, const asio::error_code& ec, bool verifying) {
  const long verify = SSL_get_verify_result(ssl);
  if (verifying && verify != X509_V_OK) {
    return absl::InternalError(
        absl::StrCat("TLS handshake failed: certificate verify failed: ", X509_verify_cert_error_string(verify)));
  }
  return absl::InternalError(absl::StrCat("TLS handshake failed: ", ec.message()));
}

}  // namespace

bool IsIpLiteral(const std::string& host) {
  asio::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

// The deadline of the wait in progress. Shared with the timer's handler,
// which may run after the Connection is gone (then `socket` is null).
struct Connection::Watchdog {
  explicit Watchdog(const asio::any_io_executor& executor) : timer(executor) {}
  asio::steady_timer timer;
  asio::ip::tcp::socket* socket = nullptr;
  // Bumped by every Arm(), so a handler of an earlier arm that was already
  // queued when the wait ended cannot stop a later wait.
  uint64_t generation = 0;
  bool armed = false;
  bool reading = false;  // Interrupt() stops reads only, never a half-sent write
  Stop stop = Stop::kNone;
};

Connection::Connection(asio::ip::tcp::socket socket)
    : socket_(std::move(socket)), watchdog_(std::make_shared<Watchdog>(socket_.get_executor())) {
  watchdog_->socket = &socket_;
}

Connection::~Connection() {
  watchdog_->socket = nullptr;
  watchdog_->armed = false;
  watchdog_->timer.cancel();
  Abort();
}

void Connection::Arm(Duration timeout, bool reading) {
  Watchdog& w = *watchdog_;
  w.stop = Stop::kNone;
  w.armed = true;
  w.reading = reading;
  const uint64_t generation = ++w.generation;
  // expires_after() cancels the previous arm's wait, if it is still pending.
  w.timer.expires_after(timeout);
  w.timer.async_wait([w = watchdog_, generation](const asio::error_code& ec) {
    if (ec || !w->armed || w->generation != generation || w->socket == nullptr) {
      return;
    }
    w->stop = Stop::kTimeout;
    asio::error_code ignored;
    w->socket->cancel(ignored);
  });
}

// Ends the wait. The timer is cancelled rather than left to lapse: a pending
// wait would keep the io_context busy (and the watchdog alive) for the whole
// timeout after the connection went idle.
Connection::Stop Connection::Disarm() {
  watchdog_->armed = false;
  watchdog_->timer.cancel();
  return watchdog_->stop;
}

void Connection::Interrupt() {
  Watchdog& w = *watchdog_;
  if (w.armed && w.reading && w.stop == Stop::kNone) {
    w.stop = Stop::kInterrupt;
    asio::error_code ignored;
    socket_.cancel(ignored);
  }
}

absl::Status Connection::Stopped(Stop stop, absl::string_view what) {
  if (stop == Stop::kInterrupt) {
    return absl::CancelledError(absl::StrCat(what, " interrupted"));
  }
  if (close_on_timeout_) {
    Abort();
  }
  return absl::DeadlineExceededError(absl::StrCat(what, " timed out"));
}

std::string Connection::TlsDescription() const {
  return tls_ ? absl::StrCat(TlsVersion(), " ", TlsCipher()) : "";
}

std::string Connection::TlsVersion() const { return tls_ ? SSL_get_version(tls_native_handle()) : ""; }

std::string Connection::TlsCipher() const { return tls_ ? SSL_get_cipher_name(tls_native_handle()) : ""; }

asio::awaitable<absl::StatusOr<size_t>> Connection::ReadSome(char* data, size_t size, Duration timeout) {
  auto buf = asio::buffer(data, size);
  Arm(timeout, /*reading=*/true);
  std::tuple<asio::error_code, size_t> result;
  if (tls_) {
    result = co_await tls_->async_read_some(buf, kNoThrow);
  } else {
    result = co_await socket_.async_read_some(buf, kNoThrow);
  }
  const Stop stop = Disarm();
  const auto [ec, n] = result;
  if (!ec) {
    co_return n;  // data that arrived as the deadline fired is still data
  }
  if (stop != Stop::kNone) {
    co_return Stopped(stop, "read");
  }
  co_return FromError(ec, "read");
}

std::optional<LineView> Connection::TakeBufferedLineView(size_t max_len) {
  // Look for LF in what is buffered. We scan at most max_len+2 bytes so a
  // client sending an endless line costs bounded memory.
  const absl::string_view pending(buffer_.get() + start_, end_ - start_);
  const size_t scan = std::min(pending.size(), max_len + 2);
  const size_t lf = pending.substr(0, scan).find('\n');
  if (lf != absl::string_view::npos && lf <= max_len + 1) {
    LineView line;
    size_t len = lf;
    if (len > 0 && pending[len - 1] == '\r') {
      --len;
    } else {
      line.bare_lf = true;
    }
    if (len <= max_len) {
      line.text = pending.substr(0, len);
      start_ += lf + 1;
      return line;
    }
    // CR LF right after max_len+1 bytes: fall through to the partial case.
  }
  if (pending.size() > max_len) {
    // Too long: hand out the first max_len bytes and keep the rest. Keep a
    // trailing CR in the buffer so a CRLF split across the cut is seen.
    LineView line;
    line.partial = true;
    line.text = pending.substr(0, max_len);
    start_ += max_len;
    return line;
  }
  return std::nullopt;
}

std::optional<Line> Connection::TakeBufferedLine(size_t max_len) {
  std::optional<LineView> view = TakeBufferedLineView(max_len);
  if (!view) {
    return std::nullopt;
  }
  Line line;
  line.text.assign(view->text.data(), view->text.size());
  line.partial = view->partial;
  line.bare_lf = view->bare_lf;
  return line;
}

asio::awaitable<absl::StatusOr<Line>> Connection::ReadLine(size_t max_len, Duration timeout) {
  // The timeout bounds the whole line, not each read: a client sending a
  // byte a second (slowloris) must not hold the connection forever.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (std::optional<Line> line = TakeBufferedLine(max_len)) {
      co_return *std::move(line);
    }
    const Duration left = deadline - std::chrono::steady_clock::now();
    if (left <= Duration::zero()) {
      co_return Stopped(Stop::kTimeout, "read");
    }
    auto n = co_await ReadMore(left);
    if (!n.ok()) {
      co_return n.status();
    }
  }
}

// Appends what one read returns to the buffer. The storage is reused and
// only grows, and is never zero-filled.
asio::awaitable<absl::StatusOr<size_t>> Connection::ReadMore(Duration timeout) {
  if (start_ > 0) {
    std::memmove(buffer_.get(), buffer_.get() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  if (capacity_ - end_ < kReadChunk) {
    const size_t capacity = std::max(end_ + kReadChunk, capacity_ * 2);
    std::unique_ptr<char[]> bigger(new char[capacity]);
    if (end_ > 0) {
      std::memcpy(bigger.get(), buffer_.get(), end_);
    }
    buffer_ = std::move(bigger);
    capacity_ = capacity;
  }
  auto n = co_await ReadSome(buffer_.get() + end_, capacity_ - end_, timeout);
  if (n.ok()) {
    end_ += *n;
  }
  co_return n;
}

asio::awaitable<absl::StatusOr<std::string>> Connection::ReadBytes(size_t max_len, Duration timeout) {
  if (max_len == 0) {
    co_return std::string();
  }
  if (buffered() == 0) {
    auto n = co_await ReadMore(timeout);
    if (!n.ok()) {
      co_return n.status();
    }
  }
  const size_t take = std::min(max_len, buffered());
  std::string out(buffer_.get() + start_, take);
  start_ += take;
  co_return out;
}

asio::awaitable<absl::StatusOr<char>> Connection::PeekByte(Duration timeout) {
  if (buffered() == 0) {
    auto n = co_await ReadMore(timeout);
    if (!n.ok()) {
      co_return n.status();
    }
  }
  co_return buffer_[start_];
}

asio::awaitable<absl::Status> Connection::Write(absl::string_view data, Duration timeout) {
  co_return co_await Write(data, absl::string_view(), timeout);
}

asio::awaitable<absl::Status> Connection::Write(absl::string_view head, absl::string_view tail, Duration timeout) {
  const std::array<asio::const_buffer, 2> buf = {asio::buffer(head.data(), head.size()),
                                                 asio::buffer(tail.data(), tail.size())};
  Arm(timeout, /*reading=*/false);
  std::tuple<asio::error_code, size_t> result;
  if (tls_) {
    result = co_await asio::async_write(*tls_, buf, kNoThrow);
  } else {
    result = co_await asio::async_write(socket_, buf, kNoThrow);
  }
  const Stop stop = Disarm();
  const auto ec = std::get<0>(result);
  if (!ec) {
    co_return absl::OkStatus();
  }
  if (stop != Stop::kNone) {
    co_return Stopped(stop, "write");
  }
  co_return FromError(ec, "write");
}

asio::awaitable<absl::Status> Connection::StartTlsServer(std::shared_ptr<asio::ssl::context> ctx, Duration timeout) {
  tls_context_ = std::move(ctx);
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
  asio::steady_timer timer(socket_.get_executor(), timeout);
  auto result =
      co_await (tls_->async_handshake(asio::ssl::stream_base::server, kNoThrow) || timer.async_wait(kNoThrow));
  if (result.index() == 1) {
    Abort();
    co_return absl::DeadlineExceededError("TLS handshake timed out");
  }
  auto [ec] = std::get<0>(result);
  if (ec) {
    co_return absl::InternalError(absl::StrCat("TLS handshake failed: ", ec.message()));
  }
  // Anything buffered before the handshake was plaintext; RFC 3207 §4 says to
  // discard it (the caller should have refused STARTTLS with data pending).
  start_ = end_ = 0;
  co_return absl::OkStatus();
}

asio::awaitable<absl::Status> Connection::StartTlsClient(std::shared_ptr<asio::ssl::context> ctx, std::string sni,
                                                         bool verify_host, Duration timeout) {
  tls_context_ = std::move(ctx);
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
  if (!sni.empty() && !IsIpLiteral(sni)) {
    SSL_set_tlsext_host_name(tls_->native_handle(), sni.c_str());
  }
  // Verify in any case so the outcome can be recorded, but only fail the
  // handshake when the caller requires verification.
  tls_->set_verify_mode(asio::ssl::verify_peer);
  const bool check_name = !sni.empty();
  // OpenSSL may call the callback more than once for the same certificate
  // (e.g. again after we let an error pass), so "verified" means no call
  // failed at any depth and the leaf was seen, not the last call's verdict.
  peer_verified_ = true;
  auto saw_leaf = std::make_shared<bool>(false);
  tls_->set_verify_callback(
      [this, verify_host, check_name, sni, saw_leaf](bool preverified, asio::ssl::verify_context& vctx) {
        bool ok = preverified;
        X509_STORE_CTX* store = vctx.native_handle();
        if (X509_STORE_CTX_get_error_depth(store) == 0) {
          *saw_leaf = true;
          if (ok && check_name) {
            ok = asio::ssl::host_name_verification(sni)(preverified, vctx);
            if (!ok) {
              // Named, so the failure says why (and the peer gets a
              // certificate alert rather than "internal error").
              X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);
            }
          }
        }
        if (!ok) {
          peer_verified_ = false;
        }
        return verify_host ? ok : true;
      });
  asio::error_code ec = co_await ClientHandshake(timeout);
  if (ec == asio::error::timed_out) {
    co_return absl::DeadlineExceededError("TLS handshake timed out");
  }
  if (ec) {
    peer_verified_ = false;
    tls_verify_error_ = verify_host ? SSL_get_verify_result(tls_->native_handle()) : 0;
    co_return HandshakeError(tls_->native_handle(), ec, verify_host);
  }
  peer_verified_ = peer_verified_ && *saw_leaf;
  // The callback let errors pass when verification was not required; the
  // verdict is still recorded (X509_V_OK when there was none).
  tls_verify_error_ = SSL_get_verify_result(tls_->native_handle());
  co_return absl::OkStatus();
}

asio::awaitable<asio::error_code> Connection::ClientHandshake(Duration timeout) {
  asio::steady_timer timer(socket_.get_executor(), timeout);
  start_ = end_ = 0;
  auto result =
      co_await (tls_->async_handshake(asio::ssl::stream_base::client, kNoThrow) || timer.async_wait(kNoThrow));
  if (result.index() == 1) {
    Abort();
    co_return asio::error::timed_out;
  }
  co_return std::get<0>(std::get<0>(result));
}

std::string TakeOpensslError() {
  char text[256] = "";
  if (const unsigned long err = ERR_peek_last_error(); err != 0) {
    ERR_error_string_n(err, text, sizeof(text));
  }
  ERR_clear_error();
  return text;
}

std::optional<int> TlsVersionFromName(absl::string_view name) {
  if (name == "TLSv1") {
    return TLS1_VERSION;
  }
  if (name == "TLSv1.1") {
    return TLS1_1_VERSION;
  }
  if (name == "TLSv1.2") {
    return TLS1_2_VERSION;
  }
  if (name == "TLSv1.3") {
    return TLS1_3_VERSION;
  }
  return std::nullopt;
}

absl::Status EnableDane(asio::ssl::context& ctx) {
  if (SSL_CTX_dane_enable(ctx.native_handle()) <= 0) {
    return absl::InternalError("OpenSSL could not enable DANE on the TLS context");
  }
  return absl::OkStatus();
}

asio::awaitable<absl::Status> Connection::StartTlsClientDane(std::shared_ptr<asio::ssl::context> ctx,
                                                             std::string host, std::vector<DaneRecord> tlsa,
                                                             Duration timeout, std::string also_name) {
  tls_context_ = std::move(ctx);
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
  peer_verified_ = false;
  dane_match_.clear();
  SSL* ssl = tls_->native_handle();
  // The base domain is the reference identifier for DANE-TA(2) and the SNI
  // (RFC 7672 §3.1.2, §8.1).
  if (SSL_dane_enable(ssl, host.c_str()) <= 0) {
    co_return absl::InternalError("DANE could not be enabled for this connection (context not prepared)");
  }
  SSL_set_tlsext_host_name(ssl, host.c_str());
  if (!also_name.empty() && also_name != host && SSL_add1_host(ssl, also_name.c_str()) != 1) {
    co_return absl::InternalError("DANE: could not add the second reference identifier");
  }
  // RFC 7672 §3.1.1: a DANE-EE(3) match ignores the certificate's names.
  SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
  int usable = 0;
  for (const DaneRecord& r : tlsa) {
    // > 0 added, 0 unusable (e.g. a digest of the wrong length), < 0 error.
    if (SSL_dane_tlsa_add(ssl, r.usage, r.selector, r.matching_type,
                          reinterpret_cast<const unsigned char*>(r.data.data()), r.data.size()) > 0) {
      ++usable;
    }
  }
  if (usable == 0) {
    co_return absl::InvalidArgumentError("no TLSA record usable for DANE");
  }
  // No callback: OpenSSL's own verdict (the DANE match) fails the
  // handshake when it is negative.
  tls_->set_verify_mode(asio::ssl::verify_peer);
  asio::error_code ec = co_await ClientHandshake(timeout);
  if (ec == asio::error::timed_out) {
    co_return absl::DeadlineExceededError("TLS handshake timed out");
  }
  if (ec) {
    tls_verify_error_ = SSL_get_verify_result(ssl);
    co_return HandshakeError(ssl, ec, true);
  }
  const long verify = SSL_get_verify_result(ssl);
  uint8_t usage = 0;
  uint8_t selector = 0;
  uint8_t mtype = 0;
  const int depth = SSL_get0_dane_tlsa(ssl, &usage, &selector, &mtype, nullptr, nullptr);
  if (verify != X509_V_OK || depth < 0) {
    // Cannot happen with verify_peer (a failed check ends the handshake);
    // kept so a peer is never called authenticated without a match.
    Abort();
    co_return absl::InternalError("TLS handshake failed: certificate verify failed: no DANE TLSA match");
  }
  peer_verified_ = true;
  dane_match_ = absl::StrCat(usage, " ", selector, " ", mtype, " at depth ", depth);
  co_return absl::OkStatus();
}

asio::awaitable<void> Connection::Close(Duration timeout) {
  if (tls_ && socket_.is_open()) {
    asio::steady_timer timer(socket_.get_executor(), timeout);
    co_await (tls_->async_shutdown(kNoThrow) || timer.async_wait(kNoThrow));
  }
  Abort();
}

void Connection::Abort() {
  asio::error_code ignored;
  if (socket_.is_open()) {
    socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }
}

}  // namespace tern::net
