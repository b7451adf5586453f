// File: smtp_transaction.h
//
// RunSmtpTransaction: one mail transaction to one MX address (or LMTP
// server), as a coroutine that reads like the RFC dialogue. A new session:
// connect (from `bind_ip` if set; TCP or a unix socket), banner, EHLO (HELO
// when EHLO gets a 5xx; LHLO for LMTP), STARTTLS per `tls` then EHLO again,
// AUTH when credentials are given. A pooled session (same PoolKey) skips all
// that after a successful RSET; if the RSET fails the pooled connection is
// dropped and a fresh one opened, transparently. Then MAIL FROM and every
// RCPT TO, with SIZE=, BODY=8BITMIME, SMTPUTF8 and the RFC 3461 parameters
// NOTIFY/ORCPT/RET/ENVID when the server offers DSN. With PIPELINING, MAIL,
// the RCPTs and DATA go in one write (RFC 2920 §3.1); the server refuses that
// DATA when no recipient was accepted (a server answering 354 anyway is hung
// up on). Without it, DATA is sent only when a recipient was accepted and
// `before_data` agreed. Then the dot-stuffed body, never before
// `before_data` agreed. When an SMTP server offers CHUNKING (and `chunking`
// is on), no DATA: once a recipient is accepted and `before_data` agreed,
// "BDAT <n> LAST" and the message in one write (RFC 3030). A DKIM-Signature
// field (dkim_signature) goes before the message on both paths. SMTP
// gives one reply to the final dot (or BDAT) for every accepted recipient; LMTP gives
// one per accepted recipient, in RCPT order, each applied to its own
// recipient. Afterwards the session goes back to the pool or is QUIT.
//
// The result says, per recipient, whether this session DECIDED it (delivered
// 2xx incl. 251/252, transient 4xx, permanent 5xx) or left it undecided so the
// caller tries the next address: connection failures, timeouts, a 421, a
// non-2xx banner or EHLO/HELO, STARTTLS/TLS problems, a failed or (with
// force_auth) impossible AUTH, or an unparseable reply before the message was
// handed over. After the final dot has been sent a lost connection can no
// longer be retried elsewhere safely: those recipients are transient and
// marked `ambiguous` (the queue decides what that means).
//
// TLS: kNone never sends STARTTLS. kOpportunistic uses it when offered; a
// failed handshake sets `tls_failed` (the caller retries in plain text and
// remembers the host); with `verify_tls` (rejectUnauthorized) a certificate
// that does not verify fails the address (`tls_unverified`) instead. kRequired
// needs STARTTLS and a verified certificate, else the address fails with
// 4.7.4 (not offered) or 4.7.5 (handshake or certificate). With `dane`
// records (RFC 7672) kRequired means a certificate that matches one of
// them, checked by DANE instead of the Web PKI; `tls_unauthenticated`
// (DANE TLSA records that are all unusable) means TLS without a check.
//
// Every wait has its own deadline (SmtpTimeouts); a write gets the timeout of
// the step it belongs to.
//
// Executor: runs on the caller's executor (the worker's io_context); the
// request is taken by value; `pool` (optional) must outlive the call. Errors
// in the returned Status are our own failures (a malformed request), never the
// remote's replies. Credentials never appear in results or logs.
//
// Standards: RFC 5321 (§3.3 mail transaction, §4.1.1, §4.2 replies, §4.5.2
// transparency, §4.5.3.2 timeouts), RFC 2033 (LMTP), RFC 2920 (pipelining),
// RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
// RFC 6531 (SMTPUTF8), RFC 3461 (DSN parameters, xtext), RFC 3030 (CHUNKING:
// the message as one BDAT LAST chunk).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asio/awaitable.hpp"
#include "lib/net/connection.h"
#include "services/deliverer/connection_pool.h"
#include "services/deliverer/outcome.h"
#include "services/deliverer/smtp_timeouts.h"
#include "services/deliverer/tls_policy.h"

namespace asio::ssl {
class context;
}

