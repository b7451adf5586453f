#include "lib/net/connection.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>
#include <variant>

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

bool IsIpLiteral(const std::string& host) {
  asio::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

Connection::Connection(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}

Connection::~Connection() { Abort(); }

std::string Connection::TlsDescription() const {
  if (!tls_) {
    return "";
  }
  SSL* ssl = const_cast<asio::ssl::stream<asio::ip::tcp::socket&>&>(*tls_).native_handle();
  return absl::StrCat(SSL_get_version(ssl), " ", SSL_get_cipher_name(ssl));
}

asio::awaitable<absl::StatusOr<size_t>> Connection::ReadSome(char* data, size_t size, Duration timeout) {
  asio::steady_timer timer(socket_.get_executor(), timeout);
  auto buf = asio::buffer(data, size);
  std::variant<std::tuple<asio::error_code, size_t>, std::tuple<asio::error_code>> result;
  if (tls_) {
    result = co_await (tls_->async_read_some(buf, kNoThrow) || timer.async_wait(kNoThrow));
  } else {
    result = co_await (socket_.async_read_some(buf, kNoThrow) || timer.async_wait(kNoThrow));
  }
  if (result.index() == 1) {
    Abort();
    co_return absl::DeadlineExceededError("read timed out");
  }
  auto [ec, n] = std::get<0>(result);
  if (ec) {
    co_return FromError(ec, "read");
  }
  co_return n;
}

std::optional<Line> Connection::TakeBufferedLine(size_t max_len) {
  // Look for LF in what is buffered. We scan at most max_len+2 bytes so a
  // client sending an endless line costs bounded memory.
  const absl::string_view pending(buffer_.data() + start_, end_ - start_);
  const size_t scan = std::min(pending.size(), max_len + 2);
  const size_t lf = pending.substr(0, scan).find('\n');
  if (lf != absl::string_view::npos && lf <= max_len + 1) {
    Line line;
    size_t len = lf;
    if (len > 0 && pending[len - 1] == '\r') {
      --len;
    } else {
      line.bare_lf = true;
    }
    if (len <= max_len) {
      line.text.assign(pending.data(), len);
      start_ += lf + 1;
      return line;
    }
    // CR LF right after max_len+1 bytes: fall through to the partial case.
  }
  if (pending.size() > max_len) {
    // Too long: hand out the first max_len bytes and keep the rest. Keep a
    // trailing CR in the buffer so a CRLF split across the cut is seen.
    Line line;
    line.partial = true;
    line.text.assign(pending.data(), max_len);
    start_ += max_len;
    return line;
  }
  return std::nullopt;
}

asio::awaitable<absl::StatusOr<Line>> Connection::ReadLine(size_t max_len, Duration timeout) {
  for (;;) {
    if (std::optional<Line> line = TakeBufferedLine(max_len)) {
      co_return *std::move(line);
    }
    auto n = co_await ReadMore(timeout);
    if (!n.ok()) {
      co_return n.status();
    }
  }
}

// Appends what one read returns to the buffer. The storage is reused and
// only grows: resizing a std::string zero-fills it, which cost a 16 KiB
// memset per read when every read resized.
asio::awaitable<absl::StatusOr<size_t>> Connection::ReadMore(Duration timeout) {
  if (start_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  if (buffer_.size() - end_ < kReadChunk) {
    buffer_.resize(end_ + kReadChunk);
  }
  auto n = co_await ReadSome(buffer_.data() + end_, buffer_.size() - end_, timeout);
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
  std::string out(buffer_.data() + start_, take);
  start_ += take;
  co_return out;
}

asio::awaitable<absl::Status> Connection::Write(absl::string_view data, Duration timeout) {
  asio::steady_timer timer(socket_.get_executor(), timeout);
  auto buf = asio::buffer(data.data(), data.size());
  std::variant<std::tuple<asio::error_code, size_t>, std::tuple<asio::error_code>> result;
  if (tls_) {
    result = co_await (asio::async_write(*tls_, buf, kNoThrow) || timer.async_wait(kNoThrow));
  } else {
    result = co_await (asio::async_write(socket_, buf, kNoThrow) || timer.async_wait(kNoThrow));
  }
  if (result.index() == 1) {
    Abort();
    co_return absl::DeadlineExceededError("write timed out");
  }
  auto [ec, n] = std::get<0>(result);
  if (ec) {
    co_return FromError(ec, "write");
  }
  co_return absl::OkStatus();
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
          }
        }
        if (!ok) {
          peer_verified_ = false;
        }
        return verify_host ? ok : true;
      });
  asio::steady_timer timer(socket_.get_executor(), timeout);
  start_ = end_ = 0;
  auto result =
      co_await (tls_->async_handshake(asio::ssl::stream_base::client, kNoThrow) || timer.async_wait(kNoThrow));
  if (result.index() == 1) {
    Abort();
    co_return absl::DeadlineExceededError("TLS handshake timed out");
  }
  auto [ec] = std::get<0>(result);
  if (ec) {
    peer_verified_ = false;
    co_return absl::InternalError(absl::StrCat("TLS handshake failed: ", ec.message()));
  }
  peer_verified_ = peer_verified_ && *saw_leaf;
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
