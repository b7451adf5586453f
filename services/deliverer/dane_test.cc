// DANE: the per-host decision from a TLSA answer (RFC 7672 §2.2, §3.1.3),
// and real TLS handshakes authenticated by TLSA records through
// net::Connection::StartTlsClientDane against an in-process TLS server with
// the throwaway certificates of test_certs.h.
#include "services/deliverer/dane.h"

#include <optional>
#include <string>
#include <vector>

#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/io_context.hpp"
#include "gtest/gtest.h"
#include "services/deliverer/test_certs.h"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;

dns::TlsaAnswer Secure(std::vector<dns::TlsaRecord> records) {
  dns::TlsaAnswer a;
  a.secure = true;
  a.records = std::move(records);
  return a;
}

TEST(Dane, TlsaNameIsPortProtocolAndHost) { EXPECT_EQ(TlsaName("mx.example.com", 25), "_25._tcp.mx.example.com"); }

TEST(Dane, ValidatedUsableRecordsAuthenticateAndUnusableOnesAreDropped) {
  const std::string sha256(32, 'a');
  const std::string sha512(64, 'b');
  DaneHost h = DaneForHost(Secure({{3, 1, 1, sha256},
                                   {2, 0, 2, sha512},
                                   {2, 1, 0, "spki"},
                                   {1, 1, 1, sha256},   // PKIX-EE: not for SMTP
                                   {0, 0, 1, sha256},   // PKIX-TA: not for SMTP
                                   {3, 2, 1, sha256},   // unknown selector
                                   {3, 1, 3, sha256},   // unknown matching type
                                   {3, 1, 1, sha512},   // SHA-256 of the wrong length
                                   {3, 1, 2, sha256},   // SHA-512 of the wrong length
                                   {3, 0, 0, ""}}));    // no data
  EXPECT_EQ(h.mode, DaneMode::kAuthenticated);
  ASSERT_EQ(h.records.size(), 3u);
  EXPECT_EQ(h.records[0].usage, 3);
  EXPECT_EQ(h.records[0].data, sha256);
  EXPECT_EQ(h.records[1].matching_type, 2);
  EXPECT_EQ(h.records[2].data, "spki");
}

TEST(Dane, ValidatedRecordsThatAreAllUnusableStillMakeTlsMandatory) {
  DaneHost h = DaneForHost(Secure({{1, 1, 1, std::string(32, 'a')}, {0, 0, 1, std::string(32, 'b')}}));
  EXPECT_EQ(h.mode, DaneMode::kUnauthenticated);
  EXPECT_TRUE(h.records.empty());
}

TEST(Dane, UnvalidatedRecordsAndValidatedDenialsChangeNothing) {
  dns::TlsaAnswer insecure = Secure({{3, 1, 1, std::string(32, 'a')}});
  insecure.secure = false;
  EXPECT_EQ(DaneForHost(insecure).mode, DaneMode::kNone);
  EXPECT_EQ(DaneForHost(Secure({})).mode, DaneMode::kNone);  // NODATA
  dns::TlsaAnswer nx = Secure({});
  nx.status = dns::LookupStatus::kNoSuchDomain;
  EXPECT_EQ(DaneForHost(nx).mode, DaneMode::kNone);
}

TEST(Dane, AFailedLookupIsNotTakenAsNoRecords) {
  dns::TlsaAnswer failed;
  failed.status = dns::LookupStatus::kTempFail;
  failed.detail = "TLSA lookup for _25._tcp.mx.x.test failed: Server failure";
  const DaneHost h = DaneForHost(failed);
  EXPECT_EQ(h.mode, DaneMode::kLookupFailed);
  EXPECT_EQ(h.detail, failed.detail);
  EXPECT_STREQ(DaneModeName(h.mode), "lookup_failed");
}

// One TLS handshake: a server with `cert`/`key` on loopback, a client that
// authenticates it with `tlsa` for `host`. Returns the client's status and
// what matched.
struct Handshake {
  absl::Status status;
  std::string match;
  bool verified = false;
};

Handshake Shake(const std::string& cert, const std::string& key, const std::string& host,
                std::vector<net::DaneRecord> tlsa) {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto server_ctx = ServerTls(cert, key);
  auto client_ctx = ClientTls("");  // the system CAs only: they know none of the test certificates
  Handshake out;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        net::Connection server(co_await acceptor.async_accept(asio::use_awaitable));
        (void)co_await server.StartTlsServer(server_ctx, 5s);
        // Hold the connection until the client is done (it closes first).
        (void)co_await server.ReadLine(100, 5s);
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::ip::tcp::socket socket(io);
        co_await socket.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
        net::Connection client(std::move(socket));
        out.status = co_await client.StartTlsClientDane(client_ctx, host, tlsa, 5s);
        out.match = client.dane_match();
        out.verified = client.peer_verified();
        client.Abort();
      },
      asio::detached);
  io.run_for(10s);
  return out;
}

TEST(Dane, HandshakeAuthenticatesAServerWhoseKeyMatchesADaneEeRecord) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  // The self-signed certificate: no CA anywhere vouches for it, and DANE-EE
  // ignores names, so a host name the certificate does not carry is fine.
  Handshake h = Shake(certs.self_signed, certs.self_signed_key, "other-name.x.test",
                    {{3, 1, 1, Sha256(CertDer(certs.self_signed, true))}});
  ASSERT_TRUE(h.status.ok()) << h.status;
  EXPECT_EQ(h.match, "3 1 1 at depth 0");
  EXPECT_TRUE(h.verified);

  // The whole certificate, exact match (3 0 0).
  h = Shake(certs.self_signed, certs.self_signed_key, "mx.x.test", {{3, 0, 0, CertDer(certs.self_signed, false)}});
  ASSERT_TRUE(h.status.ok()) << h.status;
  EXPECT_EQ(h.match, "3 0 0 at depth 0");
}

TEST(Dane, HandshakeRefusesAServerThatMatchesNoRecord) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Handshake h = Shake(certs.cert, certs.key, "mx.x.test",
                    {{3, 1, 1, Sha256(CertDer(certs.self_signed, true))}});  // another key
  ASSERT_FALSE(h.status.ok());
  EXPECT_NE(h.status.message().find("certificate verify failed"), std::string::npos) << h.status;
  EXPECT_FALSE(h.verified);
  EXPECT_EQ(h.match, "");
}

TEST(Dane, DaneTaAuthenticatesTheChainButChecksTheName) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  const std::vector<net::DaneRecord> ta = {{2, 0, 0, CertDer(certs.ca, false)}};
  Handshake good = Shake(certs.cert, certs.key, "mx.x.test", ta);
  ASSERT_TRUE(good.status.ok()) << good.status;
  EXPECT_EQ(good.match, "2 0 0 at depth 1");

  Handshake wrong_name = Shake(certs.cert, certs.key, "mx.elsewhere.test", ta);
  ASSERT_FALSE(wrong_name.status.ok());
  EXPECT_NE(wrong_name.status.message().find("certificate verify failed"), std::string::npos) << wrong_name.status;
}

TEST(Dane, NoRecordOpenSslCanUseIsAnErrorBeforeAnyHandshake) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Handshake h = Shake(certs.cert, certs.key, "mx.x.test", {{3, 0, 0, "not a certificate"}});
  EXPECT_EQ(h.status.code(), absl::StatusCode::kInvalidArgument) << h.status;
}

}  // namespace
}  // namespace tern::deliverer
