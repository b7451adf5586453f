// File: session.h
//
// Session: one SMTP server session, from the 220 greeting to QUIT, written as
// one coroutine that reads like the RFC 5321 dialogue (STYLE §4.6.1). It
// parses each command with lib/smtp (pure), keeps the transaction state,
// refuses relaying for clients that are neither in the relay ACL nor
// authenticated, and streams DATA and BDAT content through
// smtp::MessageAssembler to the queue (queue_client.h) while it reads it. It
// says 250 only after the queue has answered with a message id; any failure on
// our side is a 4xx. When hooks.ini calls queue_outbound, the user's hook
// decides before the queue is asked (queue_outbound_hook.h).
//
// Before the banner: the PROXY v1 line from a listed proxy, the connection
// limits, and the TLS handshake on an implicit-TLS (SMTPS) listener.
//
// ServerCore is what all sessions of one IngestServer share; ServerTls (in
// it) makes the TLS contexts their handshakes use, and ClientCertificate is
// what a handshake learned of the client's certificate.
//
// Thread-safety: a Session lives on one io_context (its shard), run by one
// thread; everything else that touches it is posted there. The ServerCore is
// shared by all shards: what sessions change in it is under its mutex.
//
// Standards: RFC 5321 (the dialogue, §4.5.2 dot-stuffing, §4.5.3.1 limits,
// §4.4 trace fields), RFC 2920 (server-side PIPELINING: replies are sent when
// the client has nothing more buffered), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
// RFC 2034 (ENHANCEDSTATUSCODES), RFC 6531 (SMTPUTF8), RFC 3461 (DSN),
// RFC 3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 8446 §4.3.2 and RFC
// 5246 §7.4.4 (CertificateRequest), RFC 5280 §6 (verifying the client's
// chain), RFC 4954 (AUTH), RFC 3030 (CHUNKING/BDAT), HAProxy PROXY protocol
// v1.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asio/any_io_executor.hpp"
#include "asio/awaitable.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/steady_timer.hpp"
#include "asio/thread_pool.hpp"
#include "lib/address/mailbox.h"
#include "lib/net/connection.h"
#include "lib/smtp/command.h"
#include "lib/smtp/message_assembler.h"
#include "services/ingest/auth.h"
#include "services/ingest/config.h"
#include "services/ingest/proxy_protocol.h"
#include "services/ingest/queue_outbound_hook.h"
#include "tern/v1/queue.pb.h"

namespace tern::ingest {

class QueueClient;
class EnqueueCall;
class Session;

// What a TLS handshake learned of the client's certificate (tls.ini
// requestCert), read from its SSL object once it is over. Never the
// certificate itself: its names are enough to log.
struct ClientCertificate {
  // The words Sendmail and Haraka write in Received: (verify=...): kOk, a
  // certificate that verified against tls.ini's `ca`; kFail, one that was
  // presented and did not; kNo, none presented (or none asked for).
  enum class Verify { kNo, kOk, kFail };
  Verify verify = Verify::kNo;
  // The presented certificate's subject and issuer, RFC 2253 (non-ASCII
  // escaped), at most 256 characters; empty when none was presented.
  std::string subject;
  std::string issuer;
  // Why it did not verify (OpenSSL's X509_verify_cert_error_string).
  std::string error;
  // SHA-256 of the certificate (DER) and of its public key
  // (SubjectPublicKeyInfo), lower-case hex, for relay_clientcerts; empty
  // when none was presented.
  std::string sha256;
  std::string pubkey_sha256;

