// Runs the real ingest server on 127.0.0.1:0 against an in-process fake
// tern.v1.Queue (gRPC callback service on 127.0.0.1:0) and drives it with a
// raw-socket SMTP client.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "asio/executor_work_guard.hpp"
#include "asio/io_context.hpp"
#include "gtest/gtest.h"
#include "lib/metrics/metrics.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/server.h"
#include "tern/v1/queue.grpc.pb.h"

namespace tern::ingest {
namespace {

using namespace std::chrono_literals;

// A fake queue: stores what a completed Enqueue stream carried, or fails it
// with a configured status; counts calls that ended cancelled.
class FakeQueue final : public tern::v1::Queue::CallbackService {
 public:
  struct Stored {
    tern::v1::EnqueueHeader header;
    std::string body;
    int chunks = 0;
  };

  void FailWith(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_ = std::move(status);
  }
  std::vector<Stored> stored() {
    std::lock_guard<std::mutex> lock(mu_);
    return stored_;
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  int cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  // EnqueueBatch calls and the messages they carried.
  int batch_calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_calls_;
  }
  int batch_items() {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_items_;
  }

  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* context,
                                         const tern::v1::EnqueueBatchRequest* request,
                                         tern::v1::EnqueueBatchResponse* response) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++batch_calls_;
      for (const tern::v1::EnqueueItem& item : request->items()) {
        ++batch_items_;
        tern::v1::EnqueueItemResult* r = response->add_results();
        if (!fail_.ok()) {
          r->set_code(static_cast<int>(fail_.error_code()));
          r->set_error(fail_.error_message());
          continue;
        }
        stored_.push_back(Stored{item.header(), item.body(), 0});
        r->set_message_id(absl::StrCat("fake-", stored_.size()));
      }
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Waits until `n` calls have ended (OnDone).
  bool WaitDone(int n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_ >= n; });
  }

  grpc::ServerReadReactor<tern::v1::EnqueueRequest>* Enqueue(grpc::CallbackServerContext* context,
                                                             tern::v1::EnqueueResponse* response) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++calls_;
    }
    return new Reactor(this, context, response);
  }

 private:
  class Reactor final : public grpc::ServerReadReactor<tern::v1::EnqueueRequest> {
   public:
    Reactor(FakeQueue* queue, grpc::CallbackServerContext* context, tern::v1::EnqueueResponse* response)
        : queue_(queue), context_(context), response_(response) {
      StartRead(&request_);
    }
    void OnReadDone(bool ok) override {
      if (ok) {
        if (request_.has_header()) {
          stored_.header = request_.header();
        }
        if (!request_.body_chunk().empty()) {
          stored_.body += request_.body_chunk();
          ++stored_.chunks;
        }
        request_.Clear();
        StartRead(&request_);
        return;
      }
      if (context_->IsCancelled()) {
        Finish(grpc::Status::CANCELLED);
        return;
      }
      std::lock_guard<std::mutex> lock(queue_->mu_);
      if (!queue_->fail_.ok()) {
        Finish(queue_->fail_);
        return;
      }
      queue_->stored_.push_back(stored_);
      response_->set_message_id(absl::StrCat("fake-", queue_->stored_.size()));
      Finish(grpc::Status::OK);
    }
    void OnDone() override {
      {
        std::lock_guard<std::mutex> lock(queue_->mu_);
        if (context_->IsCancelled()) {
          ++queue_->cancelled_;
        }
        ++queue_->done_;
      }
      queue_->cv_.notify_all();
      delete this;
    }

   private:
    FakeQueue* queue_;
    grpc::CallbackServerContext* context_;
    tern::v1::EnqueueResponse* response_;
    tern::v1::EnqueueRequest request_;
    Stored stored_;
  };

  std::mutex mu_;
  std::condition_variable cv_;
  grpc::Status fail_ = grpc::Status::OK;
  std::vector<Stored> stored_;
  int calls_ = 0;
  int batch_calls_ = 0;
  int batch_items_ = 0;
  int cancelled_ = 0;
  int done_ = 0;
};

// A blocking SMTP client with a receive timeout, so a hung server fails the
// test instead of hanging it.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { Close(); }
  void Close() {
    if (ssl_ != nullptr) {
      SSL_free(ssl_);
      ssl_ = nullptr;
    }
    if (ctx_ != nullptr) {
      SSL_CTX_free(ctx_);
      ctx_ = nullptr;
    }
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  bool connected() const { return connected_; }

  struct TlsOptions {
    std::string sni;   // sent when not empty
    std::string cert;  // a client certificate (PEM file), with its key
    std::string key;
    SSL_SESSION* resume = nullptr;  // offered for resumption
    int max_version = 0;            // e.g. TLS1_2_VERSION; 0: OpenSSL's highest
    // Counts the server's CertificateRequests (OpenSSL calls the client
    // certificate callback for one when no certificate is set); none
    // presented then.
    int* cert_requests = nullptr;
  };

  // TLS handshake on the connection (no certificate check: a test cert),
  // asking for `sni` when it is not empty.
  bool StartTls(const std::string& sni = "") {
    TlsOptions options;
    options.sni = sni;
    return StartTls(options);
  }
  // In TLS 1.3 the client finishes its handshake before the server has
  // checked the client's certificate: a refusal shows at the next read.
  bool StartTls(const TlsOptions& options) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (!options.cert.empty()) {
      if (SSL_CTX_use_certificate_chain_file(ctx_, options.cert.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx_, options.key.c_str(), SSL_FILETYPE_PEM) != 1) {
        return false;
      }
    }
    if (options.cert_requests != nullptr) {
      SSL_CTX_set_client_cert_cb(ctx_, [](SSL* ssl, X509** /*cert*/, EVP_PKEY** /*key*/) {
        ++*static_cast<int*>(SSL_get_app_data(ssl));
        return 0;
      });
    }
    if (options.max_version != 0) {
      SSL_CTX_set_max_proto_version(ctx_, options.max_version);
    }
    ssl_ = SSL_new(ctx_);
    SSL_set_app_data(ssl_, options.cert_requests);
    SSL_set_fd(ssl_, fd_);
    if (!options.sni.empty()) {
      SSL_set_tlsext_host_name(ssl_, options.sni.c_str());
    }
    if (options.resume != nullptr) {
      SSL_set_session(ssl_, options.resume);
    }
    return SSL_connect(ssl_) == 1;
  }

  // The TLS session, to offer on another connection (the caller frees it);
  // with TLS 1.3 it is there once a reply has been read after the handshake.
  // A copy: freeing a connection that was not shut down marks its own
  // session object not resumable.
  SSL_SESSION* TlsSession() { return SSL_SESSION_dup(SSL_get0_session(ssl_)); }
  bool TlsResumed() { return SSL_session_reused(ssl_) == 1; }

  // The CN of the certificate the server presented ("" without one).
  std::string PeerCommonName() {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (cert == nullptr) {
      return "";
    }
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    X509_free(cert);
    return cn;
  }

  void Send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ssl_ != nullptr ? SSL_write(ssl_, data.data() + sent, static_cast<int>(data.size() - sent))
                                        : ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) {
        return;
      }
      sent += static_cast<size_t>(n);
    }
  }

  // One whole reply (all lines of a multi-line reply), CRLFs included; ""
  // on timeout or EOF.
  std::string ReadReply() {
    std::string reply;
    while (true) {
      std::string line = ReadLine();
      if (line.empty()) {
        return "";
      }
      reply += line;
      if (line.size() < 4 || line[3] != '-') {
        return reply;
      }
    }
  }

  // True when nothing has arrived yet (no wait).
  bool NothingYet() {
    char c;
    return buffer_.empty() && ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == EAGAIN;
  }

  // True if the server closed the connection (and sent nothing more).
  bool AtEof() {
    char c;
    if (ssl_ != nullptr) {
      return buffer_.empty() && SSL_read(ssl_, &c, 1) <= 0;
    }
    return buffer_.empty() && ::recv(fd_, &c, 1, 0) == 0;
  }

  // Sends a command and returns its reply.
  std::string Command(const std::string& line) {
    Send(line + "\r\n");
    return ReadReply();
  }

 private:
  std::string ReadLine() {
    while (true) {
      const size_t lf = buffer_.find('\n');
      if (lf != std::string::npos) {
        std::string line = buffer_.substr(0, lf + 1);
        buffer_.erase(0, lf + 1);
        return line;
      }
      char buf[4096];
      const ssize_t n = ssl_ != nullptr ? SSL_read(ssl_, buf, sizeof(buf)) : ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        return "";
      }
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  bool connected_ = false;
  std::string buffer_;
};

// A port nothing listens on: bound once, then closed.
uint16_t UnusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The body after the Received: header ingest prepends ("" if there is none).
std::string AfterReceived(const std::string& body) {
  if (!absl::StartsWith(body, "Received: ")) {
    return "<no Received header>";
  }
  size_t pos = 0;
  while (true) {
    pos = body.find("\r\n", pos);
    if (pos == std::string::npos) {
      return "<unterminated Received header>";
    }
    pos += 2;
    if (pos >= body.size() || (body[pos] != ' ' && body[pos] != '\t')) {
      return body.substr(pos);
    }
  }
}

// A self-signed certificate made with the openssl CLI, once per test binary;
// its directory is removed when the binary exits.
struct TestCert {
  std::string dir;
  std::string key;
  std::string cert;
  TestCert() = default;
  TestCert(TestCert&& other) noexcept
      : dir(std::exchange(other.dir, {})), key(std::move(other.key)), cert(std::move(other.cert)) {}
  ~TestCert() {
    if (!dir.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  }
};
const TestCert& Cert() {
  static const TestCert cert = [] {
    char dir[] = "/tmp/tern-ingest-test-XXXXXX";
    TestCert c;
    if (::mkdtemp(dir) == nullptr) {
      return c;
    }
    c.dir = dir;
    c.key = std::string(dir) + "/tls_key.pem";
    c.cert = std::string(dir) + "/tls_cert.pem";
    const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
                            " -subj /CN=mx.test -keyout " + c.key + " -out " + c.cert + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      c.key.clear();
      c.cert.clear();
    }
    return c;
  }();
  return cert;
}

std::string B64(const std::string& s) { return absl::Base64Escape(s); }

// The body without the Message-ID: and Date: fields ingest adds to a message
// that lacks them (the fields checked by AddsMessageIdAndDateWhenMissing).
std::string WithoutAdded(std::string body) {
  body = "\r\n" + body;
  for (const char* name : {"Message-ID: <", "Date: "}) {
    const size_t at = body.find(std::string("\r\n") + name);
    if (at == std::string::npos) {
      continue;
    }
    const size_t end = body.find("\r\n", at + 2);
    const std::string field = body.substr(at + 2, end - at);
    if (std::string(name) == "Date: " || absl::StrContains(field, "@mx.test>")) {
      body.erase(at + 2, end - at);
    }
  }
  return body.substr(2);
}

