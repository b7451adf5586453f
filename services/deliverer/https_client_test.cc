// Tests SendHttps against an in-process TLS server (test_certs.h) whose
// certificate comes from a throwaway CA the client trusts: what a POST puts
// on the wire, responses of every kind, certificate names, literal
// addresses, refused addresses and the deadline. The GET of MTA-STS
// policies goes through the same client (mta_sts_test.cc).

#include "services/deliverer/https_client.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/post.hpp"
#include "gtest/gtest.h"
#include "lib/address/authority.h"
#include "services/deliverer/test_certs.h"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;

// Addresses by host name; every lookup is counted.
class HostResolver : public dns::MxResolver {
 public:
  explicit HostResolver(asio::io_context& io) : io_(io) {}
  void ResolveMx(std::string, MxCallback done) override {
    asio::post(io_, [done = std::move(done)]() mutable { done(dns::MxAnswer{}); });
  }
  void ResolveHost(std::string host, HostCallback done) override {
    ++lookups;
    dns::HostAnswer a;
    if (auto it = hosts.find(host); it != hosts.end()) {
      a = it->second;
    } else {
      a.status = dns::LookupStatus::kNoSuchDomain;
      a.detail = host + ": host not found (NXDOMAIN)";
    }
    asio::post(io_, [done = std::move(done), a]() mutable { done(std::move(a)); });
  }
  void ResolveTxt(std::string, TxtCallback done) override {
    asio::post(io_, [done = std::move(done)]() mutable { done(dns::TxtAnswer{}); });
  }
  void ResolveTlsa(std::string, TlsaCallback done) override {
    asio::post(io_, [done = std::move(done)]() mutable { done(dns::TlsaAnswer{}); });
  }

  std::map<std::string, dns::HostAnswer> hosts;
  int lookups = 0;

 private:
  asio::io_context& io_;
};

dns::HostAnswer Addresses(std::vector<std::string> ipv4, std::vector<std::string> ipv6 = {}) {
  dns::HostAnswer a;
  a.ipv4 = std::move(ipv4);
  a.ipv6 = std::move(ipv6);
  return a;
}

class HttpsClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(TestCerts::Get().ok) << "openssl could not make test certificates";
    resolver_.hosts["reports.x.test"] = Addresses({"127.0.0.1"});
    resolver_.hosts["other.x.test"] = Addresses({"127.0.0.1"});
  }

  // A server with the CA-signed certificate (for reports.x.test, 127.0.0.1
  // and ::1, not other.x.test), or the self-signed one, on `address`.
  std::unique_ptr<HttpsResponder> Serve(const std::string& response, bool trusted = true,
                                        const std::string& address = "127.0.0.1") {
    const TestCerts& certs = TestCerts::Get();
    auto server = std::make_unique<HttpsResponder>(
        io_, trusted ? ServerTls(certs.cert, certs.key) : ServerTls(certs.self_signed, certs.self_signed_key),
        address);
    server->response = response;
    return server;
  }

  // A POST of `body` to https://<host>:<port>/tlsrpt?src=tern.
  HttpsRequest Post(const std::string& host, uint16_t port, std::string body = "{}") {
    HttpsRequest r;
    r.host = host;
    r.port = port;
    r.method = "POST";
    r.target = "/tlsrpt?src=tern";
    r.headers = {{"Content-Type", "application/tlsrpt+gzip"}};
    r.body = std::move(body);
    r.timeout = 5s;
    r.read_body = false;
    return r;
  }

  absl::StatusOr<HttpsResponse> Send(HttpsRequest request) {
    std::optional<absl::StatusOr<HttpsResponse>> result;
    SendHttps(io_.get_executor(), resolver_, ClientTls(TestCerts::Get().ca), std::move(request),
              [&](absl::StatusOr<HttpsResponse> r) { result = std::move(r); });
    EXPECT_FALSE(result.has_value()) << "answered inline";
    io_.restart();
    while (!result.has_value() && io_.run_one_for(10s) > 0) {
    }
    return result.value_or(absl::DeadlineExceededError("test: no answer"));
  }

  asio::io_context io_;
  HostResolver resolver_{io_};
};

