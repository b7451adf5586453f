#include "services/deliverer/smtp_transaction.h"

#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/local/stream_protocol.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/net/connection.h"
#include "lib/smtp/auth_client.h"
#include "lib/smtp/dot_codec.h"
#include "lib/smtp/reply_parser.h"
#include "lib/smtp/xtext.h"

// GCC 12 at -O2 reports a false -Wmismatched-new-delete for Asio's awaitable
// frame allocator in large coroutines (GCC bug 109224), as in the tests.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace tern::deliverer {
namespace {

using asio::experimental::awaitable_operators::operator||;
using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Longest reply line read (RFC 5321 allows 512; servers send longer ones).
constexpr size_t kMaxReplyLine = 4096;

bool IsAscii(const std::string& s) {
  for (unsigned char c : s) {
    if (c >= 0x80) {
      return false;
    }
  }
  return true;
}

// "4.x.y" for a reply that failed the session: the failure is retried (on the
// next address, later the whole delivery), so its status must be transient
// even when the server's reply was a 5xx (e.g. a 554 banner).
std::string TransientEnhanced(const smtp::SmtpReply& reply) {
  smtp::EnhancedStatusCode code = reply.enhanced.value_or(smtp::DefaultEnhancedStatus(reply.code));
  code.klass = 4;
  if (code.subject == 0 && code.detail == 0 && reply.code == 421) {
    code.subject = 4;  // 4.4.0: routing/connection problem
  }
  return code.ToString();
}

std::string NotifyParam(uint32_t bits) {
  if (bits & kNotifyNever) {
    return "NEVER";
  }
  std::vector<const char*> words;
  if (bits & kNotifySuccess) {
    words.push_back("SUCCESS");
  }
  if (bits & kNotifyFailure) {
    words.push_back("FAILURE");
  }
  if (bits & kNotifyDelay) {
    words.push_back("DELAY");
  }
  return absl::StrJoin(words, ",");
}

// ORCPT=addr-type;xtext(address) from the decoded "addr-type;address".
std::string OrcptParam(const std::string& orcpt) {
  const size_t semi = orcpt.find(';');
  if (semi == std::string::npos || semi == 0) {
    return "";
  }
  return absl::StrCat(orcpt.substr(0, semi), ";", smtp::EncodeXtext(absl::string_view(orcpt).substr(semi + 1)));
}

// What the session is fit for once the dialogue stops.
enum class After {
  kClose,  // broken or closing: drop the connection
  kQuit,   // alive, but not for another transaction: QUIT
  kReuse,  // between transactions: pool it (RSET before next use) or QUIT
};

class Session {
 public:
  explicit Session(TransactionRequest request) : req_(std::move(request)) {
    res_.outcomes.resize(req_.recipients.size());
    relay_ = req_.unix_path.empty() ? absl::StrCat(req_.mx_host, "[", req_.ip, "]:", req_.port)
                                    : absl::StrCat("unix:", req_.unix_path);
    key_ = PoolKey(req_);
  }

  asio::awaitable<TransactionResult> Run() {
    co_await Converse();
    Stamp();
    if (session_) {
      ConnectionPool* pool = req_.pool;
      if (after_ == After::kReuse && pool != nullptr && pool->enabled()) {
        pool->Put(key_, std::move(session_));
      } else if (after_ == After::kClose) {
        co_await session_->conn->Close(std::chrono::seconds(2));
      } else {
        co_await QuitSession(*session_, req_.timeouts.quit);
      }
    }
    co_return std::move(res_);
  }

 private:
  net::Connection& conn() { return *session_->conn; }

  asio::awaitable<void> Converse() {
    if (req_.pool != nullptr) {
      // A pooled session, or the go-ahead to open a connection, or (with
      // destination_connections_max) a wait for either.
      const Clock::duration wait =
          req_.connection_wait > Clock::duration::zero() ? req_.connection_wait : req_.timeouts.connect;
      const std::string destination = Destination(req_);
      ConnectionPool::Acquired got = co_await req_.pool->Acquire(key_, destination, wait);
      if (got.timed_out) {
        // Not even tried: as a connect failure, the next address or a retry.
        Fail("4.4.5", absl::StrCat("no connection to ", relay_, " free within ",
                                   std::chrono::duration_cast<std::chrono::seconds>(wait).count(), " s (",
                                   req_.pool->open(destination), " open, the destination's limit)"));
        co_return;
      }
      session_ = std::move(got.session);
      slot_ = std::move(got.slot);
      if (session_ && session_->caps.pipelining) {
        // RFC 2920 lets RSET lead the MAIL/RCPT group: one round trip less
        // per reused connection. Its reply is read first; if the idle
        // connection turns out dead, the transaction restarts below.
        rset_pending_ = true;
      } else if (session_ && !co_await Reset()) {
        // The pooled connection died while idle: nothing was sent on it for
        // this message, so a fresh connection is safe (in its slot).
        session_->conn->Abort();
        slot_ = std::move(session_->slot);
        session_.reset();
      }
    }
    if (session_) {
      res_.reused = true;
      res_.connected = true;
      co_await TimedTransaction();
      if (!stale_) {
        co_return;
      }
      // The pooled connection failed the leading RSET (or the write): no
      // command of this message reached a live session, so start afresh.
      session_->conn->Abort();
      slot_ = std::move(session_->slot);
      session_.reset();
      stale_ = false;
      res_.reused = false;
      res_.connected = false;
      after_ = After::kClose;
    }
    const Clock::time_point start = Clock::now();
    const bool ready = co_await Open();
    res_.connect_time = Clock::now() - start;
    if (!ready) {
      co_return;
    }
    co_await TimedTransaction();
  }