  // "OK", "FAIL" or "NO".
  static const char* Name(Verify verify);
  // What the server handshake on `ssl` (Connection::tls_native_handle(),
  // null without one) learned: after it succeeded, a resumed one included
  // (OpenSSL keeps the certificate and its verify result in the session);
  // after it failed on a listener that requires a certificate, the rejected
  // certificate and why. Defined in server.cc.
  static ClientCertificate Of(SSL* ssl);
};

// ServerTls: the TLS contexts of the server side of STARTTLS and SMTPS, made
// once from the config (server.cc) and shared by every handshake: the
// default certificate (tls.ini's, else the first of config/tls/) and the
// certificates chosen by SNI. With requestCert each asks for a client
// certificate (SSL_VERIFY_PEER) and verifies it against tls.ini's `ca`, else
// the system's default CAs, but lets the handshake go on whatever it finds,
// as Postfix does; OpenSSL records the result for ClientCertificate::Of.
// When a listener requires a certificate, those listeners get a second set
// of the same contexts that fails the handshake without a verified one,
// with another session id context and other ticket keys, so that a session
// that began where no certificate was required can never be resumed where
// one is.
//
// Thread-safety: Create() once; ForHandshake() from any thread.
class ServerTls {
 public:
  // Loads every certificate and key; an error names the file.
  static absl::StatusOr<std::shared_ptr<ServerTls>> Create(const IngestConfig& config);
  ServerTls(const ServerTls&) = delete;
  ServerTls& operator=(const ServerTls&) = delete;

  // The context for a server handshake on a listener that does or does not
  // require a client certificate.
  std::shared_ptr<asio::ssl::context> ForHandshake(bool require_client_cert) const;

 private:
  // The contexts of one client-certificate policy.
  struct Set {
    // tls.ini's certificate, else the first of config/tls/.
    std::shared_ptr<asio::ssl::context> default_ctx;
    // Each name a certificate serves, lower case ("*.example.com" for a
    // wildcard), to its context: the SNI callback's argument, so it
    // switches within the set. Empty without config/tls/.
    std::map<std::string, std::shared_ptr<asio::ssl::context>> sni;
  };

  ServerTls() = default;
  // Makes sets_[require_client_cert]. With requestCert, `store` holds the
  // trusted CAs and `ca_names` (null without `ca`) what the
  // CertificateRequest lists.
  absl::Status MakeSet(const IngestConfig& config, bool require_client_cert, X509_STORE* store,
                       const STACK_OF(X509_NAME)* ca_names);

  Set sets_[2];  // [require_client_cert]; the second only when a listener requires
};

// What a reload (IngestServer::Reload) replaces as one: the config and the
// TLS contexts built from it. A session takes the current one when it starts
// and keeps it to its end, so it never sees half of an old config and half
// of a new one, and a renewed certificate reaches only new connections.
struct IngestSettings {
  IngestConfig config;
  // The server's TLS contexts; null when TLS is not configured.
  std::shared_ptr<ServerTls> tls;
};

struct ServerCore : std::enable_shared_from_this<ServerCore> {
  std::shared_ptr<QueueClient> queue;
  // The user's queue_outbound hook; null when hooks.ini does not call it.
  std::shared_ptr<QueueOutboundHook> hook;
  // The io_contexts that run sessions, one thread each (smtp.ini nodes);
  // shards[0] also runs the acceptors and the shutdown's grace timer.
  std::vector<asio::io_context*> shards;
  std::atomic<size_t> next_shard{0};
  std::vector<std::shared_ptr<asio::ip::tcp::acceptor>> acceptors;
  // Parallel to acceptors: what each listens as (implicit TLS, client
  // certificate required).
  std::vector<ListenAddress> listeners;
  std::atomic<bool> draining{false};
  // The IngestServer is gone (tern-ingest is exiting): shards may be
  // stopped or being destroyed, so nothing is posted to them any more.
  std::atomic<bool> closed{false};
  // shards[0] only.
  std::unique_ptr<asio::steady_timer> grace_timer;
  // Checks slow password hashes (UserDb::SlowToVerify) off the session
  // threads, so one AUTH against a bcrypt hash does not hold up every other
  // session of its thread for its 50-250 ms. Null when no user has one.
  // Joined by ~IngestServer, before the shards are destroyed.
  std::unique_ptr<asio::thread_pool> auth_pool;