// Each test runs with one shard (one session thread) and with three, where
// consecutive connections land on different threads.
class IngestSessionTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &queue_port_);
    builder.RegisterService(&fake_);
    queue_server_ = builder.BuildAndStart();
    ASSERT_NE(queue_server_, nullptr);
    ASSERT_NE(queue_port_, 0);
  }

  void TearDown() override {
    if (server_) {
      server_->Shutdown(0ms);
      EXPECT_TRUE(server_->WaitIdle(10s));
      work_.clear();
      for (auto& io : shards_) {
        io->stop();
      }
      for (std::thread& t : io_threads_) {
        t.join();
      }
      server_.reset();
      // As tern-ingest does: the first shard, which the others post to, last.
      while (!shards_.empty()) {
        shards_.pop_back();
      }
    }
    queue_server_->Shutdown(std::chrono::system_clock::now() + 1s);
    if (second_server_) {
      second_server_->Shutdown(std::chrono::system_clock::now() + 1s);
    }
  }

  // A second queue shard (`second_`); returns its address.
  std::string StartSecondShard() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&second_);
    second_server_ = builder.BuildAndStart();
    EXPECT_TRUE(second_server_ != nullptr && port != 0);
    return absl::StrCat("127.0.0.1:", port);
  }

  // One message from MAIL to the final reply, on its own connection.
  std::string SendOne() {
    auto client = Connect();
    EXPECT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
    const std::string data = client->Command("DATA");
    if (!absl::StartsWith(data, "354 ")) {
      return data;
    }
    client->Send("Subject: s\r\n\r\nbody\r\n.\r\n");
    return client->ReadReply();
  }

  IngestConfig BaseConfig() {
    IngestConfig cfg;
    cfg.listen = {{"127.0.0.1", 0}};
    cfg.me = "mx.test";
    cfg.relay_acl = RelayAcl::Default();
    cfg.queues = {absl::StrCat("127.0.0.1:", queue_port_)};
    cfg.queue_timeout = 5s;
    cfg.inactivity_timeout = 10s;
    return cfg;
  }

  void StartIngest(IngestConfig cfg) {
    ASSERT_TRUE(cfg.Validate().ok()) << cfg.Validate();
    queue_client_ = std::make_shared<QueueClient>(cfg.queues, cfg.queue_timeout);
    if (cfg.queues == std::vector<std::string>{absl::StrCat("127.0.0.1:", queue_port_)}) {
      // As tern-ingest does at start-up: a ready channel lets small messages
      // go whole, so each test knows which path it takes.
      ASSERT_TRUE(queue_client_->WaitForReady(5s).empty());
    } else {
      queue_client_->WaitForReady(1s);  // shard tests: some are meant to be down
    }
    std::vector<asio::io_context*> shards;
    for (int i = 0; i < GetParam(); ++i) {
      shards_.push_back(std::make_unique<asio::io_context>(1));
      shards.push_back(shards_.back().get());
    }
    auto server = GetParam() == 1 ? IngestServer::Create(*shards_[0], std::move(cfg), queue_client_)
                                  : IngestServer::Create(shards, std::move(cfg), queue_client_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
    for (auto& io : shards_) {
      work_.emplace_back(io->get_executor());
      io_threads_.emplace_back([io = io.get()] { io->run(); });
    }
    port_ = server_->ports().at(0);
  }

  IngestConfig TlsConfig() {
    IngestConfig cfg = BaseConfig();
    EXPECT_FALSE(Cert().cert.empty()) << "openssl req failed";
    cfg.tls_key_file = Cert().key;
    cfg.tls_cert_file = Cert().cert;
    return cfg;
  }

  static void AddUsers(IngestConfig* cfg, const std::string& users, bool require_tls) {
    auto ini = config::IniFile::Parse(users, "auth_flat_file.ini");
    ASSERT_TRUE(ini.ok());
    auto auth = LoadAuthConfig(*ini);
    ASSERT_TRUE(auth.ok()) << auth.status();
    cfg->auth = *std::move(auth);
    cfg->auth.require_tls = require_tls;
    cfg->auth.fail_delay = 200ms;
    cfg->auth.fail_delay_max = 1000ms;
    cfg->relay_acl = *RelayAcl::Parse("192.0.2.0/24\n", "relay_acl_allow");  // not 127.0.0.1
  }

  // Connects, checks the banner and says EHLO.
  std::unique_ptr<RawClient> Connect() {
    auto client = std::make_unique<RawClient>(port_);
    EXPECT_TRUE(client->connected());
    EXPECT_EQ(client->ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
    EXPECT_TRUE(absl::StartsWith(client->Command("EHLO client.test"), "250-mx.test Hello client.test [127.0.0.1]"));
    return client;
  }

  // Starts TLS asking for `sni` ("" for none), expects the certificate whose
  // CN is `common_name`, and that the session goes on over TLS.
  void ExpectCertificateForSni(const std::string& sni, const std::string& common_name) {
    SCOPED_TRACE(sni);
    auto client = Connect();
    ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    ASSERT_TRUE(client->StartTls(sni));
    EXPECT_EQ(client->PeerCommonName(), common_name);
    EXPECT_TRUE(absl::StartsWith(client->Command("EHLO client.test"), "250-mx.test"));
  }

  FakeQueue fake_;
  int queue_port_ = 0;
  std::unique_ptr<grpc::Server> queue_server_;
  FakeQueue second_;
  std::unique_ptr<grpc::Server> second_server_;
  std::vector<std::unique_ptr<asio::io_context>> shards_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> io_threads_;
  std::shared_ptr<QueueClient> queue_client_;
  std::unique_ptr<IngestServer> server_;
  uint16_t port_ = 0;
};

TEST_P(IngestSessionTest, AdvertisesOnlyImplementedExtensions) {
  StartIngest(BaseConfig());
  RawClient client(port_);
  ASSERT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  EXPECT_EQ(client.Command("EHLO client.test"),
            "250-mx.test Hello client.test [127.0.0.1]\r\n"
            "250-PIPELINING\r\n"
            "250-SIZE 26214400\r\n"
            "250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n"
            "250-SMTPUTF8\r\n"
            "250-DSN\r\n"
            "250 CHUNKING\r\n");
  EXPECT_EQ(client.Command("HELO old.client"), "250 mx.test Hello old.client [127.0.0.1]\r\n");
  EXPECT_EQ(client.Command("STARTTLS"), "502 5.5.1 Error: command not implemented\r\n");
  EXPECT_EQ(client.Command("VRFY someone"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
  EXPECT_TRUE(absl::StartsWith(client.Command("HELP"), "214 2.0.0 "));
  EXPECT_EQ(client.Command("NOOP"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(client.Command("XYZZY"), "500 5.5.2 Error: command not recognized\r\n");
  EXPECT_EQ(client.Command("QUIT"), "221 2.0.0 Bye\r\n");
  EXPECT_TRUE(client.AtEof());
}

TEST_P(IngestSessionTest, QueuesMessageByteExactWithReceivedHeader) {
  StartIngest(BaseConfig());
  auto client = Connect();
  EXPECT_EQ(client->Command("MAIL FROM:<sender@example.org> RET=HDRS ENVID=env+2B1 BODY=8BITMIME"),
            "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<rcpt@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;rcpt+2Bx@example.net"),
            "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO: <b@[192.0.2.1]>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send(
      "Subject: test\r\n"
      "\r\n"
      "line one\r\n"
      "..dot line\r\n"
      "...two dots\r\n"
      ". \r\n"
      "\r\n"
      ".\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  EXPECT_EQ(client->Command("QUIT"), "221 2.0.0 Bye\r\n");

  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  const std::string& body = stored[0].body;
  EXPECT_TRUE(absl::StartsWith(body, "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTP id "))
      << body;
  EXPECT_EQ(WithoutAdded(AfterReceived(body)),
            "Subject: test\r\n"
            "\r\n"
            "line one\r\n"
            ".dot line\r\n"
            "..two dots\r\n"
            " \r\n"
            "\r\n");
  const tern::v1::Envelope& env = stored[0].header.envelope();
  EXPECT_EQ(env.mail_from(), "sender@example.org");
  ASSERT_EQ(env.recipients_size(), 2);
  EXPECT_EQ(env.recipients(0).address(), "rcpt@example.net");
  EXPECT_EQ(env.recipients(0).notify(), tern::v1::NOTIFY_SUCCESS | tern::v1::NOTIFY_FAILURE);
  EXPECT_EQ(env.recipients(0).orcpt(), "rfc822;rcpt+x@example.net");
  EXPECT_EQ(env.recipients(1).address(), "b@[192.0.2.1]");
  EXPECT_EQ(env.recipients(1).notify(), 0u);
  EXPECT_EQ(env.ret(), tern::v1::DSN_RET_HDRS);
  EXPECT_EQ(env.envid(), "env+1");
  EXPECT_TRUE(env.body_8bit());
  EXPECT_FALSE(env.smtputf8());
  EXPECT_EQ(env.client().ip(), "127.0.0.1");
  EXPECT_EQ(env.client().helo(), "client.test");
  EXPECT_NE(env.client().port(), 0u);
  EXPECT_FALSE(env.client().tls());
}

TEST_P(IngestSessionTest, StreamsMessagesInChunksWhenInliningIsOff) {
  IngestConfig cfg = BaseConfig();
  cfg.enqueue_inline_max = 0;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string expected = "Subject: big\r\n\r\n";
  for (int i = 0; i < 5000; ++i) {
    expected += absl::StrCat("line ", i, " ", std::string(i % 90, static_cast<char>('a' + i % 26)), "\r\n");
  }
  client->Send(expected + ".\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].header.envelope().mail_from(), "");
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), expected);
  EXPECT_GE(stored[0].chunks, 4);  // ~290 KiB in ~64 KiB chunks
  EXPECT_EQ(fake_.batch_calls(), 0);
}

TEST_P(IngestSessionTest, SmallMessagesGoWholeThroughEnqueueBatch) {
  StartIngest(BaseConfig());
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(Connect());
    ASSERT_EQ(clients.back()->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    ASSERT_EQ(clients.back()->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
    ASSERT_EQ(clients.back()->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  }
  // All three end at once: they may share a call, and each gets its own id.
  for (int i = 0; i < 3; ++i) {
    clients[i]->Send(absl::StrCat("Subject: m", i, "\r\n\r\n8-bit \xc3\xa9\r\n.\r\n"));
  }
  std::set<std::string> replies;
  for (auto& c : clients) {
    const std::string reply = c->ReadReply();
    EXPECT_TRUE(absl::StartsWith(reply, "250 2.0.0 Ok: queued as fake-")) << reply;
    replies.insert(reply);
  }
  EXPECT_EQ(replies.size(), 3u);
  EXPECT_EQ(fake_.calls(), 0);  // no stream was opened
  EXPECT_EQ(fake_.batch_items(), 3);
  EXPECT_GE(fake_.batch_calls(), 1);
  EXPECT_LE(fake_.batch_calls(), 3);
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 3u);
  std::set<std::string> bodies;
  for (const auto& m : stored) {
    bodies.insert(WithoutAdded(AfterReceived(m.body)));
    // Undeclared 8-bit content is noticed once the body is whole.
    EXPECT_TRUE(m.header.envelope().body_8bit());
  }
  EXPECT_EQ(bodies, (std::set<std::string>{"Subject: m0\r\n\r\n8-bit \xc3\xa9\r\n", "Subject: m1\r\n\r\n8-bit \xc3\xa9\r\n",
                                           "Subject: m2\r\n\r\n8-bit \xc3\xa9\r\n"}));
}

TEST_P(IngestSessionTest, MessagePastTheInlineLimitSwitchesToStreaming) {
  IngestConfig cfg = BaseConfig();
  cfg.enqueue_inline_max = 64 * 1024;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string expected = "Subject: big\r\n\r\n";
  for (int i = 0; i < 3000; ++i) {
    expected += absl::StrCat("line ", i, " ", std::string(60, static_cast<char>('a' + i % 26)), "\r\n");
  }
  client->Send(expected + ".\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), expected);
  EXPECT_GE(stored[0].chunks, 2);  // ~200 KiB: the first 64 KiB, then more chunks
  EXPECT_EQ(fake_.calls(), 1);
  EXPECT_EQ(fake_.batch_calls(), 0);
}

TEST_P(IngestSessionTest, WrapsOverlongDataLinesWithCrlfSpace) {
  IngestConfig cfg = BaseConfig();
  cfg.max_data_line_length = 100;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  const std::string a(100, 'a'), b(100, 'b'), c(30, 'c');
  client->Send("X: 1\r\n\r\n." + a + b + c + "\r\n" + a + "\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  // The limit counts stored octets (after unstuffing); each continuation
  // line starts with CRLF SPACE, and the space counts.
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)),
            "X: 1\r\n\r\n" + a + "\r\n " + b.substr(0, 99) + "\r\n " + b.substr(99) + c + "\r\n" + a + "\r\n");
}

// DATA lines are taken straight from the read buffer when they are whole in
// it; a line longer than one read (64 KiB) comes in pieces, and dot-stuffed
// lines may straddle reads. Every byte still arrives, in order.
TEST_P(IngestSessionTest, LinesLongerThanOneReadAndStuffedDotsAreStoredExactly) {
  IngestConfig cfg = BaseConfig();
  cfg.max_data_line_length = 65536;  // the most there is: the long line wraps twice
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string wire = "Subject: long\r\n\r\n";
  std::string expected = wire;
  const std::string long_line(150000, 'x');
  wire += long_line + "\r\n";
  // Wrapped with CRLF SPACE; the space counts toward the next piece.
  expected += long_line.substr(0, 65536) + "\r\n " + long_line.substr(65536, 65535) + "\r\n " +
              long_line.substr(65536 + 65535) + "\r\n";
  for (int i = 0; i < 2000; ++i) {
    wire += absl::StrCat("..dot ", i, "\r\n", "plain ", i, "\r\n");
    expected += absl::StrCat(".dot ", i, "\r\n", "plain ", i, "\r\n");
  }
  client->Send(wire + ".\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), expected);
}

TEST_P(IngestSessionTest, QueueUnavailableGives451) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "disk on fire"));
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: x\r\n\r\nbody\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "451 4.3.0 Queue unavailable, try again later\r\n");
  EXPECT_TRUE(fake_.stored().empty());
  // The session goes on: the transaction was reset.
  EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "503 5.5.1 Error: need MAIL command\r\n");
}