namespace tern::deliverer {

// RFC 3461 bits, the same values as tern.v1.NotifyFlag.
inline constexpr uint32_t kNotifySuccess = 1;
inline constexpr uint32_t kNotifyFailure = 2;
inline constexpr uint32_t kNotifyDelay = 4;
inline constexpr uint32_t kNotifyNever = 8;

enum class DsnRetParam { kUnspecified, kFull, kHdrs };

struct RecipientRequest {
  RecipientRequest() = default;
  RecipientRequest(std::string a) : address(std::move(a)) {}  // NOLINT: implicit on purpose
  RecipientRequest(const char* a) : address(a) {}             // NOLINT
  std::string address;
  uint32_t notify = 0;   // kNotify* bits; 0 = not given
  std::string orcpt;     // "addr-type;address" as received (decoded), or ""
};

struct TransactionRequest {
  std::string helo_name;          // config/me or the route's bind_helo
  std::string mx_host;            // for SNI, logs and Remote-MTA
  std::string ip;                 // empty for a unix socket
  uint16_t port = 25;
  std::string unix_path;          // LMTP over this unix socket when set
  bool lmtp = false;
  std::string bind_ip;            // source address; "" = any
  std::string mail_from;          // "" = null sender <>
  std::vector<RecipientRequest> recipients;
  std::shared_ptr<const std::string> body;  // RFC 5322 text, not dot-stuffed
  // A header field written before `body` on the wire (DATA and BDAT alike)
  // and counted in SIZE=: the message's "DKIM-Signature: ...\r\n" (dkim.h),
  // shared by every transaction of the message; null or empty = none.
  std::shared_ptr<const std::string> dkim_signature;
  bool smtputf8 = false;          // the message needs SMTPUTF8
  bool body_8bit = false;
  DsnRetParam ret = DsnRetParam::kUnspecified;
  std::string envid;              // decoded; "" = none
  TlsMode tls = TlsMode::kOpportunistic;
  bool verify_tls = false;        // rejectUnauthorized (always on for kRequired)
  // Who requires TLS, for the failure text of kRequired: "TLS is required
  // by <this>, but ...".
  std::string tls_required_by = "configuration";
  // DANE-TA/DANE-EE records of this MX host (validated by DNSSEC); with
  // kRequired, the certificate must match one of them.
  std::vector<net::DaneRecord> dane;
  // The TLSA base domain when it is not `mx_host`: the CNAME-expanded MX
  // name whose records `dane` holds (RFC 7672 §2.2.2). It is the SNI, and
  // DANE-TA accepts a certificate for it or for `mx_host`.
  std::string dane_base;
  // kRequired without authentication (RFC 7672 §2.2: the host's TLSA
  // records are all unusable, so TLS is mandatory but nothing can vouch for
  // the certificate). `verify_tls` still applies if the operator asked for it.
  bool tls_unauthenticated = false;
  // RFC 8689 REQUIRETLS: the session must offer REQUIRETLS, else nothing
  // is sent (TransactionResult::requiretls_missing); MAIL FROM carries it. TLS itself
  // is the caller's to require (tls, verify_tls, dane).
  bool requiretls = false;
  // TLS from the first byte (RFC 8314; a route's tls=implicit): the
  // handshake comes before the banner, and STARTTLS is never sent. Needs
  // tls == kRequired and a context.
  bool implicit_tls = false;
  std::shared_ptr<asio::ssl::context> tls_context;  // required unless tls == kNone
  // The client certificate file `tls_context` presents when a route sets
  // its own (outbound_routes.ini tls_cert); "" = tls.ini's, if any. Part of
  // the pool key: a session that proved one identity is not reused for a
  // route that should prove another.
  std::string tls_client_cert;
  std::string auth_user;          // AUTH when both are set
  std::string auth_pass;
  std::string auth_type;          // preferred mechanism, "" = strongest offered
  bool force_auth = false;
  // Send the message with BDAT (RFC 3030) when the server offers CHUNKING
  // (SMTP only; LMTP keeps DATA). tern.ini [deliverer] chunking.
  bool chunking = true;
  SmtpTimeouts timeouts;
  ConnectionPool* pool = nullptr; // reuse sessions when set and enabled
  // Longest wait for a connection slot of the destination (the pool's
  // max_per_destination); zero = timeouts.connect.
  std::chrono::steady_clock::duration connection_wait{};
  // Awaited once a recipient is accepted, before the message is sent:
  // right before DATA or BDAT, or, when DATA was pipelined, after its 354. The
  // caller records durably that the final dot may be sent (Queue.Progress).
  // A non-OK status stops the transaction without the message (recipients
  // undecided, the status message as `failure`; the session is reused when
  // DATA was not sent yet and hung up on after a 354), so no message
  // reaches the remote that a crash could make an unrecorded duplicate.
  // Capture only pointers in it (GCC 12 coroutine bug).
  std::function<asio::awaitable<absl::Status>()> before_data;
};

// How a new session's TLS negotiation went, for TLS reports (RFC 8460).
enum class TlsAttempt {
  kNone,             // not tried (TLS off, a reused session, or it never got that far)
  kEstablished,      // TLS is up
  kNotOffered,       // no STARTTLS in the EHLO reply, or STARTTLS refused
  kHandshakeFailed,  // the handshake or the certificate check failed
};

struct TransactionResult {
  // Parallel to request.recipients: the decided outcome, or nullopt.
  std::vector<std::optional<RecipientOutcome>> outcomes;
  // Why recipients are left undecided, e.g.
  // "connect to mx.example.com[192.0.2.1]:25: Connection refused".
  std::string failure;
  // The reply behind `failure`, if one (e.g. a 421); 0 otherwise.
  int failure_code = 0;
  // Transient enhanced status for `failure` (4.4.1 no answer, 4.4.2 bad
  // connection, 4.5.0 protocol, 4.7.x TLS/AUTH, or the 421's own code).
  std::string failure_enhanced;
  bool connected = false;
  // The address gave no session: the TCP connect failed (refused, timed
  // out, unreachable) or the greeting did not come or was not 2xx (a 421
  // "too busy" above all). The deliverer counts these toward suspending the
  // address (unreachable_after); later failures (EHLO, TLS, AUTH, MAIL,
  // RCPT) do not count, nor does waiting for our own connection limit.
  bool unreachable = false;
  // Opportunistic TLS handshake failed: the same address may be retried
  // without TLS, and the host remembered as broken_tls.
  bool tls_failed = false;
  // A certificate that had to verify did not.
  bool tls_unverified = false;
  // The request asked for REQUIRETLS and the host did not offer it: every
  // recipient left undecided, `failure` says so (5.7.30), nothing sent.
  bool requiretls_missing = false;
  std::string tls;                // e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty if plain
  bool tls_verified = false;
  // The matched TLSA record ("3 1 1 at depth 0"); "unusable" when DANE made
  // TLS mandatory but no record was usable; "" = no DANE.
  std::string dane;
  // TLS reports: what became of TLS on this session (only a new one says
  // anything), OpenSSL's X509_V_ERR_* for a certificate that failed its
  // check, also one the session went on with because verification was not
  // required (0 otherwise), and the server's or the verifier's words.
  TlsAttempt tls_attempt = TlsAttempt::kNone;
  long tls_verify_error = 0;
  std::string tls_problem;
  std::string auth_mechanism;     // "" = no AUTH
  std::string warning;            // e.g. AUTH not offered, sent without it
  bool reused = false;            // a pooled session carried this transaction
  bool data_sent = false;         // the body and final dot (or BDAT LAST) were written
  bool chunked = false;           // the body went with BDAT (RFC 3030), not DATA
  // The server offered CHUNKING, then answered BDAT with 500-504: the
  // recipients are undecided, the session closed; DATA may be tried.
  bool chunking_refused = false;
  // Time to a ready session (connect..AUTH; 0 when reused) and for the
  // transaction itself (MAIL..final reply).
  std::chrono::steady_clock::duration connect_time{};
  std::chrono::steady_clock::duration transaction_time{};
};

// The pool key: everything that makes two sessions interchangeable.
std::string PoolKey(const TransactionRequest& request);
// What destination_connections_max counts connections of: the remote
// address and port (or unix socket) and the source address.
std::string Destination(const TransactionRequest& request);

asio::awaitable<absl::StatusOr<TransactionResult>> RunSmtpTransaction(TransactionRequest request);

}  // namespace tern::deliverer