  // The session's facts into the result, then the mail transaction, timed.
  asio::awaitable<void> TimedTransaction() {
    res_.tls = session_->tls;
    res_.tls_verified = session_->tls_verified;
    res_.dane = session_->dane;
    res_.auth_mechanism = session_->auth_mechanism;
    const Clock::time_point start = Clock::now();
    co_await Transaction();
    res_.transaction_time = Clock::now() - start;
  }

  // RSET on a pooled session; false (without recording a failure) if it is
  // unusable.
  asio::awaitable<bool> Reset() {
    absl::Status w = co_await conn().Write("RSET\r\n", req_.timeouts.rset);
    if (!w.ok()) {
      co_return false;
    }
    auto reply = co_await ReadReplyOrStatus(req_.timeouts.rset);
    co_return reply.ok() && reply->positive();
  }

  // Connect, banner, greeting, STARTTLS, AUTH. False when the session failed
  // (res_ says why, after_ says what to do with the connection).
  asio::awaitable<bool> Open() {
    if (!co_await Connect()) {
      co_return false;
    }
    res_.connected = true;
    if (req_.implicit_tls && !co_await ImplicitTls()) {
      co_return false;
    }

    auto banner = co_await ReadReply(req_.timeouts.banner, "the initial server greeting");
    if (!banner) {
      res_.unreachable = true;
      co_return false;
    }
    if (!banner->positive()) {
      res_.unreachable = true;
      // Postfix's smtp_skip_5xx_greeting: a refusing greeting is a reason to
      // try another MX, not to bounce (Haraka bounced on a 5xx banner).
      FailWithReply(*banner, "refused to talk to me");
      after_ = banner->code == 421 ? After::kClose : After::kQuit;
      co_return false;
    }
    if (!co_await Greet()) {
      co_return false;
    }
    if (!co_await StartTls()) {
      co_return false;
    }
    if (!co_await Authenticate()) {
      co_return false;
    }
    co_return true;
  }