TEST_F(HttpsClientTest, PostsTheBodyAsBytesWithMethodTargetHostTypeAndLength) {
  auto server = Serve("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
  // Binary, with NULs, a lone LF and a line that is only a dot: sent as it
  // is, never dot-stuffed or made CRLF.
  const std::string body("\x1f\x8b\x08\x00\r\n.\r\n\n\0\xff tail", 17);
  absl::StatusOr<HttpsResponse> r = Send(Post("reports.x.test", server->port(), body));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->reason, "Created");
  EXPECT_EQ(r->ip, "127.0.0.1");
  EXPECT_TRUE(r->tls_verified);
  EXPECT_NE(r->tls.find("TLS"), std::string::npos) << r->tls;
  ASSERT_EQ(server->requests.size(), 1u);
  EXPECT_EQ(server->requests[0],
            absl::StrCat("POST /tlsrpt?src=tern HTTP/1.1\nHost: reports.x.test:", server->port(),
                         "\nUser-Agent: tern-deliverer\nContent-Type: application/tlsrpt+gzip\nContent-Length: 17\n"
                         "Connection: close\n"));
  EXPECT_EQ(server->bodies[0], body);
}

TEST_F(HttpsClientTest, AnyStatusIsDataAndARedirectIsNotFollowed) {
  auto busy = Serve("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nbusy!");
  absl::StatusOr<HttpsResponse> r = Send(Post("reports.x.test", busy->port()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->reason, "Service Unavailable");
  EXPECT_EQ(r->MediaType(), "text/html");
  EXPECT_EQ(r->body, "");  // read_body=false

  auto moved = Serve("HTTP/1.1 301 Moved Permanently\r\nLocation: https://reports.x.test:1/\r\n\r\n");
  absl::StatusOr<HttpsResponse> m = Send(Post("reports.x.test", moved->port()));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->status, 301);
  EXPECT_EQ(moved->requests.size(), 1u);
}

TEST_F(HttpsClientTest, InterimResponsesAreSkippedAndTheBodyIsReadWhenAsked) {
  auto server = Serve("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: Text/Plain; charset=utf-8\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  HttpsRequest get;
  get.host = "reports.x.test";
  get.port = server->port();
  get.target = "/x";
  absl::StatusOr<HttpsResponse> r = Send(get);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->MediaType(), "text/plain");
  EXPECT_EQ(r->body, "abc");
  // A GET without a body says nothing about a length.
  EXPECT_EQ(server->requests[0].find("Content-Length"), std::string::npos) << server->requests[0];
}

TEST_F(HttpsClientTest, ABodyOverTheLimitIsAnErrorUnlessTheBodyIsNotWanted) {
  auto server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
  HttpsRequest get;
  get.host = "reports.x.test";
  get.port = server->port();
  absl::StatusOr<HttpsResponse> r = Send(get);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(absl::StrCat("reports.x.test[127.0.0.1]:", server->port(),
                                                   ": the response body is larger than 64 KiB")),
            std::string::npos)
      << r.status();
  get.read_body = false;
  absl::StatusOr<HttpsResponse> head_only = Send(get);
  ASSERT_TRUE(head_only.ok()) << head_only.status();
  EXPECT_EQ(head_only->status, 200);
}

TEST_F(HttpsClientTest, ACertificateForAnotherNameOrFromAnUnknownCaGetsNothing) {
  auto server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  absl::StatusOr<HttpsResponse> other = Send(Post("other.x.test", server->port()));
  ASSERT_FALSE(other.ok());
  EXPECT_TRUE(absl::IsUnavailable(other.status())) << other.status();
  EXPECT_NE(other.status().message().find(absl::StrCat("other.x.test[127.0.0.1]:", server->port(), ": ")),
            std::string::npos)
      << other.status();
  EXPECT_TRUE(server->requests.empty()) << "a request went to a server whose certificate names another host";

  auto untrusted = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", /*trusted=*/false);
  absl::StatusOr<HttpsResponse> self_signed = Send(Post("reports.x.test", untrusted->port()));
  ASSERT_FALSE(self_signed.ok());
  EXPECT_TRUE(untrusted->requests.empty()) << "a request went to an unverified server";
}

