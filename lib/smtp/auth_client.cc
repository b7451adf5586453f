#include "lib/smtp/auth_client.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tern::smtp {

const char* AuthMechanismName(AuthMechanism mechanism) {
  switch (mechanism) {
    case AuthMechanism::kCramMd5:
      return "CRAM-MD5";
    case AuthMechanism::kPlain:
      return "PLAIN";
    case AuthMechanism::kLogin:
      return "LOGIN";
  }
  return "?";
}

std::optional<AuthMechanism> ParseAuthMechanism(absl::string_view name) {
  const std::string upper = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(name));
  if (upper == "CRAM-MD5") {
    return AuthMechanism::kCramMd5;
  }
  if (upper == "PLAIN") {
    return AuthMechanism::kPlain;
  }
  if (upper == "LOGIN") {
    return AuthMechanism::kLogin;
  }
  return std::nullopt;
}

std::optional<AuthMechanism> ChooseAuthMechanism(const std::vector<std::string>& offered,
                                                 absl::string_view preferred) {
  auto is_offered = [&](AuthMechanism m) {
    for (const auto& o : offered) {
      if (absl::EqualsIgnoreCase(o, AuthMechanismName(m))) {
        return true;
      }
    }
    return false;
  };
  if (auto p = ParseAuthMechanism(preferred); p && is_offered(*p)) {
    return p;
  }
  for (AuthMechanism m : {AuthMechanism::kCramMd5, AuthMechanism::kPlain, AuthMechanism::kLogin}) {
    if (is_offered(m)) {
      return m;
    }
  }
  return std::nullopt;
}

std::string PlainInitialResponse(absl::string_view user, absl::string_view password) {
  std::string raw;
  raw.push_back('\0');
  absl::StrAppend(&raw, user);
  raw.push_back('\0');
  absl::StrAppend(&raw, password);
  return absl::Base64Escape(raw);
}

absl::StatusOr<std::string> CramMd5Response(absl::string_view user, absl::string_view password,
                                            absl::string_view challenge_base64) {
  std::string challenge;
  if (!absl::Base64Unescape(absl::StripAsciiWhitespace(challenge_base64), &challenge)) {
    return absl::InvalidArgumentError("CRAM-MD5 challenge is not base64");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (HMAC(EVP_md5(), password.data(), static_cast<int>(password.size()),
           reinterpret_cast<const unsigned char*>(challenge.data()), challenge.size(), digest,
           &digest_len) == nullptr) {
    return absl::InternalError("HMAC-MD5 is not available");
  }
  const std::string hex = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), digest_len));
  return absl::Base64Escape(absl::StrCat(user, " ", hex));
}

AuthClient::AuthClient(AuthMechanism mechanism, std::string user, std::string password)
    : mechanism_(mechanism), user_(std::move(user)), password_(std::move(password)) {}

std::string AuthClient::Start() {
  continuations_ = 0;
  switch (mechanism_) {
    case AuthMechanism::kPlain:
      return absl::StrCat("AUTH PLAIN ", PlainInitialResponse(user_, password_), "\r\n");
    case AuthMechanism::kLogin:
      return "AUTH LOGIN\r\n";
    case AuthMechanism::kCramMd5:
      return "AUTH CRAM-MD5\r\n";
  }
  return "";
}

absl::StatusOr<AuthClient::Step> AuthClient::OnReply(const SmtpReply& reply) {
  Step step;
  if (reply.code != 334) {
    step.done = true;
    step.succeeded = reply.code == 235;
    return step;
  }
  ++continuations_;
  switch (mechanism_) {
    case AuthMechanism::kPlain:
      // The initial response carried everything; RFC 4954 allows an empty
      // 334 only when no initial response was sent.
      return absl::InvalidArgumentError("unexpected 334 after AUTH PLAIN with an initial response");
    case AuthMechanism::kLogin:
      // The prompts are conventionally "Username:" and "Password:", but
      // servers vary, so they are answered by position, as Postfix does.
      if (continuations_ == 1) {
        step.send = absl::StrCat(absl::Base64Escape(user_), "\r\n");
        return step;
      }
      if (continuations_ == 2) {
        step.send = absl::StrCat(absl::Base64Escape(password_), "\r\n");
        return step;
      }
      return absl::InvalidArgumentError("more than two 334 prompts to AUTH LOGIN");
    case AuthMechanism::kCramMd5: {
      if (continuations_ != 1) {
        return absl::InvalidArgumentError("more than one 334 challenge to AUTH CRAM-MD5");
      }
      const std::string challenge = reply.lines.empty() ? std::string() : reply.lines.front();
      absl::StatusOr<std::string> response = CramMd5Response(user_, password_, challenge);
      if (!response.ok()) {
        return response.status();
      }
      step.send = absl::StrCat(*response, "\r\n");
      return step;
    }
  }
  return absl::InternalError("unknown mechanism");
}

}  // namespace tern::smtp
