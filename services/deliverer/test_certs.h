// File: test_certs.h (tests only)
//
// TLS material for the deliverer's tests: a throwaway CA, a server
// certificate it signs for mx.x.test, mta-sts.x.test, reports.x.test,
// 127.0.0.1 and ::1, and a self-signed one, made with the openssl command
// once per test binary; server and client contexts built from them; and a
// one-answer HTTPS server.
#pragma once

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/ssl/context.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/net/connection.h"
#include "gtest/gtest.h"
#include "services/deliverer/tls_policy.h"

namespace tern::deliverer {

// A CA and a server certificate for mx.x.test (and mta-sts.x.test, reports.x.test, 127.0.0.1, ::1),
// made with `openssl req` once per test binary run, in a temporary directory.
struct TestCerts {
  std::string dir;
  std::string ca;
  std::string cert;
  std::string key;
  std::string self_signed;
  std::string self_signed_key;
  bool ok = false;

  static const TestCerts& Get() {
    static const TestCerts certs = Make();
    // Removes the directory at exit (a separate object: `certs` is built by
    // a copy that must not delete anything).
    static const struct Cleanup {
      std::string dir;
      ~Cleanup() {
        if (!dir.empty()) {
          std::filesystem::remove_all(dir);
        }
      }
    } cleanup{certs.dir};
    return certs;
  }

  static TestCerts Make() {
    TestCerts t;
    char tmpl[] = "/tmp/tern-deliverer-certs-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return t;
    }
    t.dir = tmpl;
    t.ca = t.dir + "/ca.pem";
    t.cert = t.dir + "/server.pem";
    t.key = t.dir + "/server.key";
    t.self_signed = t.dir + "/self.pem";
    t.self_signed_key = t.dir + "/self.key";
    const std::string d = t.dir;
    const std::string script = absl::StrCat(
        "cd ", d, " && (",
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=Tern-Test-CA "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign && ",
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=mx.x.test && ",
        "printf 'subjectAltName=DNS:mx.x.test,DNS:mta-sts.x.test,DNS:reports.x.test,IP:127.0.0.1,IP:::1\\n' "
        "> ext.cnf && ",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
        "-extfile ext.cnf && ",
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout self.key -out self.pem -days 2 -subj /CN=mx.x.test "
        "-addext subjectAltName=DNS:mx.x.test",
        ") > openssl.log 2>&1");
    t.ok = std::system(script.c_str()) == 0;
    return t;
  }
};

// The DER of the certificate in PEM file `path`, or of its
// SubjectPublicKeyInfo with `spki` (TLSA selectors 0 and 1); "" on error.
inline std::string CertDer(const std::string& path, bool spki) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) {
    return "";
  }
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (x == nullptr) {
    return "";
  }
  unsigned char* der = nullptr;
  const int n = spki ? i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der) : i2d_X509(x, &der);
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), n) : "";
  OPENSSL_free(der);
  X509_free(x);
  return out;
}

// SHA-256 of `data`, binary (TLSA matching type 1).
inline std::string Sha256(const std::string& data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return std::string(reinterpret_cast<char*>(md), sizeof(md));
}

inline std::shared_ptr<asio::ssl::context> ServerTls(const std::string& cert, const std::string& key) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->use_certificate_chain_file(cert);
  ctx->use_private_key_file(key, asio::ssl::context::pem);
  return ctx;
}

inline std::shared_ptr<asio::ssl::context> ClientTls(const std::string& ca) {
  TlsOutboundConfig config;
  config.ca = ca;
  auto ctx = config.MakeContext();
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  return ctx.ok() ? *ctx : nullptr;
}

// An HTTPS server on 127.0.0.1 (or `address`) that answers each
// connection's request (its head read up to the empty line and recorded,
// then a body of its Content-Length, recorded too) with `response`, then
// closes.
class HttpsResponder {
 public:
  HttpsResponder(asio::io_context& io, std::shared_ptr<asio::ssl::context> tls,
                 const std::string& address = "127.0.0.1")
      : acceptor_(io, {asio::ip::make_address(address), 0}), tls_(std::move(tls)) {
    asio::co_spawn(io, Accept(), asio::detached);
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }

  std::string response;
  // Each request's head, lines joined with "\n" (no CR), and its body.
  std::vector<std::string> requests;
  std::vector<std::string> bodies;

 private:
  asio::awaitable<void> Accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
      if (ec) {
        co_return;
      }
      asio::co_spawn(acceptor_.get_executor(), Serve(std::move(socket)), asio::detached);
    }
  }
  asio::awaitable<void> Serve(asio::ip::tcp::socket socket) {
    net::Connection conn(std::move(socket));
    if (!(co_await conn.StartTlsServer(tls_, std::chrono::seconds(5))).ok()) {
      co_return;
    }
    std::string request;
    size_t content_length = 0;
    for (;;) {
      absl::StatusOr<net::Line> line = co_await conn.ReadLine(8192, std::chrono::seconds(5));
      if (!line.ok() || line->text.empty()) {
        break;
      }
      request += line->text + "\n";
      if (absl::StartsWithIgnoreCase(line->text, "content-length:") &&
          !absl::SimpleAtoi(line->text.substr(15), &content_length)) {
        content_length = 0;
      }
    }
    std::string body;
    while (body.size() < content_length) {
      absl::StatusOr<std::string> part = co_await conn.ReadBytes(content_length - body.size(), std::chrono::seconds(5));
      if (!part.ok()) {
        break;
      }
      body += *part;
    }
    requests.push_back(request);
    bodies.push_back(body);
    (void)co_await conn.Write(response, std::chrono::seconds(5));
    co_await conn.Close(std::chrono::seconds(1));
  }

  asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<asio::ssl::context> tls_;
};

}  // namespace tern::deliverer