  // Sessions of every shard, by serial number (never reused, so a task
  // posted to a session that has ended finds nothing), with the executor
  // each runs on. Under mu, with the per-IP counts and the AUTH tarpit.
  struct Registered {
    Session* session;
    asio::any_io_executor executor;
  };
  std::mutex mu;
  uint64_t next_serial = 0;
  std::map<uint64_t, Registered> sessions;
  std::map<std::string, size_t> sessions_per_ip;
  std::optional<AuthTarpit> tarpit;
  std::shared_ptr<const IngestSettings> settings;  // never null once created

  // Any thread: the settings new sessions start with.
  std::shared_ptr<const IngestSettings> CurrentSettings();

  // Set (under idle_mu) once draining and no session is left.
  std::mutex idle_mu;
  std::condition_variable idle_cv;
  bool idle = false;

  // The shard for the next connection (round robin).
  asio::io_context& NextShard();
  // Any thread: signals WaitIdle() when draining has finished.
  void CheckIdle();
  // Any thread: sessions open on all shards.
  size_t SessionCount();
  // Shutdown, from shards[0]: runs `fn` on every session, each on its own
  // shard, unless the session has ended by then.
  void ForEachSession(std::function<void(Session&)> fn);
};

// Runs one session on `socket`, accepted on `listener`, to its end. The
// coroutine owns everything.
asio::awaitable<void> RunSession(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core,
                                 ListenAddress listener);

class Session {
 public:
  Session(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core, const ListenAddress& listener);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  asio::awaitable<void> Run();

  // Shutdown: interrupts a wait for the next command (the session then says
  // 421 and closes). Has no effect inside DATA.
  void Wake();
  // Closes the connection at once and cancels a queue call in flight.
  void Abort();
  // After MAIL and before the transaction's final reply.
  bool in_transaction() const { return in_mail_; }

 private:
  enum class ReadResult { kLine, kTimeout, kWoken, kClosed };
  enum class Challenge { kOk, kCancelled, kBadBase64, kTooLong, kEnd };
  struct Recipient {
    address::Mailbox mailbox;
    uint32_t notify = 0;
    std::string orcpt;
  };

