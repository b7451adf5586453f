#include "services/deliverer/smtp_transaction.h"

#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/net/connection.h"
#include "lib/smtp/dot_codec.h"
#include "lib/smtp/reply_parser.h"

namespace tern::deliverer {
namespace {

using asio::experimental::awaitable_operators::operator||;
using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Longest reply line read (RFC 5321 allows 512; servers send longer ones).
constexpr size_t kMaxReplyLine = 4096;
// QUIT is a courtesy: never wait long for its answer.
constexpr auto kQuitTimeout = std::chrono::seconds(5);

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

class Session {
 public:
  explicit Session(TransactionRequest request) : req_(std::move(request)) {
    res_.outcomes.resize(req_.recipients.size());
    relay_ = absl::StrCat(req_.mx_host, "[", req_.ip, "]:", req_.port);
  }

  asio::awaitable<TransactionResult> Run() {
    co_await Converse();
    if (conn_) {
      co_await conn_->Close(std::chrono::seconds(2));
    }
    co_return std::move(res_);
  }

 private:
  // The whole dialogue; on return, res_ holds what was decided.
  asio::awaitable<void> Converse() {
    if (!co_await Connect()) {
      co_return;
    }
    res_.connected = true;

    auto banner = co_await ReadReply(req_.timeouts.command, "the initial server greeting");
    if (!banner) {
      co_return;
    }
    if (!banner->positive()) {
      // Postfix's smtp_skip_5xx_greeting: a refusing greeting is a reason to
      // try another MX, not to bounce (Haraka bounced on a 5xx banner).
      FailWithReply(*banner, "refused to talk to me");
      co_await Quit();
      co_return;
    }

    smtp::EhloCapabilities caps;
    if (!co_await Greet(&caps)) {
      co_return;
    }
    if (caps.starttls && req_.starttls && req_.tls_context) {
      if (!co_await Write("STARTTLS\r\n", req_.timeouts.command, "STARTTLS")) {
        co_return;
      }
      auto reply = co_await ReadReply(req_.timeouts.command, "STARTTLS");
      if (!reply) {
        co_return;
      }
      if (reply->code == 220) {
        if (conn_->buffered() > 0) {
          // RFC 3207 §5: bytes after the 220 are injected plaintext.
          Fail("4.5.0", absl::StrCat("host ", relay_, " sent data after 220 to STARTTLS (possible injection)"));
          co_return;
        }
        absl::Status tls = co_await conn_->StartTlsClient(req_.tls_context, req_.mx_host, /*verify_host=*/false,
                                                           req_.timeouts.command);
        if (!tls.ok()) {
          res_.tls_failed = true;
          Fail("4.7.5", absl::StrCat("TLS with ", relay_, " failed: ", tls.message()));
          co_return;
        }
        res_.tls = conn_->TlsDescription();
        caps = smtp::EhloCapabilities();
        if (!co_await Greet(&caps)) {
          co_return;
        }
      } else if (reply->code == 421) {
        FailWithReply(*reply, "closed the session at STARTTLS");
        co_return;
      }
      // Any other refusal: opportunistic TLS, so carry on in plain text.
    }

    bool needs_utf8 = !IsAscii(req_.mail_from);
    for (const auto& r : req_.recipients) {
      needs_utf8 = needs_utf8 || !IsAscii(r);
    }
    if (needs_utf8 && !caps.smtputf8) {
      DecideAll(LocalOutcome(OutcomeClass::kPermanent, "5.6.7",
                             absl::StrCat("SMTPUTF8 is required, but was not offered by host ", relay_), req_.mx_host,
                             req_.ip));
      co_await Quit();
      co_return;
    }
    const size_t body_size = req_.body ? req_.body->size() : 0;
    if (caps.size && caps.size_limit > 0 && body_size > caps.size_limit) {
      DecideAll(LocalOutcome(OutcomeClass::kPermanent, "5.3.4",
                             absl::StrCat("message size ", body_size, " exceeds the limit of ", caps.size_limit,
                                          " bytes of host ", relay_),
                             req_.mx_host, req_.ip));
      co_await Quit();
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
    mail += "\r\n";

    // accepted[i]: RCPT i got a 2xx and waits for the DATA outcome.
    std::vector<bool> accepted(req_.recipients.size(), false);
    if (caps.pipelining) {
      // RFC 2920: MAIL and every RCPT in one write, then the replies in order.
      std::string batch = mail;
      for (const auto& r : req_.recipients) {
        absl::StrAppend(&batch, "RCPT TO:<", r, ">\r\n");
      }
      if (!co_await Write(batch, req_.timeouts.command, "MAIL FROM")) {
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
      if (!co_await Write(mail, req_.timeouts.command, "MAIL FROM")) {
        co_return;
      }
      if (!co_await HandleMailReply()) {
        co_return;
      }
      for (size_t i = 0; i < req_.recipients.size(); ++i) {
        if (!co_await Write(absl::StrCat("RCPT TO:<", req_.recipients[i], ">\r\n"), req_.timeouts.command,
                            "RCPT TO")) {
          co_return;
        }
        if (!co_await HandleRcptReply(i, &accepted)) {
          co_return;
        }
      }
    }

    bool any = false;
    for (bool a : accepted) {
      any = any || a;
    }
    if (!any) {
      co_await Quit();
      co_return;
    }

    if (!co_await Write("DATA\r\n", req_.timeouts.command, "DATA")) {
      co_return;
    }
    auto data = co_await ReadReply(req_.timeouts.command, "DATA");
    if (!data) {
      co_return;
    }
    if (data->code != 354) {
      if (data->code == 421 || (data->klass() != 4 && data->klass() != 5)) {
        FailWithReply(*data, "did not accept DATA");
      } else {
        DecideAccepted(accepted, OutcomeFromReply(*data, req_.mx_host, req_.ip));
      }
      co_await Quit();
      co_return;
    }

    // The body write is still before the final dot is complete: a failure
    // here leaves nothing delivered, so the recipients stay undecided.
    std::string encoded;
    smtp::DotCodec::AppendEncoded(req_.body ? absl::string_view(*req_.body) : absl::string_view(), &encoded);
    if (!co_await Write(encoded, req_.timeouts.final_dot, "message body")) {
      co_return;
    }
    encoded = std::string();

    auto final_reply = co_await ReadReplyOrStatus(req_.timeouts.final_dot);
    if (!final_reply.ok()) {
      // The dot went out: the server may have taken the message. Retrying
      // elsewhere now could deliver twice; report transient, say so.
      DecideAccepted(accepted,
                     LocalOutcome(OutcomeClass::kTransient, "4.4.2",
                                  absl::StrCat("lost connection with ", relay_,
                                               " after the final dot was sent (delivery status unknown, the message "
                                               "may have been delivered): ",
                                               final_reply.status().message()),
                                  req_.mx_host, req_.ip));
      co_return;
    }
    RecipientOutcome outcome = OutcomeFromReply(*final_reply, req_.mx_host, req_.ip);
    DecideAccepted(accepted, outcome);
    co_await Quit();
  }

  asio::awaitable<bool> Connect() {
    asio::error_code ec;
    const asio::ip::address address = asio::ip::make_address(req_.ip, ec);
    if (ec) {
      Fail("4.4.1", absl::StrCat("connect to ", relay_, ": bad address"));
      co_return false;
    }
    auto executor = co_await asio::this_coro::executor;
    asio::ip::tcp::socket socket(executor);
    asio::steady_timer timer(executor, req_.timeouts.connect);
    auto result = co_await (socket.async_connect(asio::ip::tcp::endpoint(address, req_.port), kNoThrow) ||
                            timer.async_wait(kNoThrow));
    if (result.index() == 1) {
      Fail("4.4.1", absl::StrCat("connect to ", relay_, ": timed out"));
      co_return false;
    }
    auto [cec] = std::get<0>(result);
    if (cec) {
      Fail("4.4.1", absl::StrCat("connect to ", relay_, ": ", cec.message()));
      co_return false;
    }
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    conn_ = std::make_unique<net::Connection>(std::move(socket));
    co_return true;
  }

  // EHLO, or HELO when EHLO gets a 5xx (RFC 5321 §4.1.4). False when the
  // session failed (res_ says why).
  asio::awaitable<bool> Greet(smtp::EhloCapabilities* caps) {
    if (!co_await Write(absl::StrCat("EHLO ", req_.helo_name, "\r\n"), req_.timeouts.command, "EHLO")) {
      co_return false;
    }
    auto ehlo = co_await ReadReply(req_.timeouts.command, "EHLO");
    if (!ehlo) {
      co_return false;
    }
    if (ehlo->positive()) {
      *caps = smtp::ParseEhloCapabilities(*ehlo);
      co_return true;
    }
    if (!ehlo->permanent()) {
      FailWithReply(*ehlo, "refused EHLO");
      co_await Quit();
      co_return false;
    }
    if (!co_await Write(absl::StrCat("HELO ", req_.helo_name, "\r\n"), req_.timeouts.command, "HELO")) {
      co_return false;
    }
    auto helo = co_await ReadReply(req_.timeouts.command, "HELO");
    if (!helo) {
      co_return false;
    }
    if (!helo->positive()) {
      FailWithReply(*helo, "refused HELO");
      co_await Quit();
      co_return false;
    }
    *caps = smtp::EhloCapabilities();
    co_return true;
  }

  // Applies the MAIL FROM reply: 2xx goes on; 4xx/5xx decide every recipient
  // (a refused sender is refused for all); 421 or nonsense fails the session.
  asio::awaitable<bool> HandleMailReply() {
    auto reply = co_await ReadReply(req_.timeouts.command, "MAIL FROM");
    if (!reply) {
      co_return false;
    }
    if (reply->positive()) {
      co_return true;
    }
    if (reply->code == 421 || (reply->klass() != 4 && reply->klass() != 5)) {
      FailWithReply(*reply, "did not accept MAIL FROM");
    } else {
      DecideAll(OutcomeFromReply(*reply, req_.mx_host, req_.ip));
    }
    co_await Quit();
    co_return false;
  }

  // Applies the reply to RCPT i. 2xx (250, and 251/252 which Haraka lost)
  // marks it accepted; 4xx/5xx decide it; 421 fails the session for it and
  // every later recipient.
  asio::awaitable<bool> HandleRcptReply(size_t i, std::vector<bool>* accepted) {
    auto reply = co_await ReadReply(req_.timeouts.command, "RCPT TO");
    if (!reply) {
      co_return false;
    }
    if (reply->positive()) {
      (*accepted)[i] = true;
      co_return true;
    }
    if (reply->code == 421) {
      FailWithReply(*reply, "closed the session at RCPT TO");
      co_await Quit();
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
    absl::Status s = co_await conn_->Write(data, timeout);
    if (!s.ok()) {
      Fail("4.4.2", absl::StrCat("lost connection with ", relay_, " while sending ", what, ": ", s.message()));
      co_return false;
    }
    co_return true;
  }

  // One complete reply, within `timeout` overall.
  asio::awaitable<absl::StatusOr<smtp::SmtpReply>> ReadReplyOrStatus(Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    parser_.Reset();
    for (;;) {
      const Clock::duration left = std::max<Clock::duration>(deadline - Clock::now(), std::chrono::milliseconds(1));
      auto line = co_await conn_->ReadLine(kMaxReplyLine, left);
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
    co_return std::nullopt;
  }

  asio::awaitable<void> Quit() {
    if (!conn_) {
      co_return;
    }
    absl::Status s = co_await conn_->Write("QUIT\r\n", kQuitTimeout);
    if (s.ok()) {
      (void)co_await ReadReplyOrStatus(kQuitTimeout);
    }
  }

  void Fail(std::string enhanced, std::string text) {
    res_.failure = std::move(text);
    res_.failure_enhanced = std::move(enhanced);
    res_.failure_code = 0;
  }

  void FailWithReply(const smtp::SmtpReply& reply, absl::string_view what) {
    res_.failure = absl::StrCat("host ", relay_, " ", what, ": ", reply.ToString());
    res_.failure_enhanced = TransientEnhanced(reply);
    res_.failure_code = reply.transient() ? reply.code : 0;
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

  TransactionRequest req_;
  TransactionResult res_;
  std::string relay_;
  std::unique_ptr<net::Connection> conn_;
  smtp::ReplyParser parser_;
};

}  // namespace

asio::awaitable<absl::StatusOr<TransactionResult>> RunSmtpTransaction(TransactionRequest request) {
  if (request.recipients.empty()) {
    co_return absl::InvalidArgumentError("SMTP transaction without recipients");
  }
  if (request.starttls && !request.tls_context) {
    request.starttls = false;
  }
  Session session(std::move(request));
  co_return co_await session.Run();
}

}  // namespace tern::deliverer