  asio::awaitable<bool> Connect() {
    auto executor = co_await asio::this_coro::executor;
    asio::steady_timer timer(executor, req_.timeouts.connect);
    asio::ip::tcp::socket socket(executor);
    asio::error_code ec;
    if (!req_.unix_path.empty()) {
      // LMTP over a unix socket. net::Connection speaks to a tcp::socket, so
      // the connected descriptor is handed over to one: stream reads and
      // writes are the same calls on either kind of socket.
      asio::local::stream_protocol::socket local(executor);
      auto result = co_await (local.async_connect(asio::local::stream_protocol::endpoint(req_.unix_path), kNoThrow) ||
                              timer.async_wait(kNoThrow));
      if (result.index() == 1) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": timed out"));
        res_.unreachable = true;
        co_return false;
      }
      auto [cec] = std::get<0>(result);
      if (cec) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": ", cec.message()));
        res_.unreachable = true;
        co_return false;
      }
      socket.assign(asio::ip::tcp::v4(), local.release(), ec);
      if (ec) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": ", ec.message()));
        co_return false;
      }
    } else {
      const asio::ip::address address = asio::ip::make_address(req_.ip, ec);
      if (ec) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": bad address"));
        co_return false;
      }
      const asio::ip::tcp::endpoint endpoint(address, req_.port);
      if (!req_.bind_ip.empty()) {
        const asio::ip::address source = asio::ip::make_address(req_.bind_ip, ec);
        if (!ec && source.is_v4() != address.is_v4()) {
          Fail("4.4.1", absl::StrCat("connect to ", relay_, ": bind address ", req_.bind_ip,
                                     " is of the other address family"));
          co_return false;
        }
        if (!ec) {
          socket.open(endpoint.protocol(), ec);
        }
        if (!ec) {
          socket.bind(asio::ip::tcp::endpoint(source, 0), ec);
        }
        if (ec) {
          Fail("4.4.1", absl::StrCat("connect to ", relay_, ": cannot bind to ", req_.bind_ip, ": ", ec.message()));
          co_return false;
        }
      }
      auto result = co_await (socket.async_connect(endpoint, kNoThrow) || timer.async_wait(kNoThrow));
      if (result.index() == 1) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": timed out"));
        res_.unreachable = true;
        co_return false;
      }
      auto [cec] = std::get<0>(result);
      if (cec) {
        Fail("4.4.1", absl::StrCat("connect to ", relay_, ": ", cec.message()));
        res_.unreachable = true;
        co_return false;
      }
      socket.set_option(asio::ip::tcp::no_delay(true), ec);
    }
    session_ = std::make_unique<SmtpSession>();
    session_->slot = std::move(slot_);
    session_->conn = std::make_unique<net::Connection>(std::move(socket));
    session_->lmtp = req_.lmtp;
    session_->relay = relay_;
    co_return true;
  }

  // EHLO (LHLO for LMTP), or HELO when EHLO gets a 5xx (RFC 5321 §4.1.4).
  asio::awaitable<bool> Greet() {
    const char* verb = req_.lmtp ? "LHLO" : "EHLO";
    if (!co_await Write(absl::StrCat(verb, " ", req_.helo_name, "\r\n"), req_.timeouts.ehlo, verb)) {
      co_return false;
    }
    auto ehlo = co_await ReadReply(req_.timeouts.ehlo, verb);
    if (!ehlo) {
      co_return false;
    }
    if (ehlo->positive()) {
      session_->caps = smtp::ParseEhloCapabilities(*ehlo);
      co_return true;
    }
    if (!ehlo->permanent() || req_.lmtp) {
      FailWithReply(*ehlo, absl::StrCat("refused ", verb));
      after_ = ehlo->code == 421 ? After::kClose : After::kQuit;
      co_return false;
    }
    if (!co_await Write(absl::StrCat("HELO ", req_.helo_name, "\r\n"), req_.timeouts.ehlo, "HELO")) {
      co_return false;
    }
    auto helo = co_await ReadReply(req_.timeouts.ehlo, "HELO");
    if (!helo) {
      co_return false;
    }
    if (!helo->positive()) {
      FailWithReply(*helo, "refused HELO");
      after_ = helo->code == 421 ? After::kClose : After::kQuit;
      co_return false;
    }
    session_->caps = smtp::EhloCapabilities();
    co_return true;
  }

  // RFC 8314: the handshake first, always verified (the route's host name
  // and the trusted CAs); no plain-text fallback exists.
  asio::awaitable<bool> ImplicitTls() {
    const absl::Status tls =
        co_await conn().StartTlsClient(req_.tls_context, req_.mx_host, /*verify=*/true, req_.timeouts.starttls);
    if (!tls.ok()) {
      NoteTls(TlsAttempt::kHandshakeFailed, tls.message());
      const bool cert = absl::StrContains(tls.message(), "certificate verify failed");
      Fail("4.7.5", absl::StrCat("implicit TLS with host ", relay_,
                                 cert ? ": the certificate did not verify: " : " failed: ", tls.message()));
      co_return false;
    }
    session_->tls = conn().TlsDescription();
    session_->tls_verified = true;
    NoteTls(TlsAttempt::kEstablished, "");
    co_return true;
  }

  // For TLS reports: a new session's TLS outcome (see TlsAttempt).
  void NoteTls(TlsAttempt attempt, absl::string_view problem) {
    res_.tls_attempt = attempt;
    res_.tls_problem = std::string(problem);
    res_.tls_verify_error = attempt == TlsAttempt::kNotOffered ? 0 : conn().tls_verify_error();
  }

  asio::awaitable<bool> StartTls() {
    const bool required = req_.tls == TlsMode::kRequired;
    if (req_.tls == TlsMode::kNone || !req_.tls_context || req_.implicit_tls) {
      co_return true;  // no TLS, or already under implicit TLS
    }
    if (!session_->caps.starttls) {
      NoteTls(TlsAttempt::kNotOffered, "STARTTLS not offered");
      if (required) {
        Fail("4.7.4", absl::StrCat("TLS is required by ", req_.tls_required_by, ", but host ", relay_,
                                   " does not offer STARTTLS"));
        after_ = After::kQuit;
        co_return false;
      }
      co_return true;
    }
    if (!co_await Write("STARTTLS\r\n", req_.timeouts.starttls, "STARTTLS")) {
      co_return false;
    }
    auto reply = co_await ReadReply(req_.timeouts.starttls, "STARTTLS");
    if (!reply) {
      co_return false;
    }
    if (reply->code != 220) {
      NoteTls(TlsAttempt::kNotOffered, reply->ToString());
      if (reply->code == 421) {
        FailWithReply(*reply, "closed the session at STARTTLS");
        co_return false;
      }
      if (required) {
        FailWithReply(*reply, absl::StrCat("refused STARTTLS, but TLS is required by ", req_.tls_required_by));
        after_ = After::kQuit;
        co_return false;
      }
      co_return true;  // opportunistic: carry on in plain text
    }
    if (conn().buffered() > 0) {
      // RFC 3207 §5: bytes after the 220 are injected plaintext.
      Fail("4.5.0", absl::StrCat("host ", relay_, " sent data after 220 to STARTTLS (possible injection)"));
      co_return false;
    }
    const bool dane = required && !req_.dane.empty();
    const bool verify = (required && !req_.tls_unauthenticated) || req_.verify_tls;
    absl::Status tls;
    if (dane) {
      // The TLSA base domain is the MX host unless its records were found
      // at its CNAME target; DANE-TA accepts the MX host name either way.
      const std::string& base = req_.dane_base.empty() ? req_.mx_host : req_.dane_base;
      tls = co_await conn().StartTlsClientDane(req_.tls_context, base, req_.dane, req_.timeouts.starttls,
                                               req_.mx_host);
    } else {
      tls = co_await conn().StartTlsClient(req_.tls_context, req_.mx_host, verify, req_.timeouts.starttls);
    }
    if (!tls.ok()) {
      NoteTls(TlsAttempt::kHandshakeFailed, tls.message());
      const bool cert = verify && absl::StrContains(tls.message(), "certificate verify failed");
      if (required) {
        Fail("4.7.5", absl::StrCat("TLS is required by ", req_.tls_required_by, ", but ",
                                   cert ? "the certificate of host " : "the TLS handshake with host ", relay_,
                                   cert ? " did not verify: " : " failed: ", tls.message()));
      } else if (cert) {
        res_.tls_unverified = true;
        Fail("4.7.5", absl::StrCat("the certificate of host ", relay_,
                                   " did not verify (rejectUnauthorized=true): ", tls.message()));
      } else {
        res_.tls_failed = true;
        Fail("4.7.5", absl::StrCat("TLS with ", relay_, " failed: ", tls.message()));
      }
      co_return false;
    }
    session_->tls = conn().TlsDescription();
    NoteTls(TlsAttempt::kEstablished, "");
    // Only an enforced verification counts: net::Connection::peer_verified()
    // can report true for a chain it merely tolerated (OpenSSL calls the
    // verify callback again at depth 0 after an overridden error), so an
    // opportunistic session never claims a verified peer.
    session_->tls_verified = verify;
    // "unusable": DANE made TLS mandatory but no record could vouch for the
    // certificate; the attempt line must not read as if DANE had no say.
    session_->dane = dane ? conn().dane_match() : req_.tls_unauthenticated ? "unusable" : "";
    session_->caps = smtp::EhloCapabilities();
    co_return co_await Greet();
  }

  asio::awaitable<bool> Authenticate() {
    if (req_.auth_user.empty() || req_.auth_pass.empty()) {
      co_return true;
    }
    const auto& offered = session_->caps.auth_mechanisms;
    std::optional<smtp::AuthMechanism> mechanism = smtp::ChooseAuthMechanism(offered, req_.auth_type);
    if (!mechanism) {
      const std::string why =
          offered.empty() ? std::string("does not offer AUTH")
                          : absl::StrCat("offers no usable AUTH mechanism (", absl::StrJoin(offered, " "), ")");
      if (req_.force_auth) {
        Fail("4.7.0", absl::StrCat("host ", relay_, " ", why, ", but the route requires AUTH (force_auth)"));
        after_ = After::kQuit;
        co_return false;
      }
      res_.warning = absl::StrCat("host ", relay_, " ", why, "; sending without AUTH");
      co_return true;
    }
    const std::string name = smtp::AuthMechanismName(*mechanism);
    const std::string what = absl::StrCat("AUTH ", name);
    smtp::AuthClient auth(*mechanism, req_.auth_user, req_.auth_pass);
    std::string send = auth.Start();
    for (;;) {
      if (!co_await Write(send, req_.timeouts.auth, what)) {
        co_return false;
      }
      auto reply = co_await ReadReply(req_.timeouts.auth, what);
      if (!reply) {
        co_return false;
      }
      absl::StatusOr<smtp::AuthClient::Step> step = auth.OnReply(*reply);
      if (!step.ok()) {
        // RFC 4954 §4: "*" cancels the exchange; the session is not trusted
        // after a confused exchange, so it is closed either way.
        (void)co_await conn().Write("*\r\n", req_.timeouts.auth);
        Fail("4.7.0", absl::StrCat("host ", relay_, " broke the ", what, " exchange: ", step.status().message()));
        co_return false;
      }
      if (step->done) {
        if (step->succeeded) {
          session_->auth_mechanism = name;
          co_return true;
        }
        // Bad credentials are our configuration problem: transient (Postfix
        // smtp_sasl_auth_soft_bounce), never a bounce (Haraka bounced).
        FailWithReply(*reply, absl::StrCat("rejected ", what));
        after_ = reply->code == 421 ? After::kClose : After::kQuit;
        co_return false;
      }
      send = std::move(step->send);
    }
  }

  asio::awaitable<void> Transaction() {
    const smtp::EhloCapabilities& caps = session_->caps;
    bool needs_utf8 = !IsAscii(req_.mail_from);
    for (const auto& r : req_.recipients) {
      needs_utf8 = needs_utf8 || !IsAscii(r.address);
    }
    if (needs_utf8 && !caps.smtputf8) {
      DecideAll(LocalOutcome(OutcomeClass::kPermanent, "5.6.7",
                             absl::StrCat("SMTPUTF8 is required, but was not offered by host ", relay_), req_.mx_host,
                             req_.ip));
      after_ = After::kReuse;
      co_return;
    }
    if (req_.requiretls && !caps.requiretls) {
      // RFC 8689 §4.2.1: the next hop must take on the requirement; a
      // server that cannot is never given the message. The recipients stay
      // undecided: the deliverer tries the domain's other MX hosts and
      // bounces only when none offers it. The session is fine for others.
      res_.failure = absl::StrCat("REQUIRETLS is required by the sender, but was not offered by host ", relay_);
      res_.failure_enhanced = "5.7.30";
      res_.failure_code = 0;
      res_.requiretls_missing = true;
      after_ = After::kReuse;
      co_return;
    }
    // The DKIM-Signature field goes before the stored message: its bytes count too.
    const size_t body_size = (req_.body ? req_.body->size() : 0) + signature().size();
    if (caps.size && caps.size_limit > 0 && body_size > caps.size_limit) {
      DecideAll(LocalOutcome(OutcomeClass::kPermanent, "5.3.4",
                             absl::StrCat("message size ", body_size, " exceeds the limit of ", caps.size_limit,
                                          " bytes of host ", relay_),
                             req_.mx_host, req_.ip));
      after_ = After::kReuse;
      co_return;
    }

    std::string mail = absl::StrCat("MAIL FROM:<", req_.mail_from, ">");
    if (caps.size) {
      absl::StrAppend(&mail, " SIZE=", body_size);
    }
    if (req_.body_8bit && caps.eight_bit_mime) {
      absl::StrAppend(&mail, " BODY=8BITMIME");
    }
    if ((needs_utf8 || req_.smtputf8) && caps.smtputf8) {
      absl::StrAppend(&mail, " SMTPUTF8");
    }
    if (req_.requiretls) {
      absl::StrAppend(&mail, " REQUIRETLS");
    }
    if (caps.dsn) {
      if (req_.ret == DsnRetParam::kFull) {
        absl::StrAppend(&mail, " RET=FULL");
      } else if (req_.ret == DsnRetParam::kHdrs) {
        absl::StrAppend(&mail, " RET=HDRS");
      }
      if (!req_.envid.empty()) {
        absl::StrAppend(&mail, " ENVID=", smtp::EncodeXtext(req_.envid));
      }
    }
    mail += "\r\n";
    auto rcpt_command = [&](const RecipientRequest& r) {
      std::string cmd = absl::StrCat("RCPT TO:<", r.address, ">");
      if (caps.dsn) {
        if (r.notify != 0) {
          absl::StrAppend(&cmd, " NOTIFY=", NotifyParam(r.notify));
        }
        if (std::string orcpt = OrcptParam(r.orcpt); !orcpt.empty()) {
          absl::StrAppend(&cmd, " ORCPT=", orcpt);
        }
      }
      cmd += "\r\n";
      return cmd;
    };

    // RFC 3030 CHUNKING: the message goes as one counted BDAT LAST chunk,
    // exactly as stored (no dot-stuffing pass, no copy of a CRLF-clean
    // body, 8-bit and NUL-safe). Not over LMTP, where what follows a BDAT
    // LAST is less settled among servers than the per-recipient replies to
    // a final dot (RFC 2033 §4.2).
    const bool bdat = caps.chunking && req_.chunking && !session_->lmtp;
    // accepted[i]: RCPT i got a 2xx and waits for the DATA outcome.
    std::vector<bool> accepted(req_.recipients.size(), false);
    data_pipelined_ = false;  // a retry on a fresh session may lack PIPELINING
    if (caps.pipelining) {
      // RFC 2920: MAIL, every RCPT and DATA in one write (DATA may end a
      // group, §3.1), then the replies in order. DATA itself delivers
      // nothing: the data gate below still comes before the body's final
      // dot, the point after which the server may have taken the message.
      // One round trip and one write fewer per message than sending DATA
      // after the RCPT replies. BDAT is not pipelined with them: it carries
      // the message itself, which must wait for the data gate.
      std::string batch;
      if (rset_pending_) {
        batch = "RSET\r\n";
      }
      batch += mail;
      for (const auto& r : req_.recipients) {
        batch += rcpt_command(r);
      }
      if (!bdat) {
        batch += "DATA\r\n";
        data_pipelined_ = true;
      }
      if (rset_pending_) {
        rset_pending_ = false;
        absl::Status written = co_await conn().Write(batch, req_.timeouts.mail);
        if (!written.ok()) {
          stale_ = true;
          co_return;
        }
        auto rset = co_await ReadReplyOrStatus(req_.timeouts.rset);
        if (!rset.ok() || !rset->positive()) {
          stale_ = true;
          co_return;
        }
      } else if (!co_await Write(batch, req_.timeouts.mail, "MAIL FROM")) {
        co_return;
      }
      if (!co_await HandleMailReply()) {
        co_return;
      }
      for (size_t i = 0; i < req_.recipients.size(); ++i) {
        if (!co_await HandleRcptReply(i, &accepted)) {
          co_return;
        }
      }
    } else {
      if (!co_await Write(mail, req_.timeouts.mail, "MAIL FROM")) {
        co_return;
      }
      if (!co_await HandleMailReply()) {
        co_return;
      }
      for (size_t i = 0; i < req_.recipients.size(); ++i) {
        if (!co_await Write(rcpt_command(req_.recipients[i]), req_.timeouts.rcpt, "RCPT TO")) {
          co_return;
        }
        if (!co_await HandleRcptReply(i, &accepted)) {
          co_return;
        }
      }
    }

    size_t accepted_count = 0;
    for (bool a : accepted) {
      accepted_count += a ? 1 : 0;
    }
    if (accepted_count == 0) {
      // A pipelined DATA still gets its reply (RFC 2920: a refusal, as no
      // recipient was accepted).
      if (data_pipelined_ && !co_await DrainPipelinedData()) {
        co_return;
      }
      after_ = After::kReuse;  // RSET before the next use clears MAIL
      co_return;
    }

    if (bdat) {
      if (!co_await SendWithBdat()) {
        co_return;
      }
    } else if (!co_await SendWithData(accepted)) {
      co_return;
    }
    res_.data_sent = true;

    const Clock::time_point deadline = Clock::now() + req_.timeouts.final_dot;
    auto left = [&] { return std::max<Clock::duration>(deadline - Clock::now(), std::chrono::milliseconds(1)); };
    if (!session_->lmtp) {
      auto final_reply = co_await ReadReplyOrStatus(left());
      if (!final_reply.ok()) {
        DecideAccepted(accepted, LostAfterDot(final_reply.status()));
        co_return;
      }
      if (res_.chunked && IsUnknownCommandReply(*final_reply)) {
        // The server offered CHUNKING but does not take BDAT (a middlebox
        // that rewrites the dialogue, say). That is no verdict on the
        // message: the recipients stay undecided for a DATA retry
        // (TransactionResult::chunking_refused), and the session is closed,
        // since the server may have read the message text as commands.
        res_.chunking_refused = true;
        Fail("4.5.0", absl::StrCat("host ", relay_, " offered CHUNKING but refused BDAT: ", final_reply->ToString()));
        co_return;
      }
      DecideAccepted(accepted, OutcomeFromReply(*final_reply, req_.mx_host, req_.ip));
      ++session_->messages;
      after_ = final_reply->code == 421 ? After::kClose : After::kReuse;
      co_return;
    }
    // LMTP (RFC 2033 §4.2): one reply per accepted recipient, in RCPT order,
    // each applying to its own recipient (Haraka charged failures to the
    // first recipient still listed).
    for (size_t i = 0; i < accepted.size(); ++i) {
      if (!accepted[i]) {
        continue;
      }
      auto reply = co_await ReadReplyOrStatus(left());
      if (!reply.ok()) {
        const RecipientOutcome lost = LostAfterDot(reply.status());
        for (size_t j = i; j < accepted.size(); ++j) {
          if (accepted[j]) {
            res_.outcomes[j] = lost;
          }
        }
        co_return;
      }
      res_.outcomes[i] = OutcomeFromReply(*reply, req_.mx_host, req_.ip);
    }
    ++session_->messages;
    after_ = After::kReuse;
  }

  // DATA (its reply read here when it was pipelined), the data gate, then
  // the dot-stuffed message and the final dot. False when the transaction
  // ends here (outcomes or the failure recorded).
  asio::awaitable<bool> SendWithData(const std::vector<bool>& accepted) {
    if (!data_pipelined_) {
      // Nothing sent for the message yet: RSET clears MAIL for the next use.
      if (!co_await PassDataGate(After::kReuse)) {
        co_return false;
      }
      if (!co_await Write("DATA\r\n", req_.timeouts.data, "DATA")) {
        co_return false;
      }
    }
    auto data = co_await ReadReply(req_.timeouts.data, "DATA");
    if (!data) {
      co_return false;
    }
    // After a 354 the server waits for the message; the only way to take
    // DATA back is to hang up (nothing is delivered without the final dot).
    if (data->code == 354 && data_pipelined_ && !co_await PassDataGate(After::kClose)) {
      co_return false;
    }
    if (data->code != 354) {
      if (data->code == 421 || (data->klass() != 4 && data->klass() != 5)) {
        FailWithReply(*data, "did not accept DATA");
      } else {
        DecideAccepted(accepted, OutcomeFromReply(*data, req_.mx_host, req_.ip));
        after_ = After::kReuse;
      }
      co_return false;
    }

    // The body write is still before the final dot is complete: a failure
    // here leaves nothing delivered, so the recipients stay undecided.
    std::string encoded;
    // The DKIM-Signature field first: it starts with a letter and its
    // continuation lines with a space, so it needs no dot-stuffing.
    absl::StrAppend(&encoded, signature());
    smtp::DotCodec::AppendEncoded(req_.body ? absl::string_view(*req_.body) : absl::string_view(), &encoded);
    co_return co_await Write(encoded, req_.timeouts.final_dot, "message body");
  }

  // The data gate, then "BDAT <n> LAST" and the message in one write. The
  // reply to it is the message's outcome, as the reply to a final dot is.
  // A failed write leaves nothing delivered (the server needs all n bytes
  // before it may take the message), so the recipients stay undecided.
  asio::awaitable<bool> SendWithBdat() {
    if (!co_await PassDataGate(After::kReuse)) {
      co_return false;
    }
    const absl::string_view body = req_.body ? absl::string_view(*req_.body) : absl::string_view();
    // A stored message has CRLF line ends (ingest and the API make sure);
    // BDAT sends bytes as they are, so anything else is made CRLF here as
    // DotCodec does for DATA, instead of handing the receiver bare LFs.
    std::string canonical;
    absl::string_view payload = body;
    if (!smtp::DotCodec::IsCrlfCanonical(body)) {
      smtp::DotCodec::AppendCrlfCanonical(body, &canonical);
      payload = canonical;
    }
    // The DKIM-Signature field rides with the command, so the stored
    // message is still written from where it lies.
    const std::string command =
        absl::StrCat("BDAT ", signature().size() + payload.size(), " LAST\r\n", signature());
    absl::Status s = co_await conn().Write(command, payload, req_.timeouts.final_dot);
    if (!s.ok()) {
      WriteFailed(s, "message body");
      co_return false;
    }
    res_.chunked = true;
    co_return true;
  }

  // The DKIM-Signature field written before the message; "" for none.
  absl::string_view signature() const {
    return req_.dkim_signature ? absl::string_view(*req_.dkim_signature) : absl::string_view();
  }

  // 500, 501, 502, 503 and 504 say the command itself was not understood
  // or not allowed (RFC 5321 §4.2.2), not that the message was refused.
  static bool IsUnknownCommandReply(const smtp::SmtpReply& reply) { return reply.code >= 500 && reply.code <= 504; }

  RecipientOutcome LostAfterDot(const absl::Status& status) {
    // The dot went out: the server may have taken the message. Retrying
    // elsewhere now could deliver twice; report transient and ambiguous.
    RecipientOutcome o = LocalOutcome(
        OutcomeClass::kTransient, "4.4.2",
        absl::StrCat("lost connection with ", relay_,
                     " after the final dot was sent (delivery status unknown, the message may have been delivered): ",
                     status.message()),
        req_.mx_host, req_.ip);
    o.ambiguous = true;
    return o;
  }

  // Applies the MAIL FROM reply: 2xx goes on; 4xx/5xx decide every recipient
  // (a refused sender is refused for all); 421 or nonsense fails the session.
  asio::awaitable<bool> HandleMailReply() {
    auto reply = co_await ReadReply(req_.timeouts.mail, "MAIL FROM");
    if (!reply) {
      co_return false;
    }
    if (reply->positive()) {
      co_return true;
    }
    if (reply->code == 421 || (reply->klass() != 4 && reply->klass() != 5)) {
      FailWithReply(*reply, "did not accept MAIL FROM");
      co_return false;
    }
    DecideAll(OutcomeFromReply(*reply, req_.mx_host, req_.ip));
    if (session_->caps.pipelining) {
      // The pipelined RCPTs and DATA still get (negative) replies: drain
      // them so the session stays in step and can be reused.
      for (size_t i = 0; i < req_.recipients.size(); ++i) {
        if (!co_await ReadReply(req_.timeouts.rcpt, "RCPT TO")) {
          co_return false;
        }
      }
      if (data_pipelined_ && !co_await DrainPipelinedData()) {
        co_return false;
      }
    }
    after_ = After::kReuse;
    co_return false;
  }

  // The data gate: awaits req_.before_data (the caller's durable record that
  // the final dot may go out). Refused: the transaction fails with 4.3.0 and
  // the session is left `on_refusal`; false.
  asio::awaitable<bool> PassDataGate(After on_refusal) {
    if (!req_.before_data) {
      co_return true;
    }
    absl::Status recorded = co_await req_.before_data();
    if (recorded.ok()) {
      co_return true;
    }
    Fail("4.3.0", std::string(recorded.message()));
    after_ = on_refusal;
    co_return false;
  }

  // Reads the reply to a pipelined DATA when no recipient was accepted. A
  // conforming server refuses it; one that answers 354 anyway now waits for
  // a message we will not send, so the session is closed rather than fed a
  // lone dot (nothing can be delivered either way). False when the session
  // cannot go on.
  asio::awaitable<bool> DrainPipelinedData() {
    auto data = co_await ReadReply(req_.timeouts.data, "DATA");
    if (!data) {
      co_return false;
    }
    if (data->code == 354 || data->code == 421) {
      after_ = After::kClose;
      co_return false;
    }
    co_return true;
  }

  // Applies the reply to RCPT i. 2xx (250, and 251/252 which Haraka lost)
  // marks it accepted; 4xx/5xx decide it; 421 fails the session for it and
  // every later recipient.
  asio::awaitable<bool> HandleRcptReply(size_t i, std::vector<bool>* accepted) {
    auto reply = co_await ReadReply(req_.timeouts.rcpt, "RCPT TO");
    if (!reply) {
      co_return false;
    }
    if (reply->positive()) {
      (*accepted)[i] = true;
      co_return true;
    }
    if (reply->code == 421) {
      FailWithReply(*reply, "closed the session at RCPT TO");
      co_return false;
    }
    RecipientOutcome outcome = OutcomeFromReply(*reply, req_.mx_host, req_.ip);
    if (reply->klass() != 4 && reply->klass() != 5) {
      outcome.outcome = OutcomeClass::kTransient;
    }
    res_.outcomes[i] = std::move(outcome);
    co_return true;
  }

  asio::awaitable<bool> Write(absl::string_view data, Clock::duration timeout, absl::string_view what) {
    absl::Status s = co_await conn().Write(data, timeout);
    if (!s.ok()) {
      WriteFailed(s, what);
      co_return false;
    }
    co_return true;
  }

  void WriteFailed(const absl::Status& s, absl::string_view what) {
    Fail("4.4.2", absl::StrCat(s.code() == absl::StatusCode::kDeadlineExceeded ? "timeout" : "lost connection",
                               " with ", relay_, " while sending ", what, ": ", s.message()));
    after_ = After::kClose;
  }

  // One complete reply, within `timeout` overall.
  asio::awaitable<absl::StatusOr<smtp::SmtpReply>> ReadReplyOrStatus(Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    parser_.Reset();
    for (;;) {
      const Clock::duration left = std::max<Clock::duration>(deadline - Clock::now(), std::chrono::milliseconds(1));
      auto line = co_await conn().ReadLine(kMaxReplyLine, left);
      if (!line.ok()) {
        co_return line.status();
      }
      if (line->partial) {
        co_return absl::InvalidArgumentError(absl::StrCat("reply line longer than ", kMaxReplyLine, " bytes"));
      }
      absl::StatusOr<bool> done = parser_.Feed(line->text);
      if (!done.ok()) {
        co_return done.status();
      }
      if (*done) {
        co_return parser_.TakeReply();
      }
    }
  }

  // A reply, or nullopt after recording the session failure.
  asio::awaitable<std::optional<smtp::SmtpReply>> ReadReply(Clock::duration timeout, absl::string_view after) {
    auto reply = co_await ReadReplyOrStatus(timeout);
    if (reply.ok()) {
      co_return std::move(*reply);
    }
    const absl::Status& s = reply.status();
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      Fail("4.5.0", absl::StrCat("protocol error from ", relay_, " after ", after, ": ", s.message()));
    } else if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      Fail("4.4.2", absl::StrCat("timeout waiting for ", relay_, " after ", after));
    } else {
      Fail("4.4.2", absl::StrCat("lost connection with ", relay_, " after ", after, ": ", s.message()));
    }
    after_ = After::kClose;
    co_return std::nullopt;
  }

  void Fail(std::string enhanced, std::string text) {
    res_.failure = std::move(text);
    res_.failure_enhanced = std::move(enhanced);
    res_.failure_code = 0;
    after_ = After::kClose;
  }

  void FailWithReply(const smtp::SmtpReply& reply, absl::string_view what) {
    res_.failure = absl::StrCat("host ", relay_, " ", what, ": ", reply.ToString());
    res_.failure_enhanced = TransientEnhanced(reply);
    res_.failure_code = reply.transient() ? reply.code : 0;
    after_ = After::kClose;
  }

  // Decides every recipient not decided yet.
  void DecideAll(const RecipientOutcome& outcome) {
    for (auto& o : res_.outcomes) {
      if (!o) {
        o = outcome;
      }
    }
  }

  void DecideAccepted(const std::vector<bool>& accepted, const RecipientOutcome& outcome) {
    for (size_t i = 0; i < accepted.size(); ++i) {
      if (accepted[i]) {
        res_.outcomes[i] = outcome;
      }
    }
  }

  // The delivery facts every decided outcome carries.
  void Stamp() {
    for (auto& o : res_.outcomes) {
      if (!o) {
        continue;
      }
      o->remote_port = req_.unix_path.empty() ? req_.port : 0;
      o->mode = req_.lmtp ? "LMTP" : "SMTP";
      o->tls = res_.tls;
      o->tls_verified = res_.tls_verified;
      o->auth_mechanism = res_.auth_mechanism;
    }
  }

  TransactionRequest req_;
  TransactionResult res_;
  std::string relay_;
  std::string key_;
  std::unique_ptr<SmtpSession> session_;
  After after_ = After::kClose;
  // DATA went out in the same write as MAIL and RCPT (server offers PIPELINING).
  bool data_pipelined_ = false;
  // A pooled session whose RSET goes out with the MAIL/RCPT group.
  bool rset_pending_ = false;
  // That RSET failed: the session was dead, nothing of this message was
  // delivered on it, and Converse() starts again on a fresh connection.
  bool stale_ = false;
  // The destination's connection slot for a new connection (from Acquire),
  // until Connect() hands it to the session.
  std::unique_ptr<ConnectionSlot> slot_;
  smtp::ReplyParser parser_;
};

}  // namespace