  // PROXY, limits, implicit TLS; false when the session must end.
  asio::awaitable<bool> Prelude();
  // A listed proxy's PROXY header, v1 or v2 (told apart by its first octet),
  // all of it within proxy_timeout. kLine when one was read, parsed into
  // `header` (an error if it is malformed).
  asio::awaitable<ReadResult> ReadProxyHeader(absl::StatusOr<ProxyHeader>* header);
  asio::awaitable<void> Dialogue();
  // Returns false when the session must end.
  asio::awaitable<bool> Handle(smtp::Command& cmd);
  void Ehlo();
  asio::awaitable<bool> StartTls();
  // The server handshake with `ctx` (from ServerTls::ForHandshake); logs
  // `tls` with what it learned of the client's certificate, or `tls_failed`.
  // False when the session must end.
  asio::awaitable<bool> TlsHandshake(std::shared_ptr<asio::ssl::context> ctx);
  asio::awaitable<bool> Auth(const smtp::Command& cmd);
  asio::awaitable<Challenge> AskClient(absl::string_view prompt, std::string* decoded);
  asio::awaitable<void> AuthFailed(absl::string_view mechanism, absl::string_view user);
  asio::awaitable<bool> Data();
  asio::awaitable<bool> Bdat(const smtp::Command& cmd);
  // Opens the assembler, and the Enqueue stream unless the message may go
  // whole (see queue_client.h); on failure replies 451/452.
  asio::awaitable<bool> OpenBody();
  asio::awaitable<bool> OpenStream();
  // Keeps a message whole while it is within enqueue_inline_max; past that
  // (or when streaming from the start) sends the assembler's output to the
  // queue once a chunk is ready (or all of it when `all`).
  asio::awaitable<void> PushBody(bool all);
  // Whether PushBody(all) has anything to do now. A plain test, so the DATA
  // loop enters no coroutine for the many lines that only grow the message.
  bool PushDue(bool all) const;
  // The content is complete: refuse it or send the rest and wait for the
  // queue's durable answer. False if the client is gone.
  asio::awaitable<bool> FinishBody();
  // Asks the queue_outbound hook (when configured) about the message about
  // to be queued; `*body` is lent to the call. True when the hook rejected
  // or took the message: the reply is in out_ and the transaction is over.
  // UserDb::Verify, on the auth pool when the user's hash is slow; resumes
  // on this session's thread either way.
  asio::awaitable<bool> VerifyPassword(const std::string& user, const std::string& password);
  asio::awaitable<bool> HookDecides(tern::v1::Envelope envelope, std::string* body, uint64_t size);
  void AbortBody();
  // How much content a message may have, discarded after max.bytes, before
  // the client is disconnected.
  uint64_t DiscardLimit() const;
  // Reads exactly `n` octets (BDAT) into the assembler, or drops them when
  // there is none.
  asio::awaitable<ReadResult> ReadBytes(uint64_t n);
  // Reads one line; waits at most `timeout` (default: inactivity_timeout).
  // `ignore_drain`: keep reading while the server drains (inside a command).
  asio::awaitable<ReadResult> ReadLine(size_t max_len, net::Line* line, bool ignore_drain = false,
                                       std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  asio::awaitable<void> Sleep(std::chrono::milliseconds delay);
  bool InputPending() const { return conn_.buffered() > 0; }
  // Sends buffered replies; false if the client is gone.
  asio::awaitable<bool> Flush();
  void Reply(std::string line);
  void QueueFailure(const absl::Status& status);
  void ResetTransaction();
  tern::v1::EnqueueHeader BuildHeader() const;
  std::string BuildReceived() const;

  std::shared_ptr<ServerCore> core_;
  // This session's settings for its whole life (see IngestSettings).
  std::shared_ptr<const IngestSettings> settings_;
  const IngestConfig& cfg_;
  net::Connection conn_;
  // What the TLS handshake learned of the client's certificate.
  ClientCertificate client_cert_;
  std::string client_ip_;
  uint16_t client_port_ = 0;
  std::string peer_ip_;          // the socket's peer (the proxy, with PROXY)
  bool implicit_tls_ = false;
  bool require_client_cert_ = false;  // the listener requires a verified one
  bool counted_ip_ = false;      // registered in sessions_per_ip
  uint64_t serial_ = 0;          // key in ServerCore::sessions
  bool relay_allowed_ = false;
  std::string session_id_;
  std::string out_;
  asio::steady_timer* idle_timer_ = nullptr;
  EnqueueCall* call_ = nullptr;  // the open Enqueue call, if any (owned by body_call_)
  HookCall hook_call_;           // the queue_outbound call in flight, if any
  bool aborted_ = false;         // Abort() was called

  // Dialogue state.
  std::string helo_;
  bool esmtp_ = false;
  bool greeted_ = false;
  int errors_ = 0;
  bool authenticated_ = false;
  std::string auth_user_;
  int transactions_ = 0;
  int queued_ = 0;

  // Transaction state (MAIL .. final reply).
  bool in_mail_ = false;
  std::string txn_id_;
  address::Mailbox mail_from_;
  smtp::MailParameters mail_params_;
  std::vector<Recipient> rcpts_;
  int rcpts_refused_ = 0;
  // The content being received (DATA, or BDAT chunks until LAST). No
  // body_call_ while the message is small enough to go whole.
  std::unique_ptr<EnqueueCall> body_call_;
  std::unique_ptr<smtp::MessageAssembler> assembler_;
  bool bdat_active_ = false;
  bool queue_failed_ = false;
  // With the queue_outbound hook, what a streamed message sent to the queue
  // so far: the hook needs all of it in one request.
  std::string hook_body_;
};

}  // namespace tern::ingest
