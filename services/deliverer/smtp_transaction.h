// File: smtp_transaction.h
//
// RunSmtpTransaction: one SMTP client session to one MX address, as a
// coroutine that reads like the RFC dialogue - connect, banner, EHLO (HELO
// when EHLO gets a 5xx), opportunistic STARTTLS then EHLO again, MAIL FROM
// and every RCPT TO (one write when the server offers PIPELINING), DATA only
// when at least one recipient was accepted, the dot-stuffed body, QUIT.
//
// The result says, per recipient, whether this session DECIDED it (delivered
// 2xx incl. 251/252, transient 4xx, permanent 5xx) or left it undecided so the
// caller tries the next address: connection failures, timeouts, a 421, a
// non-2xx banner or EHLO/HELO, a broken STARTTLS, or an unparseable reply
// before the message was handed over. After the final dot has been sent a
// lost connection can no longer be retried elsewhere safely: the recipients
// are transient with a reply text saying the outcome is unknown.
//
// Every wait has its own deadline: `connect` for the TCP connect, `command`
// for every reply and command write, `final_dot` for sending the body and
// waiting for the reply to the final dot.
//
// Executor: runs on the caller's executor (the worker's io_context); the
// request is taken by value. Errors in the returned Status are our own
// failures (a malformed request), never the remote's replies.
//
// Standards: RFC 5321 (§3.3 mail transaction, §4.1.1, §4.2 replies, §4.5.2
// transparency, §4.5.3.2 timeouts), RFC 2920 (pipelining), RFC 3207
// (STARTTLS), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asio/awaitable.hpp"
#include "asio/ssl/context.hpp"
#include "services/deliverer/outcome.h"

namespace tern::deliverer {

struct SmtpTimeouts {
  std::chrono::steady_clock::duration connect = std::chrono::seconds(30);
  std::chrono::steady_clock::duration command = std::chrono::seconds(30);
  std::chrono::steady_clock::duration final_dot = std::chrono::minutes(10);
};

struct TransactionRequest {
  std::string helo_name;          // config/me
  std::string mx_host;            // for SNI, logs and Remote-MTA
  std::string ip;
  uint16_t port = 25;
  std::string mail_from;          // "" = null sender <>
  std::vector<std::string> recipients;
  std::shared_ptr<const std::string> body;  // RFC 5322 text, not dot-stuffed
  bool smtputf8 = false;          // the message needs SMTPUTF8
  bool body_8bit = false;
  // Use STARTTLS when offered. Certificates are not verified (opportunistic
  // TLS); SNI is the MX name.
  bool starttls = true;
  std::shared_ptr<asio::ssl::context> tls_context;  // required when starttls
  SmtpTimeouts timeouts;
};

struct TransactionResult {
  // Parallel to request.recipients: the decided outcome, or nullopt.
  std::vector<std::optional<RecipientOutcome>> outcomes;
  // Why recipients are left undecided, e.g.
  // "connect to mx.example.test[127.0.0.2]:25: Connection refused".
  std::string failure;
  // The reply behind `failure`, if one (e.g. a 421); 0 otherwise.
  int failure_code = 0;
  // Transient enhanced status for `failure` (4.4.1 no answer, 4.4.2 bad
  // connection, 4.5.0 protocol, or the 421's own code).
  std::string failure_enhanced;
  bool connected = false;
  // The TLS handshake failed; the same address may be retried without TLS.
  bool tls_failed = false;
  std::string tls;  // e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty if plain
};

asio::awaitable<absl::StatusOr<TransactionResult>> RunSmtpTransaction(TransactionRequest request);

}  // namespace tern::deliverer