TEST_F(HttpsClientTest, AnIpv4LiteralNeedsNoDnsAndItsCertificateMustNameTheAddress) {
  auto server = Serve("HTTP/1.1 204 No Content\r\n\r\n");
  absl::StatusOr<HttpsResponse> r = Send(Post("127.0.0.1", server->port()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(resolver_.lookups, 0);
  ASSERT_EQ(server->requests.size(), 1u);
  EXPECT_NE(server->requests[0].find(absl::StrCat("\nHost: 127.0.0.1:", server->port(), "\n")), std::string::npos)
      << server->requests[0];
  // The certificate names 127.0.0.1, not 127.0.0.2 (which still reaches
  // the server: all of 127/8 is loopback).
  auto other = Serve("HTTP/1.1 204 No Content\r\n\r\n", true, "127.0.0.2");
  absl::StatusOr<HttpsResponse> wrong = Send(Post("127.0.0.2", other->port()));
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(other->requests.empty());
  EXPECT_EQ(resolver_.lookups, 0);
}

TEST_F(HttpsClientTest, AnIpv6LiteralIsConnectedToWithoutDnsAndGoesInBracketsInHost) {
  std::unique_ptr<HttpsResponder> server;
  try {
    server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true, "::1");
  } catch (const std::exception& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  absl::StatusOr<HttpsResponse> r = Send(Post("::1", server->port()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ip, "::1");
  EXPECT_EQ(resolver_.lookups, 0);
  ASSERT_EQ(server->requests.size(), 1u);
  EXPECT_NE(server->requests[0].find(absl::StrCat("\nHost: [::1]:", server->port(), "\n")), std::string::npos)
      << server->requests[0];
  EXPECT_EQ(address::HostAuthority("::1", 443, 443), "[::1]");
  EXPECT_EQ(address::HostAuthority("reports.x.test", 443, 443), "reports.x.test");
}

TEST_F(HttpsClientTest, TriesTheNextAddressWhenOneRefusesTheConnection) {
  auto server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  // IPv6 first: nothing listens on [::1] at this port (or IPv6 is off).
  resolver_.hosts["reports.x.test"] = Addresses({"127.0.0.3", "127.0.0.1"}, {"::1"});
  absl::StatusOr<HttpsResponse> r = Send(Post("reports.x.test", server->port()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ip, "127.0.0.1");
  EXPECT_EQ(server->requests.size(), 1u);
}

TEST_F(HttpsClientTest, RefusedAddressesAreNeverConnectedTo) {
  auto server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  HttpsRequest post = Post("reports.x.test", server->port());
  post.refuse_address = [](const std::string& ip) { return ip == "127.0.0.1" ? "loopback address" : ""; };
  absl::StatusOr<HttpsResponse> r = Send(post);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("reports.x.test[127.0.0.1]: loopback address"), std::string::npos)
      << r.status();
  EXPECT_TRUE(server->requests.empty());
}

TEST_F(HttpsClientTest, AServerThatNeverAnswersCostsNoMoreThanTheTimeout) {
  // Listening, so the kernel completes the TCP handshake, but never
  // accepting: the TLS handshake waits for nothing.
  asio::ip::tcp::acceptor silent(io_, {asio::ip::make_address("127.0.0.1"), 0});
  HttpsRequest post = Post("reports.x.test", silent.local_endpoint().port());
  post.timeout = 300ms;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<HttpsResponse> r = Send(post);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("timed out"), std::string::npos) << r.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST_F(HttpsClientTest, ARequestThatCouldSmuggleHeaderFieldsIsNotSent) {
  auto server = Serve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  HttpsRequest in_target = Post("reports.x.test", server->port());
  in_target.target = "/x HTTP/1.1\r\nX-Injected: 1\r\n";
  absl::StatusOr<HttpsResponse> r = Send(in_target);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  HttpsRequest in_field = Post("reports.x.test", server->port());
  in_field.headers.push_back({"X-Note", "a\r\nX-Injected: 1"});
  absl::StatusOr<HttpsResponse> f = Send(in_field);
  EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << f.status();
  EXPECT_TRUE(server->requests.empty());
  EXPECT_EQ(resolver_.lookups, 0);
}

TEST_F(HttpsClientTest, AnUnknownHostIsAnErrorNamingIt) {
  absl::StatusOr<HttpsResponse> r = Send(Post("nowhere.x.test", 443));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nowhere.x.test"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace tern::deliverer