std::string Destination(const TransactionRequest& r) {
  // A receiver limits connections per client address, so the source
  // address is part of it.
  return r.unix_path.empty() ? absl::StrCat(r.ip, "|", r.port, "|", r.bind_ip) : absl::StrCat("unix|", r.unix_path);
}

std::string PoolKey(const TransactionRequest& r) {
  // The password is not part of the key: one user has one password at a time.
  return absl::StrCat(r.lmtp ? "lmtp" : "smtp", "|", r.unix_path.empty() ? r.ip : r.unix_path, "|", r.port, "|",
                      r.bind_ip, "|", r.helo_name, "|", TlsModeName(r.tls), r.verify_tls ? "+verify" : "",
                      r.dane.empty() ? "" : "+dane", r.tls_unauthenticated ? "+unauthenticated" : "",
                      r.implicit_tls ? "+implicit" : "", "|", r.tls_client_cert, "|",
                      r.mx_host, "|", r.auth_user, "|", r.auth_type, r.force_auth ? "+force" : "");
}

asio::awaitable<absl::StatusOr<TransactionResult>> RunSmtpTransaction(TransactionRequest request) {
  if (request.recipients.empty()) {
    co_return absl::InvalidArgumentError("SMTP transaction without recipients");
  }
  if (request.tls != TlsMode::kNone && !request.tls_context) {
    if (request.tls == TlsMode::kRequired) {
      co_return absl::InvalidArgumentError("TLS required but no TLS context given");
    }
    request.tls = TlsMode::kNone;
  }
  if (request.implicit_tls && (request.tls != TlsMode::kRequired || !request.unix_path.empty())) {
    co_return absl::InvalidArgumentError("implicit TLS needs required TLS over TCP");
  }
  Session session(std::move(request));
  co_return co_await session.Run();
}

}  // namespace tern::deliverer
