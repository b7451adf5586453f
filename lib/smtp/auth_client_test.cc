// AuthClient against the vectors in haraka-outbound-facts.md §7 (user "u",
// password "p") and RFC 2195's own example.
#include "lib/smtp/auth_client.h"

#include "gtest/gtest.h"
#include "lib/smtp/xtext.h"

namespace tern::smtp {
namespace {

SmtpReply Reply(int code, std::string text) {
  SmtpReply r;
  r.code = code;
  r.lines.push_back(std::move(text));
  return r;
}

TEST(AuthClient, PlainSendsTheFactsVector) {
  AuthClient auth(AuthMechanism::kPlain, "u", "p");
  EXPECT_EQ(auth.Start(), "AUTH PLAIN AHUAcA==\r\n");
  auto step = auth.OnReply(Reply(235, "2.7.0 Authentication successful"));
  ASSERT_TRUE(step.ok());
  EXPECT_TRUE(step->done);
  EXPECT_TRUE(step->succeeded);
}

TEST(AuthClient, LoginAnswersUsernameThenPasswordPrompts) {
  AuthClient auth(AuthMechanism::kLogin, "u", "p");
  EXPECT_EQ(auth.Start(), "AUTH LOGIN\r\n");
  auto user = auth.OnReply(Reply(334, "VXNlcm5hbWU6"));
  ASSERT_TRUE(user.ok());
  EXPECT_FALSE(user->done);
  EXPECT_EQ(user->send, "dQ==\r\n");
  auto pass = auth.OnReply(Reply(334, "UGFzc3dvcmQ6"));
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->send, "cA==\r\n");
  auto third = auth.OnReply(Reply(334, "UGFzc3dvcmQ6"));
  EXPECT_FALSE(third.ok());
}

TEST(AuthClient, CramMd5AnswersTheFactsChallenge) {
  AuthClient auth(AuthMechanism::kCramMd5, "u", "p");
  EXPECT_EQ(auth.Start(), "AUTH CRAM-MD5\r\n");
  auto step = auth.OnReply(Reply(334, "PDEyMzQ1QGV4YW1wbGU+"));
  ASSERT_TRUE(step.ok());
  EXPECT_EQ(step->send, "dSAyMmI1MzI0MDEyZjM0ZGFkZTY0NWE3MjE1MmYwMDU1Yg==\r\n");
}

TEST(AuthClient, CramMd5MatchesRfc2195Example) {
  auto response = CramMd5Response("tim", "tanstaaftanstaaf",
                                  "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+");
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(*response, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
}

TEST(AuthClient, CramMd5RejectsANonBase64Challenge) {
  AuthClient auth(AuthMechanism::kCramMd5, "u", "p");
  auth.Start();
  EXPECT_FALSE(auth.OnReply(Reply(334, "not base64 !!!")).ok());
}

TEST(AuthClient, RefusalEndsTheExchangeUnsuccessfully) {
  AuthClient auth(AuthMechanism::kPlain, "u", "p");
  auth.Start();
  auto step = auth.OnReply(Reply(535, "5.7.8 Authentication credentials invalid"));
  ASSERT_TRUE(step.ok());
  EXPECT_TRUE(step->done);
  EXPECT_FALSE(step->succeeded);
}

TEST(ChooseAuthMechanism, PrefersCramMd5OverPlainOverLogin) {
  EXPECT_EQ(ChooseAuthMechanism({"PLAIN", "LOGIN", "CRAM-MD5"}, ""), AuthMechanism::kCramMd5);
  EXPECT_EQ(ChooseAuthMechanism({"LOGIN", "PLAIN"}, ""), AuthMechanism::kPlain);
  EXPECT_EQ(ChooseAuthMechanism({"LOGIN"}, ""), AuthMechanism::kLogin);
  EXPECT_EQ(ChooseAuthMechanism({"XOAUTH2", "GSSAPI"}, ""), std::nullopt);
  EXPECT_EQ(ChooseAuthMechanism({}, "plain"), std::nullopt);
}

TEST(ChooseAuthMechanism, AuthTypeWinsOnlyWhenOffered) {
  EXPECT_EQ(ChooseAuthMechanism({"PLAIN", "LOGIN", "CRAM-MD5"}, "login"), AuthMechanism::kLogin);
  EXPECT_EQ(ChooseAuthMechanism({"PLAIN", "CRAM-MD5"}, "LOGIN"), AuthMechanism::kCramMd5);
  EXPECT_EQ(ChooseAuthMechanism({"PLAIN"}, "XOAUTH2"), AuthMechanism::kPlain);
}

TEST(EncodeXtext, EscapesPlusEqualsAndNonGraphicOctets) {
  EXPECT_EQ(EncodeXtext("user@example.com"), "user@example.com");
  EXPECT_EQ(EncodeXtext("a+b=c d"), "a+2Bb+3Dc+20d");
  EXPECT_EQ(EncodeXtext("j\xc3\xb8"), "j+C3+B8");
  EXPECT_EQ(EncodeXtext("\x7f\t"), "+7F+09");
}

}  // namespace
}  // namespace tern::smtp
