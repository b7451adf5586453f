#include "lib/net/connection.h"

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/io_context.hpp"
#include "asio/steady_timer.hpp"
#include "asio/write.hpp"
#include "gtest/gtest.h"

namespace tern::net {
namespace {

using namespace std::chrono_literals;

// A connected loopback pair: `server` wrapped in a Connection, `client` raw.
struct Pair {
  asio::io_context io;
  std::optional<Connection> conn;
  asio::ip::tcp::socket client{io};

  Pair() {
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
    client.connect(acceptor.local_endpoint());
    conn.emplace(acceptor.accept());
  }
  void Send(std::string_view data) { asio::write(client, asio::buffer(data.data(), data.size())); }
  template <typename T>
  T Run(asio::awaitable<T> op) {
    std::optional<T> out;
    asio::co_spawn(io, [&]() -> asio::awaitable<void> { out = co_await std::move(op); }, asio::detached);
    io.run();
    io.restart();
    return std::move(*out);
  }
};

TEST(Connection, ReadsCrlfAndBareLfLines) {
  Pair p;
  p.Send("EHLO a\r\nNOOP\nQUIT\r\n");
  auto a = p.Run(p.conn->ReadLine(512, 5s));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->text, "EHLO a");
  EXPECT_FALSE(a->bare_lf);
  auto b = p.Run(p.conn->ReadLine(512, 5s));
  EXPECT_EQ(b->text, "NOOP");
  EXPECT_TRUE(b->bare_lf);
  auto c = p.Run(p.conn->ReadLine(512, 5s));
  EXPECT_EQ(c->text, "QUIT");
  EXPECT_EQ(p.conn->buffered(), 0u);
}

TEST(Connection, LongLineComesBackInPartsWithBoundedBuffer) {
  Pair p;
  p.Send(std::string(25, 'x') + "\r\nnext\r\n");
  auto a = p.Run(p.conn->ReadLine(10, 5s));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->partial);
  EXPECT_EQ(a->text, std::string(10, 'x'));
  auto b = p.Run(p.conn->ReadLine(10, 5s));
  EXPECT_TRUE(b->partial);
  auto c = p.Run(p.conn->ReadLine(10, 5s));
  EXPECT_FALSE(c->partial);
  EXPECT_EQ(c->text, std::string(5, 'x'));
  auto d = p.Run(p.conn->ReadLine(10, 5s));
  EXPECT_EQ(d->text, "next");
}

TEST(Connection, LineOfExactlyMaxLengthIsWhole) {
  Pair p;
  p.Send(std::string(10, 'y') + "\r\n");
  auto a = p.Run(p.conn->ReadLine(10, 5s));
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->partial);
  EXPECT_EQ(a->text.size(), 10u);
}

TEST(Connection, ReadBytesTakesBufferedBytesThenTheSocketWithoutFraming) {
  Pair p;
  p.Send("AB\r\nxy");
  auto line = p.Run(p.conn->ReadLine(1, 5s));  // "A", partial; "B\r\nxy" stays buffered
  ASSERT_TRUE(line.ok());
  auto a = p.Run(p.conn->ReadBytes(3, 5s));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, "B\r\n");
  auto b = p.Run(p.conn->ReadBytes(100, 5s));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "xy");  // a lone tail without a line end is returned at once
  p.Send("z");
  auto c = p.Run(p.conn->ReadBytes(1, 5s));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, "z");
}

TEST(Connection, ReadTimesOutWithDeadlineExceeded) {
  Pair p;
  auto a = p.Run(p.conn->ReadLine(512, 50ms));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(Connection, ReadTimeoutClosesTheSocketByDefault) {
  Pair p;
  auto a = p.Run(p.conn->ReadLine(512, 50ms));
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded);
  char c;
  asio::error_code ec;
  p.client.read_some(asio::buffer(&c, 1), ec);
  EXPECT_EQ(ec, asio::error::eof);
}

TEST(Connection, ReadTimeoutLeavesTheSocketOpenWhenAskedSoAServerCanSay421) {
  Pair p;
  p.conn->set_close_on_timeout(false);
  auto a = p.Run(p.conn->ReadLine(512, 50ms));
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(p.Run(p.conn->Write("421 timeout\r\n", 5s)).ok());
  char buf[32];
  const size_t n = p.client.read_some(asio::buffer(buf));
  EXPECT_EQ(std::string(buf, n), "421 timeout\r\n");
}

