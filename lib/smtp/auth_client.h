// File: auth_client.h
//
// AuthClient: the client side of SMTP AUTH (RFC 4954) for the deliverer, as a
// pure state machine. The caller sends Start()'s command, feeds every reply to
// OnReply() and sends what it returns until the exchange is done; the caller
// owns all I/O and timeouts. Credentials never appear in errors or in
// anything meant for logs.
//
// Mechanisms (Haraka's order, strongest first): CRAM-MD5 (RFC 2195,
// base64(user + " " + hex HMAC-MD5(password, challenge))), PLAIN (RFC 4616,
// base64("\0" user "\0" password) as an initial response), LOGIN (the
// de-facto mechanism: base64(user) then base64(password), one per 334
// prompt). ChooseAuthMechanism picks `auth_type` when the server offers it,
// else the strongest offered one.
//
// Thread-safety: an AuthClient is a plain object used by one coroutine.
//
// Standards: RFC 4954 (AUTH, 334 continuation, 235 success), RFC 4616
// (PLAIN), RFC 2195 (CRAM-MD5), RFC 4648 (base64).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/smtp/reply.h"

namespace tern::smtp {

enum class AuthMechanism { kCramMd5, kPlain, kLogin };

// "CRAM-MD5", "PLAIN", "LOGIN".
const char* AuthMechanismName(AuthMechanism mechanism);

// Parses a mechanism name (any case); nullopt for one we do not implement.
std::optional<AuthMechanism> ParseAuthMechanism(absl::string_view name);

// The mechanism to use given what the server offered (upper-cased names, as
// in EhloCapabilities::auth_mechanisms): `preferred` if it is set, known and
// offered; otherwise CRAM-MD5 > PLAIN > LOGIN; nullopt if none is offered.
std::optional<AuthMechanism> ChooseAuthMechanism(const std::vector<std::string>& offered,
                                                 absl::string_view preferred);

// base64("\0" user "\0" password).
std::string PlainInitialResponse(absl::string_view user, absl::string_view password);

// base64(user + " " + lower-hex HMAC-MD5(key = password, challenge)), where
// `challenge_base64` is the text of the server's 334 reply. InvalidArgument
// if the challenge is not base64.
absl::StatusOr<std::string> CramMd5Response(absl::string_view user, absl::string_view password,
                                            absl::string_view challenge_base64);

class AuthClient {
 public:
  AuthClient(AuthMechanism mechanism, std::string user, std::string password);

  // The first command, with CRLF: "AUTH PLAIN <ir>\r\n", "AUTH LOGIN\r\n" or
  // "AUTH CRAM-MD5\r\n".
  std::string Start();

  struct Step {
    // True when the exchange is over; `succeeded` says how (a 235).
    bool done = false;
    bool succeeded = false;
    // When not done: the next line to send, with CRLF.
    std::string send;
  };

  // Feeds a reply: 235 → done and succeeded; 334 → the next response; any
  // other reply → done and failed (the caller reports that reply). An
  // unexpected 334 (a third LOGIN prompt, a bad CRAM-MD5 challenge) is an
  // InvalidArgument error; the caller should then send "*" to cancel
  // (RFC 4954 §4) or drop the connection.
  absl::StatusOr<Step> OnReply(const SmtpReply& reply);

 private:
  AuthMechanism mechanism_;
  std::string user_;
  std::string password_;
  int continuations_ = 0;
};

}  // namespace tern::smtp