TEST_P(IngestSessionTest, QueueFullGives452) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no space"));
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("body\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "452 4.3.1 Insufficient system storage, try again later\r\n");
}

TEST_P(IngestSessionTest, MessagesAreSpreadOverQueueShards) {
  IngestConfig cfg = BaseConfig();
  cfg.queues.push_back(StartSecondShard());
  StartIngest(cfg);
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(absl::StartsWith(SendOne(), "250 2.0.0 Ok: queued as fake-"));
  }
  // One message at a time leaves both shards idle each time: they take turns.
  EXPECT_EQ(fake_.stored().size() + second_.stored().size(), 8u);
  EXPECT_GE(fake_.stored().size(), 2u);
  EXPECT_GE(second_.stored().size(), 2u);
}

TEST_P(IngestSessionTest, ShardOutOfDiskPassesItsMessageToAnotherShard) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no space"));
  IngestConfig cfg = BaseConfig();
  cfg.queues.push_back(StartSecondShard());
  StartIngest(cfg);
  // The full shard stored nothing, so no client hears of it: each message
  // it refuses is offered to the other shard, and after the first refusal
  // new messages avoid it.
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(absl::StartsWith(SendOne(), "250 2.0.0 Ok: queued as fake-"));
  }
  EXPECT_EQ(second_.stored().size(), 4u);
  EXPECT_TRUE(fake_.stored().empty());
  EXPECT_LE(fake_.batch_items(), 1);
}

TEST_P(IngestSessionTest, EveryShardOutOfDiskGives452) {
  fake_.FailWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no space"));
  second_.FailWith(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no space"));
  IngestConfig cfg = BaseConfig();
  cfg.queues.push_back(StartSecondShard());
  StartIngest(cfg);
  EXPECT_EQ(SendOne(), "452 4.3.1 Insufficient system storage, try again later\r\n");
  // Each shard was offered the message once.
  EXPECT_EQ(fake_.batch_items(), 1);
  EXPECT_EQ(second_.batch_items(), 1);
}

TEST_P(IngestSessionTest, ShardThatIsDownIsLeftAloneAndNothingIsLost) {
  IngestConfig cfg = BaseConfig();
  cfg.queues = {absl::StrCat("127.0.0.1:", UnusedPort()), cfg.queues[0]};
  StartIngest(cfg);
  // A message that went to the dead shard gets 451 (the client keeps it and
  // tries again); then that shard is avoided, so at most one does.
  int accepted = 0;
  int refused = 0;
  for (int i = 0; i < 6; ++i) {
    const std::string reply = SendOne();
    if (absl::StartsWith(reply, "250 2.0.0 Ok: queued as fake-")) {
      ++accepted;
    } else {
      EXPECT_EQ(reply, "451 4.3.0 Queue unavailable, try again later\r\n");
      ++refused;
    }
  }
  EXPECT_LE(refused, 1);
  EXPECT_EQ(accepted + refused, 6);
  EXPECT_EQ(fake_.stored().size(), static_cast<size_t>(accepted));
}

TEST_P(IngestSessionTest, QueueNotListeningGives451) {
  IngestConfig cfg = BaseConfig();
  cfg.queues = {absl::StrCat("127.0.0.1:", UnusedPort())};
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  const auto start = std::chrono::steady_clock::now();
  // The header is sent before 354, so an unreachable queue fails DATA itself.
  EXPECT_EQ(client->Command("DATA"), "451 4.3.0 Queue unavailable, try again later\r\n");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);  // fail-fast, not the 5 s step timeout
  EXPECT_EQ(client->Command("NOOP"), "250 2.0.0 Ok\r\n");
}