// A client that sends a byte every 30 ms never lets a single read wait
// 100 ms, but the line as a whole must still time out (slowloris).
TEST(Connection, TimeoutBoundsTheWholeLineNotEachRead) {
  Pair p;
  asio::steady_timer tick(p.io);
  int sent = 0;
  std::function<void()> drip = [&] {
    tick.expires_after(30ms);
    tick.async_wait([&](const asio::error_code& ec) {
      if (ec || sent >= 20) {
        return;
      }
      asio::error_code write_error;
      asio::write(p.client, asio::buffer("x", 1), write_error);
      if (write_error) {
        return;  // the connection gave up and closed: what this test wants
      }
      ++sent;
      drip();
    });
  };
  drip();
  const auto start = std::chrono::steady_clock::now();
  auto a = p.Run(p.conn->ReadLine(512, 100ms));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(sent, 20);  // it gave up while the client was still dripping
  EXPECT_LT(elapsed, 550ms);
}

TEST(Connection, InterruptStopsAWaitingReadAndTheConnectionGoesOn) {
  Pair p;
  asio::steady_timer later(p.io, 20ms);
  later.async_wait([&](const asio::error_code&) { p.conn->Interrupt(); });
  auto a = p.Run(p.conn->ReadLine(512, 5s));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kCancelled);
  p.Send("HELO x\r\n");
  auto b = p.Run(p.conn->ReadLine(512, 5s));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->text, "HELO x");
}

TEST(Connection, InterruptWithNoReadWaitingChangesNothing) {
  Pair p;
  p.conn->Interrupt();
  p.Send("NOOP\r\n");
  auto a = p.Run(p.conn->ReadLine(512, 5s));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->text, "NOOP");
}

TEST(Connection, ManySequentialWaitsEachGetTheirOwnDeadline) {
  // The per-connection timer is re-armed for every wait; an earlier wait's
  // lapsed deadline must not cut a later one short.
  Pair p;
  for (int i = 0; i < 5; ++i) {
    asio::steady_timer later(p.io, 20ms);
    later.async_wait([&](const asio::error_code&) { p.Send("L\r\n"); });
    auto a = p.Run(p.conn->ReadLine(512, 60ms));
    ASSERT_TRUE(a.ok()) << "wait " << i << ": " << a.status();
  }
  auto last = p.Run(p.conn->ReadLine(512, 30ms));
  EXPECT_EQ(last.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(Connection, PeerCloseIsUnavailable) {
  Pair p;
  p.Send("partial line without end");
  p.client.close();
  auto a = p.Run(p.conn->ReadLine(512, 5s));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
}

TEST(Connection, WriteDeliversAllBytes) {
  Pair p;
  const std::string big(1 << 20, 'z');
  std::string received;
  std::thread reader([&] {
    char buf[65536];
    asio::error_code ec;
    while (received.size() < big.size()) {
      size_t n = p.client.read_some(asio::buffer(buf), ec);
      if (ec) break;
      received.append(buf, n);
    }
  });
  auto s = p.Run(p.conn->Write(big, 5s));
  reader.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(received, big);
}

TEST(Connection, GatherWriteSendsHeadThenTailWhole) {
  Pair p;
  const std::string head = "BDAT 1048576 LAST\r\n";
  std::string tail(1 << 20, 'y');
  tail[0] = 'F';
  tail.back() = 'L';
  std::string received;
  std::thread reader([&] {
    char buf[65536];
    asio::error_code ec;
    while (received.size() < head.size() + tail.size()) {
      size_t n = p.client.read_some(asio::buffer(buf), ec);
      if (ec) break;
      received.append(buf, n);
    }
  });
  auto s = p.Run(p.conn->Write(head, tail, 5s));
  reader.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(received, head + tail);
}

TEST(TakeOpensslError, GivesTheReasonOnceAndClearsTheQueue) {
  EXPECT_EQ(TakeOpensslError(), "");
  // A certificate file that does not exist: OpenSSL queues why.
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  EXPECT_NE(SSL_CTX_use_certificate_file(ctx.native_handle(), "/nonexistent/tern.pem", SSL_FILETYPE_PEM), 1);
  EXPECT_NE(TakeOpensslError(), "");
  EXPECT_EQ(TakeOpensslError(), "");  // taken
}

TEST(TlsVersionFromName, MapsNodeNamesToOpensslVersionsAndNothingElse) {
  EXPECT_EQ(TlsVersionFromName("TLSv1"), TLS1_VERSION);
  EXPECT_EQ(TlsVersionFromName("TLSv1.1"), TLS1_1_VERSION);
  EXPECT_EQ(TlsVersionFromName("TLSv1.2"), TLS1_2_VERSION);
  EXPECT_EQ(TlsVersionFromName("TLSv1.3"), TLS1_3_VERSION);
  for (const char* bad : {"", "tlsv1.2", "TLSv1.4", "SSLv3", "TLSv1.2 "}) {
    EXPECT_EQ(TlsVersionFromName(bad), std::nullopt) << bad;
  }
}

}  // namespace
}  // namespace tern::net