TEST_P(IngestSessionTest, RecipientDomainWithoutAnIdnaFormIsRefusedAtRcpt) {
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org> SMTPUTF8"), "250 2.1.0 Ok\r\n");
  // A U-label domain is fine; U+2603 is DISALLOWED in IDNA2008, so no DNS
  // name can exist for the second one.
  EXPECT_EQ(client->Command("RCPT TO:<u@b\xc3\xbc" "cher.example>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<u@\xe2\x98\x83.example>"),
            "553 5.1.2 <u@\xe2\x98\x83.example>: domain is not a valid IDNA name\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: x\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  ASSERT_EQ(stored[0].header.envelope().recipients_size(), 1);
  EXPECT_EQ(stored[0].header.envelope().recipients(0).address(), "u@b\xc3\xbc" "cher.example");
}

TEST_P(IngestSessionTest, RelayFromOutsideTheAclIsDenied) {
  IngestConfig cfg = BaseConfig();
  auto acl = RelayAcl::Parse("192.0.2.0/24\n2001:db8::/32\n", "relay_acl_allow");
  ASSERT_TRUE(acl.ok());
  cfg.relay_acl = *acl;  // 127.0.0.1 is outside
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<victim@example.net>"), "550 5.7.1 Relaying denied\r\n");
  EXPECT_EQ(client->Command("DATA"), "554 5.5.1 Error: no valid recipients\r\n");
  EXPECT_EQ(fake_.calls(), 0);
}

TEST_P(IngestSessionTest, PipelinedCommandsGetRepliesInOrder) {
  StartIngest(BaseConfig());
  auto client = Connect();
  client->Send(
      "MAIL FROM:<a@example.org>\r\n"
      "RCPT TO:<b@example.net>\r\n"
      "RCPT TO:<bad@@example.net>\r\n"
      "RCPT TO:<c@example.net>\r\n"
      "DATA\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.1.5 Ok\r\n");
  EXPECT_TRUE(absl::StartsWith(client->ReadReply(), "501 5.1.3 Bad recipient address syntax"));
  EXPECT_EQ(client->ReadReply(), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->ReadReply(), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: p\r\n\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(client->ReadReply(), "221 2.0.0 Bye\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].header.envelope().recipients_size(), 2);
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), "Subject: p\r\n\r\nhi\r\n");
}

TEST_P(IngestSessionTest, OverlongCommandLineGets500AndSessionContinues) {
  StartIngest(BaseConfig());
  auto client = Connect();
  EXPECT_EQ(client->Command("NOOP " + std::string(5000, 'x')), "500 5.5.2 Error: line too long\r\n");
  EXPECT_EQ(client->Command("NOOP"), "250 2.0.0 Ok\r\n");
  // 512 octets with CRLF is the RFC minimum and must pass.
  EXPECT_EQ(client->Command("NOOP " + std::string(505, 'y')), "250 2.0.0 Ok\r\n");
}

TEST_P(IngestSessionTest, MessageOverMaxBytesGets552AndNothingIsQueued) {
  IngestConfig cfg = BaseConfig();
  cfg.max_bytes = 2048;
  StartIngest(cfg);
  auto client = Connect();
  EXPECT_EQ(client->Command("MAIL FROM:<a@example.org> SIZE=4096"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org> SIZE=1000"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string body;
  for (int i = 0; i < 100; ++i) {
    body += std::string(78, 'z') + "\r\n";  // 8000 bytes
  }
  client->Send(body + ".\r\n");
  EXPECT_EQ(client->ReadReply(), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  // Small enough to be held whole, it never reached the queue at all.
  EXPECT_TRUE(fake_.stored().empty());
  EXPECT_EQ(fake_.calls() + fake_.batch_calls(), 0);
  // The next transaction in the same session works.
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("small\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
}

TEST_P(IngestSessionTest, EofInsideStreamedDataCancelsTheCallAndQueuesNothing) {
  IngestConfig cfg = BaseConfig();
  cfg.enqueue_inline_max = 0;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: cut\r\n\r\nhalf a mess");
  client->Close();
  ASSERT_TRUE(fake_.WaitDone(1, 5s));
  EXPECT_EQ(fake_.cancelled(), 1);
  EXPECT_TRUE(fake_.stored().empty());
}

TEST_P(IngestSessionTest, EofInsideSmallDataQueuesNothing) {
  metrics::Counter& aborted = metrics::Registry::Global().GetCounter(
      "tern_ingest_data_aborted_total", "DATA phases ended by disconnect or timeout");
  const uint64_t aborted_before = aborted.value();
  StartIngest(BaseConfig());
  auto cut = Connect();
  ASSERT_EQ(cut->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(cut->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(cut->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  cut->Send("Subject: cut\r\n\r\nhalf a mess");
  cut->Close();
  // A complete message after it is the only one the queue ever sees.
  auto whole = Connect();
  ASSERT_EQ(whole->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(whole->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(whole->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  whole->Send("Subject: whole\r\n\r\nall of it\r\n.\r\n");
  EXPECT_EQ(whole->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), "Subject: whole\r\n\r\nall of it\r\n");
  EXPECT_EQ(fake_.batch_items(), 1);
  EXPECT_EQ(fake_.calls(), 0);
  // The cut one is counted (tern_ingest_data_aborted_total).
  for (int i = 0; i < 500 && aborted.value() == aborted_before; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(aborted.value(), aborted_before + 1);
}

TEST_P(IngestSessionTest, BareLfDotDoesNotEndData) {
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  // "<LF>.<LF>" followed by a smuggled command must stay message text.
  client->Send("Subject: s\r\n\r\ntext\n.\nMAIL FROM:<evil@example.org>\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), "Subject: s\r\n\r\ntext\r\n.\r\nMAIL FROM:<evil@example.org>\r\n");
}

TEST_P(IngestSessionTest, BadSequenceGets503) {
  StartIngest(BaseConfig());
  RawClient client(port_);
  ASSERT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  EXPECT_EQ(client.Command("MAIL FROM:<a@example.org>"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
  ASSERT_TRUE(absl::StartsWith(client.Command("EHLO c.test"), "250-"));
  EXPECT_EQ(client.Command("RCPT TO:<r@example.net>"), "503 5.5.1 Error: need MAIL command\r\n");
  EXPECT_EQ(client.Command("DATA"), "503 5.5.1 Error: need MAIL command\r\n");
  ASSERT_EQ(client.Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client.Command("MAIL FROM:<a@example.org>"), "503 5.5.1 Error: nested MAIL command\r\n");
  EXPECT_EQ(client.Command("DATA"), "503 5.5.1 Error: need RCPT command\r\n");
  EXPECT_EQ(client.Command("MAIL FROM:<a@example.org> FOO=1"), "555 5.5.4 Unsupported parameter FOO\r\n");
}

TEST_P(IngestSessionTest, InactivityTimeoutGets421) {
  IngestConfig cfg = BaseConfig();
  cfg.inactivity_timeout = 300ms;
  StartIngest(cfg);
  RawClient client(port_);
  ASSERT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  EXPECT_EQ(client.ReadReply(), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
  EXPECT_TRUE(client.AtEof());
}

TEST_P(IngestSessionTest, ShutdownClosesIdleSessionsWith421) {
  StartIngest(BaseConfig());
  auto client = Connect();
  server_->Shutdown(5s);
  EXPECT_EQ(client->ReadReply(), "421 4.3.2 mx.test Service shutting down, closing connection\r\n");
  EXPECT_TRUE(client->AtEof());
  EXPECT_TRUE(server_->WaitIdle(5s));
  RawClient late(port_);
  EXPECT_FALSE(late.connected() && !late.ReadReply().empty());
}


// A PEM bundle (key, then certificate) as Haraka's config/tls/ holds, for
// CN `cn` with the given subjectAltName (none when empty).
void WriteBundle(const std::filesystem::path& file, const std::string& cn, const std::string& san) {
  const std::string key = file.string() + ".key";
  const std::string cert = file.string() + ".crt";
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=" +
                          cn + (san.empty() ? "" : " -addext subjectAltName=" + san) + " -keyout " + key + " -out " +
                          cert + " >/dev/null 2>&1 && cat " + key + " " + cert + " > " + file.string() + " && rm " +
                          key + " " + cert;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST_P(IngestSessionTest, SniPicksTheBundleFromTheTlsDirectory) {
  IngestConfig cfg = TlsConfig();  // default certificate: CN=mx.test
  const std::filesystem::path dir = std::filesystem::path(Cert().dir) / "tls-sni";
  std::filesystem::create_directories(dir);
  WriteBundle(dir / "example.pem", "bundle-one", "DNS:mail.example.test,DNS:*.other.test");
  WriteBundle(dir / "legacy.pem", "legacy.test", "");  // no SAN: the CN names it
  cfg.tls_sni_certificates = {{(dir / "example.pem").string(), (dir / "example.pem").string()},
                              {(dir / "legacy.pem").string(), (dir / "legacy.pem").string()}};
  StartIngest(cfg);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"mail.example.test", "bundle-one"},  // a DNS SAN
      {"MX.Other.Test.", "bundle-one"},     // the wildcard, any case, trailing dot
      {"a.b.other.test", "mx.test"},        // a wildcard is one label only
      {"legacy.test", "legacy.test"},       // the CN of a bundle without SANs
      {"unknown.test", "mx.test"},          // no match: the default
      {"", "mx.test"},                      // no SNI: the default
  };
  for (const auto& [sni, expected] : cases) {
    ExpectCertificateForSni(sni, expected);
  }
}

TEST_P(IngestSessionTest, TlsDirectoryAloneServesItsFirstBundle) {
  IngestConfig cfg = BaseConfig();  // no tls.ini certificate
  const std::filesystem::path dir = std::filesystem::path(Cert().dir) / "tls-only";
  std::filesystem::create_directories(dir);
  WriteBundle(dir / "a.pem", "first.test", "DNS:first.test");
  WriteBundle(dir / "b.pem", "second.test", "DNS:second.test");
  cfg.tls_sni_certificates = {{(dir / "a.pem").string(), (dir / "a.pem").string()},
                              {(dir / "b.pem").string(), (dir / "b.pem").string()}};
  // A bundle that is not one is a startup error naming the file.
  IngestConfig bad = cfg;
  std::ofstream(dir / "c.pem") << "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
  bad.tls_sni_certificates.push_back({(dir / "c.pem").string(), (dir / "c.pem").string()});
  asio::io_context io;
  auto refused = IngestServer::Create(io, bad, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "c.pem")) << refused.status();

  StartIngest(cfg);
  for (const auto& [sni, expected] : std::vector<std::pair<std::string, std::string>>{
           {"", "first.test"}, {"second.test", "second.test"}, {"nobody.test", "first.test"}}) {
    ExpectCertificateForSni(sni, expected);
  }
}

TEST_P(IngestSessionTest, StartTlsUpgradesAndForgetsThePlaintextSession) {
  StartIngest(TlsConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
  ASSERT_TRUE(client->StartTls());
  // RFC 3207 §4.2: the transaction and the EHLO are gone.
  EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "503 5.5.1 Error: need MAIL command\r\n");
  EXPECT_EQ(client->Command("MAIL FROM:<a@example.org>"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
  const std::string ehlo = client->Command("EHLO client.test");
  EXPECT_TRUE(absl::StartsWith(ehlo, "250-mx.test")) << ehlo;
  EXPECT_FALSE(absl::StrContains(ehlo, "STARTTLS")) << ehlo;
  EXPECT_EQ(client->Command("STARTTLS"), "503 5.5.1 Error: TLS already active\r\n");
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: tls\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_TRUE(stored[0].header.envelope().client().tls());
  EXPECT_TRUE(absl::StrContains(stored[0].header.envelope().client().tls_cipher(), "TLS"));
  EXPECT_TRUE(absl::StrContains(stored[0].body, "with ESMTPS id")) << stored[0].body;
}

TEST_P(IngestSessionTest, RequireTlsIsOfferedAndTakenOnlyOverTls) {
  StartIngest(TlsConfig());
  auto client = Connect();
  // In plain text: not offered, and refused if used anyway.
  EXPECT_FALSE(absl::StrContains(client->Command("EHLO client.test"), "REQUIRETLS"));
  EXPECT_EQ(client->Command("MAIL FROM:<a@example.org> REQUIRETLS"),
            "530 5.7.10 REQUIRETLS needs a TLS session: send STARTTLS first\r\n");
  ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
  ASSERT_TRUE(client->StartTls());
  const std::string ehlo = client->Command("EHLO client.test");
  EXPECT_TRUE(absl::StrContains(ehlo, "250-REQUIRETLS\r\n") || absl::StrContains(ehlo, "250 REQUIRETLS\r\n"))
      << ehlo;
  for (const bool requiretls : {true, false}) {
    ASSERT_EQ(client->Command(requiretls ? "MAIL FROM:<a@example.org> REQUIRETLS" : "MAIL FROM:<a@example.org>"),
              "250 2.1.0 Ok\r\n");
    ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
    ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    client->Send("Subject: tls\r\n\r\nhi\r\n.\r\n");
    ASSERT_TRUE(absl::StartsWith(client->ReadReply(), "250 2.0.0 Ok: queued as "));
  }
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_TRUE(stored[0].header.envelope().requiretls());
  EXPECT_FALSE(stored[1].header.envelope().requiretls());
}

TEST_P(IngestSessionTest, StartTlsIsAdvertisedOnlyWhenConfigured) {
  StartIngest(BaseConfig());
  auto client = Connect();
  EXPECT_EQ(client->Command("STARTTLS"), "502 5.5.1 Error: command not implemented\r\n");
}

TEST_P(IngestSessionTest, StartTlsWithPipelinedCommandsIsRefused) {
  StartIngest(TlsConfig());
  auto client = Connect();
  // A plaintext command after STARTTLS would run inside TLS (CVE-2011-0411).
  client->Send("STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n");
  EXPECT_EQ(client->ReadReply(), "554 5.5.1 Error: command pipelined after STARTTLS\r\n");
  EXPECT_TRUE(client->AtEof());
}

TEST_P(IngestSessionTest, ImplicitTlsListenerHandshakesBeforeTheBanner) {
  IngestConfig cfg = TlsConfig();
  cfg.listen[0].implicit_tls = true;
  StartIngest(cfg);
  RawClient client(port_);
  ASSERT_TRUE(client.StartTls());
  EXPECT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  const std::string ehlo = client.Command("EHLO c.test");
  EXPECT_TRUE(absl::StartsWith(ehlo, "250-")) << ehlo;
  EXPECT_FALSE(absl::StrContains(ehlo, "STARTTLS"));
}

// A CA for client certificates (what tls.ini's `ca` names), a client
// certificate it signed (CN=client.test) and a self-signed one it did not
// (CN=stranger.test), made with the openssl CLI once per test binary.
struct ClientCerts {
  std::string ca;
  std::string cert;
  std::string key;
  std::string stranger_cert;
  std::string stranger_key;
};
const ClientCerts& Clients() {
  static const ClientCerts certs = [] {
    ClientCerts c;
    const std::string dir = Cert().dir + "/clients";
    std::filesystem::create_directories(dir);
    const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string cmd =
        "(cd " + dir + " && openssl req -x509" + ec + " -days 2 -subj '/CN=Tern Test Client CA'" +
        " -keyout ca.key -out ca.pem && openssl req -new" + ec + " -subj /CN=client.test" +
        " -keyout client.key -out client.csr && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key" +
        " -CAcreateserial -days 2 -out client.pem && openssl req -x509" + ec + " -days 2 -subj /CN=stranger.test" +
        " -keyout stranger.key -out stranger.pem) >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) {
      c.ca = dir + "/ca.pem";
      c.cert = dir + "/client.pem";
      c.key = dir + "/client.key";
      c.stranger_cert = dir + "/stranger.pem";
      c.stranger_key = dir + "/stranger.key";
    }
    return c;
  }();
  return certs;
}

// The Received: header at the top of a stored message.
std::string ReceivedOf(const std::string& body) { return body.substr(0, body.size() - AfterReceived(body).size()); }

// After the handshake: EHLO and one message; the final reply.
std::string SendOverTls(RawClient& client) {
  const std::string ehlo = client.Command("EHLO client.test");
  if (!absl::StartsWith(ehlo, "250")) {
    return ehlo;
  }
  if (client.Command("MAIL FROM:<a@example.org>") != "250 2.1.0 Ok\r\n" ||
      client.Command("RCPT TO:<r@example.net>") != "250 2.1.5 Ok\r\n" ||
      !absl::StartsWith(client.Command("DATA"), "354 ")) {
    return "<transaction refused>";
  }
  client.Send("Subject: tls\r\n\r\nhi\r\n.\r\n");
  return client.ReadReply();
}

TEST_P(IngestSessionTest, ClientCertificateVerificationShowsInTheReceivedHeader) {
  ASSERT_FALSE(Clients().ca.empty()) << "openssl failed";
  IngestConfig cfg = TlsConfig();  // requestCert is on by default, as in Haraka
  cfg.tls_ca_file = Clients().ca;
  StartIngest(cfg);
  struct Case {
    const char* label;
    std::string cert;
    std::string key;
    const char* verify;
  };
  const Case cases[] = {
      {"signed by the configured CA", Clients().cert, Clients().key, "OK"},
      {"no certificate", "", "", "NO"},
      {"self-signed, unknown", Clients().stranger_cert, Clients().stranger_key, "FAIL"},
  };
  for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(absl::StrCat(c.label, version == TLS1_2_VERSION ? ", TLS 1.2" : ", TLS 1.3"));
      auto client = Connect();
      ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
      int requests = 0;
      RawClient::TlsOptions options;
      options.cert = c.cert;
      options.key = c.key;
      options.cert_requests = &requests;
      options.max_version = version;
      ASSERT_TRUE(client->StartTls(options));
      // Whatever the certificate, the client gets in on an ordinary listener.
      ASSERT_TRUE(absl::StartsWith(SendOverTls(*client), "250 2.0.0 Ok: queued as "));
      EXPECT_EQ(requests, c.cert.empty() ? 1 : 0);  // the server asked for one
      const std::string received = ReceivedOf(fake_.stored().back().body);
      EXPECT_TRUE(absl::StrContains(received, " with ESMTPS id ")) << received;
      // Haraka's and Sendmail's TLS comment, on a line of its own before the date.
      EXPECT_TRUE(absl::StrContains(received, version == TLS1_2_VERSION ? "\r\n\t(version=TLSv1.2 cipher=ECDHE-"
                                                                        : "\r\n\t(version=TLSv1.3 cipher=TLS_"))
          << received;
      EXPECT_TRUE(absl::StrContains(received, absl::StrCat(" verify=", c.verify, ");\r\n\t"))) << received;
    }
  }
}

// What a shell command (the openssl CLI) prints, without the final newline.
std::string Output(const std::string& command) {
  std::string out;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buf[256];
    while (size_t n = fread(buf, 1, sizeof(buf), pipe)) {
      out.append(buf, n);
    }
    pclose(pipe);
  }
  return std::string(absl::StripTrailingAsciiWhitespace(out));
}

// relay_clientcerts (Postfix's permit_tls_clientcerts): a client outside
// relay_acl_allow relays when the certificate it presents, or its public
// key, is listed, whoever signed it; an unlisted certificate, even one that
// verifies against tls.ini's ca, or none at all, grants nothing.
class RelayByCertificate : public IngestSessionTest {
 protected:
  // Starts ingest with `listed` as the relay_clientcerts file, then tries
  // to relay over STARTTLS with each client certificate in turn.
  void Check(const std::string& listed, bool stranger_relays, bool client_relays) {
    ASSERT_FALSE(Clients().ca.empty()) << "openssl failed";
    IngestConfig cfg = TlsConfig();
    cfg.tls_ca_file = Clients().ca;
    cfg.relay_acl = *RelayAcl::Parse("192.0.2.0/24\n", "relay_acl_allow");  // not 127.0.0.1
    auto certs = RelayClientCerts::Parse(listed, "relay_clientcerts");
    ASSERT_TRUE(certs.ok()) << certs.status();
    cfg.relay_clientcerts = *certs;
    StartIngest(cfg);
    struct Case {
      const char* label;
      std::string cert;
      std::string key;
      bool relays;
      const char* verify;
      const char* subject;
    };
    const Case cases[] = {
        {"self-signed", Clients().stranger_cert, Clients().stranger_key, stranger_relays, "FAIL", "CN=stranger.test"},
        {"CA-signed", Clients().cert, Clients().key, client_relays, "OK", "CN=client.test"},
        {"no certificate", "", "", false, "NO", ""},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(c.label);
      auto plain = Connect();  // before STARTTLS the address alone decides
      ASSERT_EQ(plain->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
      EXPECT_EQ(plain->Command("RCPT TO:<r@example.net>"), "550 5.7.1 Relaying denied\r\n");
      auto client = Connect();
      ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
      RawClient::TlsOptions options;
      options.cert = c.cert;
      options.key = c.key;
      ASSERT_TRUE(client->StartTls(options));
      const size_t stored = fake_.stored().size();
      const std::string reply = SendOverTls(*client);
      if (!c.relays) {
        EXPECT_EQ(reply, "<transaction refused>");
        EXPECT_EQ(fake_.stored().size(), stored);
        continue;
      }
      ASSERT_TRUE(absl::StartsWith(reply, "250 2.0.0 Ok: queued as ")) << reply;
      // The queue and hooks learn which certificate it was.
      const tern::v1::ClientInfo info = fake_.stored().back().header.envelope().client();
      EXPECT_EQ(info.tls_client_verify(), c.verify);
      EXPECT_EQ(info.tls_client_subject(), c.subject);
      EXPECT_EQ(info.tls_client_sha256(),
                Output("openssl x509 -in " + c.cert + " -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1"));
    }
  }
};

TEST_P(RelayByCertificate, ACertificateListedByItsFingerprintMayRelay) {
  // As `openssl x509 -fingerprint` prints it: "sha256 Fingerprint=AB:CD:...".
  const std::string stranger = Output("openssl x509 -in " + Clients().stranger_cert + " -noout -fingerprint -sha256");
  ASSERT_TRUE(absl::StartsWith(absl::AsciiStrToLower(stranger), "sha256 fingerprint=")) << stranger;
  Check("# pinned clients\n" + stranger + "\n", /*stranger_relays=*/true, /*client_relays=*/false);
}

TEST_P(RelayByCertificate, ACertificateListedByItsPublicKeyMayRelay) {
  const std::string pubkey = Output("openssl x509 -in " + Clients().cert +
                                    " -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r"
                                    " | cut -d' ' -f1");
  ASSERT_EQ(pubkey.size(), 64u) << pubkey;
  Check(absl::AsciiStrToUpper(pubkey) + "  # client.test's key\n", /*stranger_relays=*/false,
        /*client_relays=*/true);
}

INSTANTIATE_TEST_SUITE_P(Shards, RelayByCertificate, ::testing::Values(1));

TEST_P(IngestSessionTest, WithoutRequestCertTheServerAsksForNoCertificate) {
  IngestConfig cfg = TlsConfig();
  cfg.tls_request_cert = false;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
  int requests = 0;
  RawClient::TlsOptions options;
  options.cert_requests = &requests;
  ASSERT_TRUE(client->StartTls(options));
  ASSERT_TRUE(absl::StartsWith(SendOverTls(*client), "250 2.0.0 Ok: queued as "));
  EXPECT_EQ(requests, 0);  // no CertificateRequest
  EXPECT_TRUE(absl::StrContains(ReceivedOf(fake_.stored().back().body), " verify=NO);\r\n\t"));
}

TEST_P(IngestSessionTest, RequireAuthorizedListenersRefuseClientsWithoutAVerifiedCertificate) {
  ASSERT_FALSE(Clients().ca.empty()) << "openssl failed";
  IngestConfig cfg = TlsConfig();
  cfg.tls_ca_file = Clients().ca;
  // What requireAuthorized[] sets for a listed port: one STARTTLS, one SMTPS.
  cfg.listen = {{"127.0.0.1", 0, /*implicit_tls=*/false, /*require_client_cert=*/true},
                {"127.0.0.1", 0, /*implicit_tls=*/true, /*require_client_cert=*/true}};
  StartIngest(cfg);
  const uint16_t smtps = server_->ports().at(1);
  struct Case {
    const char* label;
    std::string cert;
    std::string key;
    bool admitted;
  };
  const Case cases[] = {
      {"no certificate", "", "", false},
      {"self-signed, unknown", Clients().stranger_cert, Clients().stranger_key, false},
      {"signed by the configured CA", Clients().cert, Clients().key, true},
  };
  for (const auto& [version, c] : {std::pair{TLS1_3_VERSION, cases[0]}, std::pair{TLS1_3_VERSION, cases[1]},
                                   std::pair{TLS1_3_VERSION, cases[2]}, std::pair{TLS1_2_VERSION, cases[0]},
                                   std::pair{TLS1_2_VERSION, cases[1]}, std::pair{TLS1_2_VERSION, cases[2]}}) {
    SCOPED_TRACE(version == TLS1_2_VERSION ? "TLS 1.2" : "TLS 1.3");
    RawClient::TlsOptions options;
    options.cert = c.cert;
    options.key = c.key;
    options.max_version = version;
    {
      SCOPED_TRACE(absl::StrCat("STARTTLS, ", c.label));
      auto client = Connect();
      ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
      const bool handshake = client->StartTls(options);
      const std::string reply = handshake ? SendOverTls(*client) : "";
      if (c.admitted) {
        EXPECT_TRUE(absl::StartsWith(reply, "250 2.0.0 Ok: queued as ")) << reply;
        EXPECT_TRUE(absl::StrContains(ReceivedOf(fake_.stored().back().body), " verify=OK);\r\n\t"));
      } else {
        EXPECT_EQ(reply, "");  // the handshake failed: nothing more is answered
      }
    }
    {
      SCOPED_TRACE(absl::StrCat("SMTPS, ", c.label));
      RawClient client(smtps);
      const bool handshake = client.StartTls(options);
      const std::string banner = handshake ? client.ReadReply() : "";
      EXPECT_EQ(banner, c.admitted ? "220 mx.test ESMTP Tern ready\r\n" : "");
    }
  }
}

TEST_P(IngestSessionTest, ResumedSessionKeepsItsVerificationButCannotSkipARequiredCertificate) {
  ASSERT_FALSE(Clients().ca.empty()) << "openssl failed";
  IngestConfig cfg = TlsConfig();
  cfg.tls_ca_file = Clients().ca;
  cfg.listen = {{"127.0.0.1", 0}, {"127.0.0.1", 0, /*implicit_tls=*/true, /*require_client_cert=*/true}};
  StartIngest(cfg);
  const uint16_t required = server_->ports().at(1);
  for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    SCOPED_TRACE(version == TLS1_2_VERSION ? "TLS 1.2" : "TLS 1.3");
    auto session_after = [&](RawClient::TlsOptions options) {
      options.max_version = version;
      auto client = Connect();
      EXPECT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
      EXPECT_TRUE(client->StartTls(options));
      EXPECT_TRUE(absl::StartsWith(client->Command("EHLO client.test"), "250-"));  // reads the session tickets
      return client;
    };
    RawClient::TlsOptions verified;
    verified.cert = Clients().cert;
    verified.key = Clients().key;
    SSL_SESSION* verified_session = session_after(verified)->TlsSession();
    SSL_SESSION* anonymous_session = session_after(RawClient::TlsOptions())->TlsSession();
    ASSERT_NE(verified_session, nullptr);
    ASSERT_NE(anonymous_session, nullptr);

    {
      SCOPED_TRACE("resumed where it began, without presenting the certificate again");
      RawClient::TlsOptions resume;
      resume.resume = verified_session;
      resume.max_version = version;
      auto client = Connect();
      ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
      ASSERT_TRUE(client->StartTls(resume));
      EXPECT_TRUE(client->TlsResumed());
      ASSERT_TRUE(absl::StartsWith(SendOverTls(*client), "250 2.0.0 Ok: queued as "));
      EXPECT_TRUE(absl::StrContains(ReceivedOf(fake_.stored().back().body), " verify=OK);\r\n\t"));
    }
    {
      SCOPED_TRACE("a session without a certificate offered where one is required");
      RawClient::TlsOptions resume;
      resume.resume = anonymous_session;
      resume.max_version = version;
      RawClient client(required);
      const bool handshake = client.StartTls(resume);
      EXPECT_FALSE(handshake && client.TlsResumed());
      EXPECT_EQ(handshake ? client.ReadReply() : "", "");
    }
    SSL_SESSION_free(verified_session);
    SSL_SESSION_free(anonymous_session);
  }
}

TEST_P(IngestSessionTest, CertificateChosenBySniVerifiesClientsAlike) {
  ASSERT_FALSE(Clients().ca.empty()) << "openssl failed";
  IngestConfig cfg = TlsConfig();
  cfg.tls_ca_file = Clients().ca;
  cfg.listen[0].require_client_cert = true;
  const std::filesystem::path dir = std::filesystem::path(Cert().dir) / "tls-sni-clients";
  std::filesystem::create_directories(dir);
  WriteBundle(dir / "other.pem", "other.test", "DNS:other.test");
  cfg.tls_sni_certificates = {{(dir / "other.pem").string(), (dir / "other.pem").string()}};
  StartIngest(cfg);
  for (const bool with_cert : {true, false}) {
    SCOPED_TRACE(with_cert ? "with a certificate" : "without");
    RawClient::TlsOptions options;
    options.sni = "other.test";
    if (with_cert) {
      options.cert = Clients().cert;
      options.key = Clients().key;
    }
    auto client = Connect();
    ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    const bool handshake = client->StartTls(options);
    if (handshake) {
      EXPECT_EQ(client->PeerCommonName(), "other.test");
    }
    const std::string reply = handshake ? SendOverTls(*client) : "";
    if (with_cert) {
      EXPECT_TRUE(absl::StartsWith(reply, "250 2.0.0 Ok: queued as ")) << reply;
      EXPECT_TRUE(absl::StrContains(ReceivedOf(fake_.stored().back().body), " verify=OK);\r\n\t"));
    } else {
      EXPECT_EQ(reply, "");
    }
  }
}

// Haraka's layout for a certificate and its key in separate files, in a
// subdirectory of config/tls/ (its own test config has these names).
TEST_P(IngestSessionTest, TlsSubdirectoryWithSeparateKeyAndCertificateIsServedBySni) {
  const std::filesystem::path config_dir = std::filesystem::path(Cert().dir) / "config-subdir";
  const std::filesystem::path host_dir = config_dir / "tls" / "example.com";
  std::filesystem::remove_all(config_dir);  // left by the run with the other shard count
  std::filesystem::create_directories(host_dir);
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
                          " -subj '/CN=*.example.com' -keyout " + (host_dir / "_.example.com.key").string() +
                          " -out " + (host_dir / "example.com.crt").string() + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto loaded = LoadIngestConfig(config::ConfigDir(config_dir.string()));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  IngestConfig cfg = TlsConfig();  // default certificate: CN=mx.test
  cfg.tls_sni_certificates = loaded->tls_sni_certificates;
  StartIngest(cfg);
  for (const auto& [sni, expected] : std::vector<std::pair<std::string, std::string>>{
           {"mail.example.com", "*.example.com"}, {"unknown.test", "mx.test"}}) {
    ExpectCertificateForSni(sni, expected);
  }

  // A directory with a key and no certificate that it fits stops startup.
  const std::filesystem::path lonely = config_dir / "tls" / "lonely.example";
  std::filesystem::create_directories(lonely);
  std::filesystem::copy_file(Cert().key, lonely / "lonely.example.key");
  auto refused = LoadIngestConfig(config::ConfigDir(config_dir.string()));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), (lonely / "lonely.example.key").string()))
      << refused.status();
}

TEST_P(IngestSessionTest, AuthIsOfferedOnlyAfterTlsByDefault) {
  IngestConfig cfg = TlsConfig();
  AddUsers(&cfg, "[users]\nalice=secret\n", /*require_tls=*/true);
  StartIngest(cfg);
  auto client = Connect();
  EXPECT_EQ(client->Command("AUTH PLAIN " + B64(std::string("\0alice\0secret", 13))),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
  ASSERT_EQ(client->Command("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
  ASSERT_TRUE(client->StartTls());
  EXPECT_TRUE(absl::StrContains(client->Command("EHLO c.test"), "250 AUTH PLAIN LOGIN CRAM-MD5\r\n"));
  EXPECT_EQ(client->Command("AUTH PLAIN " + B64(std::string("\0alice\0secret", 13))),
            "235 2.7.0 Authentication successful\r\n");
  ASSERT_EQ(client->Command("MAIL FROM:<alice@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");  // relaying by AUTH
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: a\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].header.envelope().client().auth_user(), "alice");
  EXPECT_TRUE(absl::StrContains(stored[0].body, "with ESMTPSA id")) << stored[0].body;
}

TEST_P(IngestSessionTest, AuthLoginAndCramMd5AllowRelaying) {
  IngestConfig cfg = BaseConfig();
  AddUsers(&cfg, "[users]\nbob=hunter2\n", /*require_tls=*/false);
  StartIngest(cfg);
  {
    auto client = Connect();
    ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "550 5.7.1 Relaying denied\r\n");
    ASSERT_EQ(client->Command("RSET"), "250 2.0.0 Ok\r\n");
    EXPECT_EQ(client->Command("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    EXPECT_EQ(client->Command(B64("bob")), "334 UGFzc3dvcmQ6\r\n");
    EXPECT_EQ(client->Command(B64("hunter2")), "235 2.7.0 Authentication successful\r\n");
    EXPECT_EQ(client->Command("AUTH LOGIN"), "503 5.5.1 Error: already authenticated\r\n");
    ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  }
  {
    auto client = Connect();
    const std::string reply = client->Command("AUTH CRAM-MD5");
    ASSERT_TRUE(absl::StartsWith(reply, "334 ")) << reply;
    std::string challenge;
    ASSERT_TRUE(absl::Base64Unescape(reply.substr(4, reply.size() - 6), &challenge));
    EXPECT_TRUE(absl::EndsWith(challenge, "@mx.test>")) << challenge;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_md5(), "hunter2", 7, reinterpret_cast<const unsigned char*>(challenge.data()), challenge.size(), mac,
         &len);
    const std::string digest = absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(mac), len));
    EXPECT_EQ(client->Command(B64("bob " + digest)), "235 2.7.0 Authentication successful\r\n");
    ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  }
}

TEST_P(IngestSessionTest, SlowPasswordHashDoesNotHoldUpOtherSessions) {
  IngestConfig cfg = BaseConfig();
  // SHA-512-crypt at 5,000,000 rounds ("hunter2"): about a second to check,
  // as long as a costly bcrypt hash.
  AddUsers(&cfg,
           "[users]\nbob={SHA512-CRYPT}$6$rounds=5000000$tarpitsalt$m.UURucjzQ/8XuB17SwuZOQfiQkywGPAVCB/"
           "CeXMhnJkI6nnOpR7mfTtEZbfoxEI9BYgBiLt8ngahCmDDpPSD/\n",
           /*require_tls=*/false);
  StartIngest(cfg);
  auto slow = Connect();
  auto other = Connect();  // with one session thread, the same thread as `slow`
  slow->Send("AUTH PLAIN " + B64(std::string("\0bob\0hunter2", 12)) + "\r\n");
  std::this_thread::sleep_for(50ms);  // the check has started
  // The other session is served while the hash is checked...
  EXPECT_EQ(other->Command("NOOP"), "250 2.0.0 Ok\r\n");
  EXPECT_TRUE(slow->NothingYet());
  // ...and the check still ends in success on the AUTH's own session.
  EXPECT_EQ(slow->ReadReply(), "235 2.7.0 Authentication successful\r\n");
  ASSERT_EQ(slow->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(slow->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
}

TEST_P(IngestSessionTest, FailedAuthIsSlowedDownPerIpAndBadInputIs501) {
  IngestConfig cfg = BaseConfig();
  AddUsers(&cfg, "[users]\nbob=hunter2\n", /*require_tls=*/false);
  StartIngest(cfg);
  auto client = Connect();
  EXPECT_EQ(client->Command("AUTH PLAIN !!notbase64!!"), "501 5.5.2 Cannot decode response\r\n");
  EXPECT_EQ(client->Command("AUTH PLAIN"), "334 \r\n");
  EXPECT_EQ(client->Command("*"), "501 5.0.0 Authentication cancelled\r\n");
  EXPECT_EQ(client->Command("AUTH GSSAPI"), "504 5.5.4 Unrecognized authentication type\r\n");
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(client->Command("AUTH PLAIN " + B64(std::string("\0bob\0wrong", 10))),
            "535 5.7.8 Authentication credentials invalid\r\n");
  const auto first = std::chrono::steady_clock::now() - start;
  EXPECT_GE(first, 190ms);
  start = std::chrono::steady_clock::now();
  // Another connection from the same IP is not a way around the tarpit.
  auto other = Connect();
  EXPECT_EQ(other->Command("AUTH PLAIN " + B64(std::string("\0bob\0wrong2", 11))),
            "535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 390ms);
  EXPECT_EQ(other->Command("AUTH PLAIN " + B64(std::string("\0bob\0hunter2", 12))),
            "235 2.7.0 Authentication successful\r\n");
}

TEST_P(IngestSessionTest, BdatChunksAreQueuedLikeData) {
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  const std::string part1 = "Subject: b\r\nMessage-ID: <m@x>\r\nDate: d\r\n\r\nline\r";
  const std::string part2 = "\n.leading dot\r\nno end";
  client->Send("BDAT " + std::to_string(part1.size()) + "\r\n" + part1);
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 " + std::to_string(part1.size()) + " octets received\r\n");
  EXPECT_EQ(client->Command("DATA"), "503 5.5.1 Error: DATA after BDAT\r\n");
  client->Send("BDAT " + std::to_string(part2.size()) + " LAST\r\n" + part2);
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  // No dot-unstuffing in BDAT; a missing final line end is added.
  EXPECT_EQ(AfterReceived(stored[0].body),
            "Subject: b\r\nMessage-ID: <m@x>\r\nDate: d\r\n\r\nline\r\n.leading dot\r\nno end\r\n");
}

TEST_P(IngestSessionTest, BdatChunkBoundaryIsExactWhenPipelined) {
  StartIngest(BaseConfig());
  auto client = Connect();
  client->Send("MAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.net>\r\nBDAT 1 LAST\r\na\r\nNOOP\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  // The CRLF after the 1-octet chunk is an (empty) command line of its own.
  EXPECT_EQ(client->ReadReply(), "500 5.5.2 Syntax error: empty command\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  // "a" is no header field: an empty line separates the added fields from it.
  EXPECT_EQ(WithoutAdded(AfterReceived(stored[0].body)), "\r\na\r\n");
}

TEST_P(IngestSessionTest, BdatOutsideATransactionStillReadsTheChunk) {
  StartIngest(BaseConfig());
  auto client = Connect();
  // "MAIL FROM:<x@y>" inside the chunk must not run as a command.
  const std::string chunk = "MAIL FROM:<x@y>\r\n";
  client->Send("BDAT " + std::to_string(chunk.size()) + "\r\n" + chunk);
  EXPECT_EQ(client->ReadReply(), "503 5.5.1 Error: need MAIL command\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<r@example.net>"), "503 5.5.1 Error: need MAIL command\r\n");
  EXPECT_EQ(fake_.calls(), 0);
}

TEST_P(IngestSessionTest, BdatOverMaxBytesGets552) {
  IngestConfig cfg = BaseConfig();
  cfg.max_bytes = 2048;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  client->Send("BDAT 3000\r\n" + std::string(3000, 'x'));
  EXPECT_EQ(client->ReadReply(), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(client->Command("NOOP"), "250 2.0.0 Ok\r\n");
  EXPECT_TRUE(fake_.stored().empty());
  // A chunk far beyond what would be read and dropped closes the session.
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("BDAT 999999999999"), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(client->ReadReply(), "421 4.7.0 mx.test Error: closing connection\r\n");
  EXPECT_TRUE(client->AtEof());
}

TEST_P(IngestSessionTest, AddsMessageIdAndDateWhenMissingAndStripsAuthResults) {
  StartIngest(BaseConfig());
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Authentication-Results: evil; dkim=pass\r\nSubject: s\r\n\r\nbody\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  const auto stored = fake_.stored();
  ASSERT_EQ(stored.size(), 1u);
  const std::string msg = AfterReceived(stored[0].body);
  EXPECT_TRUE(absl::StartsWith(msg, "Subject: s\r\nMessage-ID: <")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "@mx.test>\r\nDate: ")) << msg;
  EXPECT_TRUE(absl::EndsWith(msg, "\r\n\r\nbody\r\n")) << msg;
  EXPECT_FALSE(absl::StrContains(msg, "Authentication-Results"));
}

TEST_P(IngestSessionTest, MailLoopGets554AndHeaderFloodGets552) {
  IngestConfig cfg = BaseConfig();
  cfg.max_received = 5;
  cfg.max_header_lines = 20;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string received;
  for (int i = 0; i < 6; ++i) received += "Received: from hop" + std::to_string(i) + "\r\n";
  client->Send(received + "\r\nbody\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "554 5.4.6 Too many hops (mail loop detected)\r\n");
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  std::string flood;
  for (int i = 0; i < 30; ++i) flood += "X-Flood: " + std::to_string(i) + "\r\n";
  client->Send(flood + "\r\nbody\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "552 5.3.4 Message header too large\r\n");
  EXPECT_TRUE(fake_.stored().empty());
}

TEST_P(IngestSessionTest, TooManyRecipientsGets452) {
  IngestConfig cfg = BaseConfig();
  cfg.max_recipients = 2;
  StartIngest(cfg);
  auto client = Connect();
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<r1@example.net>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<r2@example.net>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<r3@example.net>"), "452 4.5.3 Error: too many recipients\r\n");
}

TEST_P(IngestSessionTest, ConnectionsOverThePerIpLimitGet421) {
  IngestConfig cfg = BaseConfig();
  cfg.max_connections_per_ip = 2;
  StartIngest(cfg);
  auto a = Connect();
  auto b = Connect();
  RawClient c(port_);
  EXPECT_EQ(c.ReadReply(), "421 4.7.0 mx.test Too many connections from your address, try again later\r\n");
  EXPECT_TRUE(c.AtEof());
  a->Command("QUIT");
  a->Close();
  // The slot is free again once a session ended.
  for (int i = 0; i < 50; ++i) {
    RawClient d(port_);
    if (d.ReadReply() == "220 mx.test ESMTP Tern ready\r\n") {
      return;
    }
    std::this_thread::sleep_for(20ms);
  }
  ADD_FAILURE() << "slot not freed";
}

TEST_P(IngestSessionTest, ListedProxyGetsNoBannerAndTimesOut) {
  IngestConfig cfg = BaseConfig();
  cfg.haproxy_hosts = {*Cidr::Parse("127.0.0.0/8")};
  cfg.proxy_timeout = 300ms;
  StartIngest(cfg);
  RawClient client(port_);
  // The first thing said is the timeout: no banner before PROXY.
  EXPECT_EQ(client.ReadReply(), "421 4.4.2 PROXY timed out\r\n");
  EXPECT_TRUE(client.AtEof());
  RawClient bad(port_);
  bad.Send("PROXY TCP4 nonsense\r\n");
  EXPECT_EQ(bad.ReadReply(), "421 4.7.0 Invalid PROXY format\r\n");
}

// A PROXY v2 header (HAProxy's send-proxy-v2, AWS NLB) for TCP over IPv4.
std::string ProxyV2Tcp4(const std::string& src, uint16_t src_port, uint8_t command = 0x1) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h.push_back(static_cast<char>(0x20 | command));
  h.push_back('\x11');  // AF_INET, STREAM
  h += std::string("\x00\x0c", 2);
  in_addr a{};
  inet_pton(AF_INET, src.c_str(), &a);
  h.append(reinterpret_cast<const char*>(&a), 4);
  inet_pton(AF_INET, "198.51.100.1", &a);
  h.append(reinterpret_cast<const char*>(&a), 4);
  h.push_back(static_cast<char>(src_port >> 8));
  h.push_back(static_cast<char>(src_port & 0xFF));
  h += std::string("\x00\x19", 2);
  return h;
}

TEST_P(IngestSessionTest, ProxyHeaderFromListedHostSetsTheClientAddress) {
  IngestConfig cfg = BaseConfig();
  cfg.haproxy_hosts = {*Cidr::Parse("127.0.0.1")};
  StartIngest(cfg);
  for (const std::string& header :
       {std::string("PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\n"), ProxyV2Tcp4("192.0.2.9", 40000)}) {
    SCOPED_TRACE(header[0] == 'P' ? "v1" : "v2");
    RawClient client(port_);
    // In two pieces (for v2 the cut is inside the fixed part): the header
    // is read whole.
    client.Send(header.substr(0, 7));
    std::this_thread::sleep_for(50ms);
    client.Send(header.substr(7));
    ASSERT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
    EXPECT_TRUE(absl::StartsWith(client.Command("EHLO c.test"), "250-mx.test Hello c.test [192.0.2.9]\r\n"));
    ASSERT_EQ(client.Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    // 192.0.2.9 is not in the relay ACL (loopback is, but that is the proxy).
    EXPECT_EQ(client.Command("RCPT TO:<r@example.net>"), "550 5.7.1 Relaying denied\r\n");
  }
}

TEST_P(IngestSessionTest, ProxyV2LocalKeepsTheProxysOwnAddress) {
  IngestConfig cfg = BaseConfig();
  cfg.haproxy_hosts = {*Cidr::Parse("127.0.0.1")};
  StartIngest(cfg);
  RawClient client(port_);
  client.Send(ProxyV2Tcp4("192.0.2.9", 40000, /*command=*/0x0));  // LOCAL: a health check
  ASSERT_EQ(client.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  EXPECT_TRUE(absl::StartsWith(client.Command("EHLO c.test"), "250-mx.test Hello c.test [127.0.0.1]\r\n"));
}

TEST_P(IngestSessionTest, MalformedOrUnfinishedProxyV2HeaderGetsNoBanner) {
  IngestConfig cfg = BaseConfig();
  cfg.haproxy_hosts = {*Cidr::Parse("127.0.0.0/8")};
  cfg.proxy_timeout = 300ms;
  StartIngest(cfg);
  std::string bad = ProxyV2Tcp4("192.0.2.9", 40000);
  bad[13] = '\x41';  // address family 4 does not exist
  RawClient client(port_);
  client.Send(bad);
  EXPECT_EQ(client.ReadReply(), "421 4.7.0 Invalid PROXY format\r\n");
  EXPECT_TRUE(client.AtEof());
  // A header cut short: the rest never comes, so the proxy timeout ends it.
  RawClient cut(port_);
  cut.Send(ProxyV2Tcp4("192.0.2.9", 40000).substr(0, 20));
  EXPECT_EQ(cut.ReadReply(), "421 4.4.2 PROXY timed out\r\n");
  EXPECT_TRUE(cut.AtEof());
}

TEST_P(IngestSessionTest, ProxyLineFromUnlistedHostIsRefused) {
  StartIngest(BaseConfig());
  auto client = Connect();
  EXPECT_EQ(client->Command("PROXY TCP4 192.0.2.9 198.51.100.1 40000 25"),
            "421 4.7.0 mx.test PROXY not allowed from 127.0.0.1\r\n");
  EXPECT_TRUE(client->AtEof());
}

TEST_P(IngestSessionTest, ShutdownLetsTheTransactionInFlightFinish) {
  StartIngest(BaseConfig());
  auto busy = Connect();
  auto idle = Connect();
  ASSERT_EQ(busy->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(busy->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  ASSERT_EQ(busy->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  busy->Send("Subject: late\r\n\r\n");
  server_->Shutdown(5s);
  EXPECT_EQ(idle->ReadReply(), "421 4.3.2 mx.test Service shutting down, closing connection\r\n");
  busy->Send("still here\r\n.\r\n");
  EXPECT_EQ(busy->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");
  EXPECT_EQ(busy->ReadReply(), "421 4.3.2 mx.test Service shutting down, closing connection\r\n");
  EXPECT_TRUE(server_->WaitIdle(5s));
}

TEST_P(IngestSessionTest, ManySessionsAtOnceAreEachQueuedAndAllAreToldOfTheShutdown) {
  StartIngest(BaseConfig());
  // Round robin: with three shards, every thread has several of these.
  constexpr int kSessions = 9;
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.push_back(Connect());
    ASSERT_EQ(clients.back()->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    ASSERT_EQ(clients.back()->Command(absl::StrCat("RCPT TO:<r", i, "@example.net>")), "250 2.1.5 Ok\r\n");
    ASSERT_EQ(clients.back()->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  }
  for (int i = 0; i < kSessions; ++i) {
    clients[i]->Send(absl::StrCat("Subject: m", i, "\r\n\r\nbody ", i, "\r\n.\r\n"));
  }
  std::set<std::string> replies;
  for (auto& c : clients) {
    const std::string reply = c->ReadReply();
    EXPECT_TRUE(absl::StartsWith(reply, "250 2.0.0 Ok: queued as fake-")) << reply;
    replies.insert(reply);
  }
  EXPECT_EQ(replies.size(), static_cast<size_t>(kSessions));
  std::set<std::string> stored;
  for (const auto& m : fake_.stored()) {
    ASSERT_EQ(m.header.envelope().recipients_size(), 1);
    stored.insert(absl::StrCat(m.header.envelope().recipients(0).address(), " ",
                               WithoutAdded(AfterReceived(m.body))));
  }
  std::set<std::string> expected;
  for (int i = 0; i < kSessions; ++i) {
    expected.insert(absl::StrCat("r", i, "@example.net Subject: m", i, "\r\n\r\nbody ", i, "\r\n"));
  }
  EXPECT_EQ(stored, expected);
  // Every session, whichever thread it is on, hears of the shutdown.
  server_->Shutdown(5s);
  for (auto& c : clients) {
    EXPECT_EQ(c->ReadReply(), "421 4.3.2 mx.test Service shutting down, closing connection\r\n");
    EXPECT_TRUE(c->AtEof());
  }
  EXPECT_TRUE(server_->WaitIdle(5s));
}

TEST_P(IngestSessionTest, EachSessionThreadReportsHowBusyItIs) {
  IngestConfig cfg = BaseConfig();
  cfg.thread_busy_interval = 50ms;
  StartIngest(cfg);
  auto busy = [](int thread) -> metrics::Gauge& {
    return metrics::Registry::Global().GetGauge("tern_ingest_session_thread_busy_percent", "",
                                                {{"thread", absl::StrCat(thread)}});
  };
  const int last = GetParam() - 1;
  // The first connection goes to the first thread: keep it busy with NOOPs
  // until its gauge shows work, which takes a few of its 50 ms intervals
  // (bounded: 10 s or 500,000 round trips).
  auto client = Connect();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  bool seen = false;
  for (int i = 0; i < 500'000 && !seen && std::chrono::steady_clock::now() < deadline; ++i) {
    ASSERT_EQ(client->Command("NOOP"), "250 2.0.0 Ok\r\n");
    seen = busy(0).value() >= 1;
  }
  EXPECT_TRUE(seen) << "thread 0 never reported any CPU time";
  if (last > 0) {
    // A thread without sessions comes down to nothing.
    bool idle = false;
    for (int i = 0; i < 100 && !idle; ++i) {
      std::this_thread::sleep_for(20ms);
      idle = busy(last).value() == 0;
    }
    EXPECT_TRUE(idle) << "thread " << last << " reported " << busy(last).value();
  }
  for (int t = 0; t <= last; ++t) {
    EXPECT_LE(busy(t).value(), 100);
    EXPECT_GE(busy(t).value(), 0);
  }
}

// SIGHUP (IngestServer::Reload): what new connections meet changes, what an
// open session started with stays.
TEST_P(IngestSessionTest, ReloadAppliesANewRelayAclAndNameToNewSessionsOnly) {
  StartIngest(BaseConfig());  // 127.0.0.1 may relay
  auto before = Connect();

  IngestConfig closed = BaseConfig();
  closed.me = "renamed.test";
  closed.relay_acl = *RelayAcl::Parse("192.0.2.0/24\n", "relay_acl_allow");  // not 127.0.0.1
  auto result = server_->Reload(closed);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->needs_restart.empty());

  RawClient after(port_);
  ASSERT_EQ(after.ReadReply(), "220 renamed.test ESMTP Tern ready\r\n");
  ASSERT_TRUE(absl::StartsWith(after.Command("EHLO client.test"), "250-renamed.test Hello"));
  ASSERT_EQ(after.Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(after.Command("RCPT TO:<r@example.net>"), "550 5.7.1 Relaying denied\r\n");

  // The session opened before the reload keeps the ACL it started with.
  ASSERT_EQ(before->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(before->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");

  ASSERT_TRUE(server_->Reload(BaseConfig()).ok());
  EXPECT_EQ(SendOne(), "250 2.0.0 Ok: queued as fake-1\r\n");
}

TEST_P(IngestSessionTest, ReloadServesARenewedCertificateAndKeepsTheOldOneWhenTheNewFailsToLoad) {
  const std::filesystem::path dir = std::filesystem::path(Cert().dir) / absl::StrCat("renewal-", GetParam());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  IngestConfig cfg = TlsConfig();  // CN=mx.test
  StartIngest(cfg);
  ExpectCertificateForSni("", "mx.test");

  // The renewed pair, as certbot leaves it: one bundle in place of the old.
  WriteBundle(dir / "renewed.pem", "renewed.test", "DNS:mx.test");
  IngestConfig renewed = TlsConfig();
  renewed.tls_key_file = renewed.tls_cert_file = (dir / "renewed.pem").string();
  ASSERT_TRUE(server_->Reload(renewed).ok());
  ExpectCertificateForSni("", "renewed.test");

  // A half-written key: the reload fails, naming the file, and the last
  // good certificate keeps being served.
  std::ofstream(dir / "broken.pem") << "-----BEGIN PRIVATE KEY-----\nAAAA\n";
  IngestConfig broken = TlsConfig();
  broken.tls_key_file = broken.tls_cert_file = (dir / "broken.pem").string();
  auto refused = server_->Reload(broken);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "broken.pem")) << refused.status();
  ExpectCertificateForSni("", "renewed.test");

  // TLS turned off: new sessions no longer offer STARTTLS.
  ASSERT_TRUE(server_->Reload(BaseConfig()).ok());
  auto plain = std::make_unique<RawClient>(port_);
  ASSERT_EQ(plain->ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
  EXPECT_FALSE(absl::StrContains(plain->Command("EHLO client.test"), "STARTTLS"));
  EXPECT_EQ(plain->Command("STARTTLS"), "502 5.5.1 Error: command not implemented\r\n");
}

TEST_P(IngestSessionTest, ReloadAddsUsersIncludingSlowHashesAndKeepsTheTarpit) {
  IngestConfig cfg = BaseConfig();
  AddUsers(&cfg, "[users]\nbob=hunter2\n", /*require_tls=*/false);
  StartIngest(cfg);
  {
    auto client = Connect();
    EXPECT_EQ(client->Command("AUTH PLAIN " + B64(std::string("\0carol\0pw", 9))),
              "535 5.7.8 Authentication credentials invalid\r\n");
  }
  // carol's hash is SHA-512-crypt, checked on the auth threads, which the
  // first server had no reason to start.
  IngestConfig more = BaseConfig();
  AddUsers(&more,
           "[users]\nbob=hunter2\ncarol={SHA512-CRYPT}$6$rounds=5000000$tarpitsalt$m.UURucjzQ/8XuB17SwuZOQfiQkywGP"
           "AVCB/CeXMhnJkI6nnOpR7mfTtEZbfoxEI9BYgBiLt8ngahCmDDpPSD/\n",
           /*require_tls=*/false);
  more.auth.fail_delay = 300ms;
  ASSERT_TRUE(server_->Reload(more).ok());
  auto slow = Connect();
  auto other = Connect();
  slow->Send("AUTH PLAIN " + B64(std::string("\0carol\0hunter2", 14)) + "\r\n");
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(other->Command("NOOP"), "250 2.0.0 Ok\r\n");  // not held up by the hash
  EXPECT_EQ(slow->ReadReply(), "235 2.7.0 Authentication successful\r\n");
  ASSERT_EQ(slow->Command("MAIL FROM:<carol@example.org>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(slow->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");

  // The failure before the reload is remembered, and the new base delay
  // applies: the second failure from this IP waits twice 300 ms.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(other->Command("AUTH PLAIN " + B64(std::string("\0bob\0wrong", 10))),
            "535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 590ms);
}

TEST_P(IngestSessionTest, ReloadNamesRestartOnlySettingsAndKeepsThemRunning) {
  StartIngest(BaseConfig());
  const uint16_t port = port_;
  IngestConfig moved = BaseConfig();
  moved.listen = {{"127.0.0.1", 1}};
  moved.io_threads = 7;
  moved.queues = {"127.0.0.1:1"};
  moved.max_recipients = 1;  // this one applies
  auto result = server_->Reload(moved);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->needs_restart,
            (std::vector<std::string>{"smtp.ini [main] listen/smtps_port", "smtp.ini [main] nodes",
                                      "tern.ini [ingest] queue"}));
  EXPECT_EQ(server_->ports(), std::vector<uint16_t>{port});
  auto client = Connect();  // still on the old port, still queuing to the running queue
  ASSERT_EQ(client->Command("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(client->Command("RCPT TO:<r@example.net>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(client->Command("RCPT TO:<s@example.net>"), "452 4.5.3 Error: too many recipients\r\n");
  ASSERT_EQ(client->Command("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  client->Send("Subject: s\r\n\r\nbody\r\n.\r\n");
  EXPECT_EQ(client->ReadReply(), "250 2.0.0 Ok: queued as fake-1\r\n");

  // A config that is wrong in itself changes nothing.
  IngestConfig wrong = BaseConfig();
  wrong.me.clear();
  EXPECT_FALSE(server_->Reload(wrong).ok());
  RawClient again(port_);
  EXPECT_EQ(again.ReadReply(), "220 mx.test ESMTP Tern ready\r\n");
}

INSTANTIATE_TEST_SUITE_P(Shards, IngestSessionTest, ::testing::Values(1, 3),
                         [](const ::testing::TestParamInfo<int>& info) { return absl::StrCat(info.param); });

}  // namespace
}  // namespace tern::ingest
